// C++ twin of csrc/cuda/logprobs.cu: selective logprob (+ entropy) in one read of each logits row, and
// the softmax gradient pass that turns per-token dL/dlogp (and dL/dH) into dlogits.
#include "kernels.h"
#include "row.h"

namespace grpo {
namespace cpu {

template <typename T>
static void logprobs_impl(const LogprobParams& p, int num_threads) {
  const T* logits = static_cast<const T*>(p.logits);
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t n = 0; n < p.N; ++n) {
    const T* row = logits + n * p.row_stride;
    const RowSums st = p.entropy ? row_stats<true>(row, p.V, p.temperature) : row_stats<false>(row, p.V, p.temperature);
    const float logs = st.logs();
    p.logp[n] = target_logp(load(row, p.targets[n]), p.temperature, st.m, st.s, p.logp_lo ? p.logp_lo + n : nullptr);
    if (p.stats) {
      p.stats[2 * n] = st.m;
      p.stats[2 * n + 1] = logs;
    }
    if (p.entropy) p.entropy[n] = st.entropy();
  }
}

void logprobs(const LogprobParams& p, int num_threads) {
  if (p.dtype == kFloat32) return logprobs_impl<float>(p, num_threads);
  if (p.dtype == kBFloat16) return logprobs_impl<bf16_t>(p, num_threads);
  return logprobs_impl<f16_t>(p, num_threads);
}

template <typename T>
static void softmax_grad_impl(const SoftmaxGradParams& p, int num_threads) {
  const T* logits = static_cast<const T*>(p.logits);
  T* out = static_cast<T*>(p.dlogits);
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t n = 0; n < p.N; ++n) {
    const float g_ent = p.g_ent ? p.g_ent[n] : 0.0f;
    const float H = p.g_ent ? p.entropy[n] : 0.0f;
    row_grad(logits + n * p.row_stride, out + n * p.grad_row_stride, p.V, p.targets[n], p.stats[2 * n],
             p.stats[2 * n + 1], H,
             p.g_logp[n], g_ent, p.temperature);
  }
}

void softmax_grad(const SoftmaxGradParams& p, int num_threads) {
  if (p.dtype == kFloat32) return softmax_grad_impl<float>(p, num_threads);
  if (p.dtype == kBFloat16) return softmax_grad_impl<bf16_t>(p, num_threads);
  return softmax_grad_impl<f16_t>(p, num_threads);
}

}  // namespace cpu
}  // namespace grpo
