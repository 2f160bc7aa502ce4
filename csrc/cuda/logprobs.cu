// CUDA: selective logprob (+ entropy) in one read of each logits row, and the softmax-gradient pass.
// C++ twin: csrc/cpu/logprobs.cpp. A block per row (a warp per row for V < 1024, four rows a block);
// the row passes are in common.cuh.
#include "../params.h"
#include "common.cuh"
#include "kernels.h"

namespace grpo {
namespace cuda {

template <typename T, int kThreads>
__global__ void __launch_bounds__(Slots<kThreads>::kBlock, Slots<kThreads>::kMinBlocks)
    logprobs_kernel(const LogprobParams p) {
  using S = Slots<kThreads>;
  const int lane = S::lane();
  for (int64_t n = S::first(); n < p.N; n += S::stride()) {
    const T* row = static_cast<const T*>(p.logits) + n * p.row_stride;
    float x_t = 0.0f;
    if (lane == 0) x_t = to_f(row[p.targets[n]]);  // issued now, consumed after the row pass
    const RowStats st = row_stats<T, kThreads>(row, (int)p.V, lane, p.temperature, p.entropy != nullptr);
    if (lane == 0) {
      const float logs = row_logs(st);
      p.logp[n] = target_logp(x_t, p.temperature, st.m, (double)st.s, p.logp_lo ? p.logp_lo + n : nullptr);
      if (p.stats) {
        p.stats[2 * n] = st.m;
        p.stats[2 * n + 1] = logs;
      }
      if (p.entropy) p.entropy[n] = row_entropy(st);
    }
  }
}

template <typename T, int kThreads>
__global__ void __launch_bounds__(Slots<kThreads>::kBlock, Slots<kThreads>::kMinBlocks)
    softmax_grad_kernel(const SoftmaxGradParams p) {
  using S = Slots<kThreads>;
  const int lane = S::lane();
  for (int64_t n = S::first(); n < p.N; n += S::stride()) {
    const T* row = static_cast<const T*>(p.logits) + n * p.row_stride;
    T* out = static_cast<T*>(p.dlogits) + n * p.grad_row_stride;
    const int64_t target = p.targets[n];
    const float g_logp = p.g_logp[n];
    const float g_ent = p.g_ent ? p.g_ent[n] : 0.0f;
    if (g_logp == 0.0f && g_ent == 0.0f) {  // uniform over the group: no read of the row at all
      row_zero<T, kThreads>(out, (int)p.V, lane);
      continue;
    }
    // A target outside [0, V) (a block of vocabulary columns without it): no one-hot term; row_grad_part's
    // column match never fires for it, and its x_t is not read.
    const bool has_target = target >= 0 && target < p.V;
    float x_t[1] = {lane == 0 && has_target ? to_f(row[target]) : 0.0f};
    group_bcast<kThreads>(x_t);  // before any lane of the group overwrites the row (out may alias it)
    const float H = p.g_ent ? p.entropy[n] : 0.0f;
    row_grad<T, kThreads>(row, out, (int)p.V, lane, (int)target, x_t[0], p.stats[2 * n], p.stats[2 * n + 1], H, g_logp,
                          g_ent, p.temperature);
  }
}

std::string logprobs(const LogprobParams& p, void* stream) {
  if (p.N <= 0) return "";
  if (p.V > kMaxV) return "V exceeds the CUDA kernels' limit of 2^30 elements per row";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  with_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_row_threads(p.V, [&](auto threads) {
      constexpr int kT = decltype(threads)::value;
      logprobs_kernel<T, kT><<<grid_for(p.N, Slots<kT>::kPerBlock), Slots<kT>::kBlock, 0, s>>>(p);
    });
  });
  return launch_error();
}

std::string softmax_grad(const SoftmaxGradParams& p, void* stream) {
  if (p.N <= 0) return "";
  if (p.V > kMaxV) return "V exceeds the CUDA kernels' limit of 2^30 elements per row";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  with_dtype(p.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_row_threads(p.V, [&](auto threads) {
      constexpr int kT = decltype(threads)::value;
      softmax_grad_kernel<T, kT><<<grid_for(p.N, Slots<kT>::kPerBlock), Slots<kT>::kBlock, 0, s>>>(p);
    });
  });
  return launch_error();
}

}  // namespace cuda
}  // namespace grpo
