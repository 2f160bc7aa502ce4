// grpo._C: the thin pybind11 layer. Host functions take raw pointers (Python ints from
// tensor.data_ptr()), sizes and mode codes, check them, fill a params struct and call the CPU kernel or
// the CUDA launcher on the given stream. No torch headers: the module does not depend on torch's ABI.
#include <pybind11/pybind11.h>

#include <string>

#include "cpu/kernels.h"
#include "grpo_math.h"
#include "params.h"
#ifdef GRPO_WITH_CUDA
#include "cuda/kernels.h"
#endif

namespace py = pybind11;
using namespace grpo;

namespace {

enum Device : int { kCPU = 0, kCUDA = 1 };

void require(bool ok, const std::string& msg) {
  if (!ok) throw py::value_error("grpo._C: " + msg);
}

template <typename T>
T* as_ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void require_device(int device) {
  require(device == kCPU || device == kCUDA, "device must be 0 (cpu) or 1 (cuda), got " + std::to_string(device));
#ifndef GRPO_WITH_CUDA
  if (device == kCUDA) throw std::runtime_error("grpo._C was built without CUDA kernels (nvcc not found at build time)");
#endif
}

// Runs the CPU kernel or the CUDA launcher for the same params, with the GIL released.
template <typename P, typename CpuFn, typename CudaFn>
void dispatch(int device, uintptr_t stream, int num_threads, const P& params, CpuFn cpu_fn, CudaFn cuda_fn) {
  require_device(device);
  std::string err;
  {
    py::gil_scoped_release release;
    if (device == kCPU) {
      cpu_fn(params, num_threads < 1 ? 1 : num_threads);
    } else {
      err = cuda_fn(params, reinterpret_cast<void*>(stream));
    }
  }
  if (!err.empty()) throw std::runtime_error("grpo._C CUDA launch failed: " + err);
  (void)cuda_fn;
}

#ifdef GRPO_WITH_CUDA
#define CUDA_FN(name) [](const auto& p, void* s) { return cuda::name(p, s); }
#else
#define CUDA_FN(name) [](const auto&, void*) { return std::string("built without CUDA"); }
#endif

void check_dtype(int dtype) {
  require(dtype == kFloat32 || dtype == kBFloat16 || dtype == kFloat16,
          "dtype code must be 0 (float32), 1 (bfloat16) or 2 (float16), got " + std::to_string(dtype));
}

void check_rows(int64_t N, int64_t V, int64_t row_stride, uintptr_t logits, uintptr_t targets) {
  require(N >= 0, "N must be >= 0");
  require(V >= 1, "V must be >= 1, got " + std::to_string(V));
  require(row_stride >= V, "row_stride must be >= V");
  require(N == 0 || (logits && targets), "logits and targets pointers must be non-null");
}

void advantages(int device, uintptr_t stream, int num_threads, uintptr_t rewards, uintptr_t out,
                uintptr_t zero_std, int64_t B, int64_t G, int scale, int estimator, float eps) {
  require(G >= 1 && B >= 0 && B % G == 0, "B must be a multiple of G >= 1");
  require(scale >= kScaleGroup && scale <= kScaleNone, "unknown scale code " + std::to_string(scale));
  require(estimator == kEstGRPO || estimator == kEstRLOO, "unknown estimator code " + std::to_string(estimator));
  require(eps >= 0.0f, "eps must be >= 0");
  if (B == 0) return;
  require(rewards && out && zero_std, "rewards/advantages/zero_std pointers must be non-null");
  AdvantageParams p{as_ptr<const float>(rewards), as_ptr<float>(out), as_ptr<uint8_t>(zero_std), B, G, scale, estimator, eps};
  dispatch(device, stream, num_threads, p, cpu::advantages, CUDA_FN(advantages));
}

void logprobs(int device, uintptr_t stream, int num_threads, uintptr_t logits, uintptr_t targets, uintptr_t logp,
              uintptr_t stats, uintptr_t entropy, int64_t N, int64_t V, int64_t row_stride, double temperature, int dtype,
              uintptr_t logp_lo) {
  check_dtype(dtype);
  check_rows(N, V, row_stride, logits, targets);
  require(temperature > 0.0, "temperature must be > 0");
  if (N == 0) return;
  require(logp, "logp pointer must be non-null");
  LogprobParams p{as_ptr<const void>(logits), as_ptr<const int64_t>(targets), as_ptr<float>(logp), as_ptr<float>(stats),
                  as_ptr<float>(entropy), as_ptr<float>(logp_lo), N, V, row_stride, temperature, dtype};
  dispatch(device, stream, num_threads, p, cpu::logprobs, CUDA_FN(logprobs));
}

void softmax_grad(int device, uintptr_t stream, int num_threads, uintptr_t logits, uintptr_t targets, uintptr_t stats,
                  uintptr_t entropy, uintptr_t g_logp, uintptr_t g_ent, uintptr_t dlogits, int64_t N, int64_t V,
                  int64_t row_stride, int64_t grad_row_stride, double temperature, int dtype) {
  check_dtype(dtype);
  check_rows(N, V, row_stride, logits, targets);
  require(grad_row_stride >= V, "grad_row_stride must be >= V");
  if (N == 0) return;
  require(stats && g_logp && dlogits, "stats, g_logp and dlogits pointers must be non-null");
  require(!g_ent || entropy, "g_ent needs the entropy pointer");
  SoftmaxGradParams p{as_ptr<const void>(logits), as_ptr<const int64_t>(targets), as_ptr<const float>(stats),
                      as_ptr<const float>(entropy), as_ptr<const float>(g_logp), as_ptr<const float>(g_ent),
                      as_ptr<void>(dlogits), N, V, row_stride, grad_row_stride, temperature, dtype};
  dispatch(device, stream, num_threads, p, cpu::softmax_grad, CUDA_FN(softmax_grad));
}

LossHeadParams make_head(uintptr_t logp, uintptr_t old_logp, uintptr_t ref_logp, uintptr_t sampling_logp,
                         uintptr_t mask, uintptr_t coef, uintptr_t advantages, uintptr_t tok_loss, uintptr_t g_logp,
                         int64_t B, int64_t T, float eps_low, float eps_high, float dual_clip, float beta,
                         float is_cap, int kl, int ratio_level, int is_mode, uintptr_t logp_lo = 0) {
  require(B >= 0 && T >= 1, "need B >= 0 and T >= 1");
  require(eps_low >= 0.0f && eps_high >= 0.0f, "eps_low/eps_high must be >= 0");
  require(kl >= kKL3 && kl <= kKL1, "unknown kl code " + std::to_string(kl));
  require(ratio_level == kRatioToken || ratio_level == kRatioSequence, "unknown ratio_level code");
  require(is_mode >= kISNone && is_mode <= kISSeqMask, "unknown is_mode code");
  require(beta == 0.0f || ref_logp, "beta != 0 needs ref_logp");
  require(is_mode == kISNone || sampling_logp, "is_mode needs sampling_logp");
  require(B == 0 || (logp && mask && coef && advantages && tok_loss), "logp/mask/coef/advantages/tok_loss must be non-null");
  return LossHeadParams{as_ptr<const float>(logp), as_ptr<const float>(logp_lo), as_ptr<const float>(old_logp), as_ptr<const float>(ref_logp),
                        as_ptr<const float>(sampling_logp), as_ptr<const float>(mask), as_ptr<const float>(coef),
                        as_ptr<const float>(advantages), as_ptr<float>(tok_loss), as_ptr<float>(g_logp), B, T,
                        eps_low, eps_high, dual_clip, beta, is_cap, kl, ratio_level, is_mode};
}

void loss_head(int device, uintptr_t stream, int num_threads, uintptr_t logp, uintptr_t old_logp, uintptr_t ref_logp,
               uintptr_t sampling_logp, uintptr_t mask, uintptr_t coef, uintptr_t advantages, uintptr_t tok_loss,
               uintptr_t g_logp, int64_t B, int64_t T, float eps_low, float eps_high, float dual_clip, float beta,
               float is_cap, int kl, int ratio_level, int is_mode, uintptr_t logp_lo) {
  LossHeadParams p = make_head(logp, old_logp, ref_logp, sampling_logp, mask, coef, advantages, tok_loss, g_logp, B, T,
                               eps_low, eps_high, dual_clip, beta, is_cap, kl, ratio_level, is_mode, logp_lo);
  require(B == 0 || g_logp, "g_logp must be non-null");
  if (B == 0) return;
  dispatch(device, stream, num_threads, p, cpu::loss_head, CUDA_FN(loss_head));
}

void check_rows_on_chip(int policy) {
  require(policy == 0 || policy == 1 || policy == 4 || policy == 8 || policy == 16,
          "rows_on_chip must be 0 (never), 1 (default plan), 4, 8 or 16 (vectors a thread), got " +
              std::to_string(policy));
}

void fused_loss(int device, uintptr_t stream, int num_threads, uintptr_t logits, uintptr_t targets, uintptr_t logp,
                uintptr_t stats, uintptr_t entropy, int64_t V, int64_t row_stride, double temperature, int dtype,
                uintptr_t old_logp, uintptr_t ref_logp, uintptr_t sampling_logp, uintptr_t mask, uintptr_t coef,
                uintptr_t advantages, uintptr_t tok_loss, uintptr_t g_logp, int64_t B, int64_t T, float eps_low,
                float eps_high, float dual_clip, float beta, float is_cap, int kl, int ratio_level, int is_mode,
                uintptr_t dlogits, int64_t grad_row_stride, int rows_on_chip, bool rows_prefetch) {
  check_dtype(dtype);
  const int64_t N = B * T;
  check_rows(N, V, row_stride, logits, targets);
  require(temperature > 0.0, "temperature must be > 0");
  require(!dlogits || grad_row_stride >= V, "grad_row_stride must be >= V");
  LossHeadParams h = make_head(logp, old_logp, ref_logp, sampling_logp, mask, coef, advantages, tok_loss, g_logp, B, T,
                               eps_low, eps_high, dual_clip, beta, is_cap, kl, ratio_level, is_mode);
  require(head_is_tokenwise(h), "fused_loss handles token-level ratios and token/no IS only; use logprobs + loss_head");
  if (N == 0) return;
  LogprobParams lp{as_ptr<const void>(logits), as_ptr<const int64_t>(targets), as_ptr<float>(logp), as_ptr<float>(stats),
                   as_ptr<float>(entropy), nullptr, N, V, row_stride, temperature, dtype};
  check_rows_on_chip(rows_on_chip);
  FusedLossParams p{lp, h, as_ptr<void>(dlogits), grad_row_stride, rows_on_chip, rows_prefetch ? 1 : 0};
  dispatch(device, stream, num_threads, p, cpu::fused_loss, CUDA_FN(fused_loss));
}

// The CUDA fused_loss's rows-on-chip shape (R vectors a thread, C blocks a row, vectors a block) for rows of
// V elements of `dtype` starting at `logits`, `row_stride` elements apart (0: V; the default null pointer
// counts as aligned), under a rows_on_chip policy: on the current device when `on_device` (all zeros before
// sm_90 or without a device), else whatever the device. (0, 0, 0): the kernel that reads rows twice.
py::tuple cuda_rows_on_chip(int64_t V, int dtype, bool on_device, int policy, uintptr_t logits, int64_t row_stride) {
  check_dtype(dtype);
  check_rows_on_chip(policy);
  require(V >= 1, "V must be >= 1, got " + std::to_string(V));
  require(row_stride == 0 || row_stride >= V, "row_stride must be 0 (V) or >= V");
#ifdef GRPO_WITH_CUDA
  const cuda::ResidentPlan p =
      on_device ? cuda::resident_plan(V, dtype, policy) : cuda::resident_plan_for(V, dtype, policy);
  if (!cuda::rows_aligned(as_ptr<const void>(logits), row_stride ? row_stride : V, dtype))
    return py::make_tuple(0, 0, 0);
  return py::make_tuple(p.R, p.C, p.per_block);
#else
  (void)on_device, (void)logits;
  return py::make_tuple(0, 0, 0);
#endif
}

// CPU only: the sampler's decode GEMMs (on GPU vLLM's own kernels run).
void linear(int num_threads, uintptr_t x, uintptr_t w, uintptr_t bias, uintptr_t y, int64_t M, int64_t N, int64_t K,
            int64_t ldx, int64_t ldw, int64_t ldy, int dtype) {
  check_dtype(dtype);
  require(M >= 0 && N >= 1 && K >= 1, "need M >= 0, N >= 1 and K >= 1");
  require(ldx >= K && ldw >= K && ldy >= N, "need ldx >= K, ldw >= K and ldy >= N");
  if (M == 0) return;
  require(x && w && y, "x, w and y pointers must be non-null");
  LinearParams p{as_ptr<const void>(x), as_ptr<const void>(w), as_ptr<const void>(bias), as_ptr<void>(y),
                 M, N, K, ldx, ldw, ldy, dtype};
  py::gil_scoped_release release;
  cpu::linear(p, num_threads < 1 ? 1 : num_threads);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "grpo kernels: C++ (OpenMP) CPU kernels and, when built with nvcc, CUDA kernels";
#ifdef GRPO_WITH_CUDA
  m.attr("has_cuda") = true;
#else
  m.attr("has_cuda") = false;
#endif
#ifdef GRPO_CUDA_ARCHS
  m.attr("cuda_archs") = GRPO_CUDA_ARCHS;
#else
  m.attr("cuda_archs") = "";
#endif
  using py::arg;
  m.def("advantages", &advantages, arg("device"), arg("stream"), arg("num_threads"), arg("rewards"), arg("advantages"),
        arg("zero_std"), arg("B"), arg("G"), arg("scale"), arg("estimator"), arg("eps"));
  m.def("logprobs", &logprobs, arg("device"), arg("stream"), arg("num_threads"), arg("logits"), arg("targets"),
        arg("logp"), arg("stats"), arg("entropy"), arg("N"), arg("V"), arg("row_stride"), arg("temperature"), arg("dtype"),
        arg("logp_lo") = 0);
  m.def("softmax_grad", &softmax_grad, arg("device"), arg("stream"), arg("num_threads"), arg("logits"),
        arg("targets"), arg("stats"), arg("entropy"), arg("g_logp"), arg("g_ent"), arg("dlogits"), arg("N"), arg("V"),
        arg("row_stride"), arg("grad_row_stride"), arg("temperature"), arg("dtype"));
  m.def("loss_head", &loss_head, arg("device"), arg("stream"), arg("num_threads"), arg("logp"), arg("old_logp"),
        arg("ref_logp"), arg("sampling_logp"), arg("mask"), arg("coef"), arg("advantages"), arg("tok_loss"),
        arg("g_logp"), arg("B"), arg("T"), arg("eps_low"), arg("eps_high"), arg("dual_clip"), arg("beta"),
        arg("is_cap"), arg("kl"), arg("ratio_level"), arg("is_mode"), arg("logp_lo") = 0);
  m.def("fused_loss", &fused_loss, arg("device"), arg("stream"), arg("num_threads"), arg("logits"), arg("targets"),
        arg("logp"), arg("stats"), arg("entropy"), arg("V"), arg("row_stride"), arg("temperature"), arg("dtype"),
        arg("old_logp"), arg("ref_logp"), arg("sampling_logp"), arg("mask"), arg("coef"), arg("advantages"),
        arg("tok_loss"), arg("g_logp"), arg("B"), arg("T"), arg("eps_low"), arg("eps_high"), arg("dual_clip"),
        arg("beta"), arg("is_cap"), arg("kl"), arg("ratio_level"), arg("is_mode"), arg("dlogits"),
        arg("grad_row_stride"), arg("rows_on_chip") = 1, arg("rows_prefetch") = false);
  m.def("cuda_rows_on_chip", &cuda_rows_on_chip, arg("V"), arg("dtype"), arg("on_device") = true,
        arg("policy") = 1, arg("logits") = 0, arg("row_stride") = 0);
  m.def("linear", &linear, arg("num_threads"), arg("x"), arg("w"), arg("bias"), arg("y"), arg("M"), arg("N"), arg("K"),
        arg("ldx"), arg("ldw"), arg("ldy"), arg("dtype"));
}
