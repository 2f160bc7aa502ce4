// C++ twin of csrc/cuda/loss.cu: the GRPO loss head and the fused token-level loss (row stats, head and
// dlogits for a row while it is still in cache: one read of the row from memory, one read+write).
#include "kernels.h"
#include "row.h"

namespace grpo {
namespace cpu {

void loss_head(const LossHeadParams& p, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if (p.B * p.T > 65536)
  for (int64_t b = 0; b < p.B; ++b) head_sequence(p, b);
}

template <typename T>
static void fused_loss_impl(const FusedLossParams& fp, int num_threads) {
  const LogprobParams& lp = fp.lp;
  const LossHeadParams& h = fp.head;
  const T* logits = static_cast<const T*>(lp.logits);
  T* dlogits = static_cast<T*>(fp.dlogits);
#pragma omp parallel for schedule(static) num_threads(num_threads)
  for (int64_t n = 0; n < lp.N; ++n) {
    const T* row = logits + n * lp.row_stride;
    const RowSums st = lp.entropy ? row_stats<true>(row, lp.V, lp.temperature)
                                   : row_stats<false>(row, lp.V, lp.temperature);
    const float logs = st.logs();
    const float logp = target_logp(scale_logit(load(row, lp.targets[n]), lp.temperature), st.m, st.s);
    lp.logp[n] = logp;
    if (lp.stats) {
      lp.stats[2 * n] = st.m;
      lp.stats[2 * n + 1] = logs;
    }
    if (lp.entropy) lp.entropy[n] = st.entropy();
    const float old = h.old_logp ? h.old_logp[n] : logp;
    const float ref = h.ref_logp ? h.ref_logp[n] : 0.0f;
    const float samp = h.sampling_logp ? h.sampling_logp[n] : old;
    const TokenHead th = token_head(h, logp, old, ref, samp, h.advantages[n / h.T], h.coef[n]);
    const float g = th.g;
    h.tok_loss[n] = th.loss;
    if (h.g_logp) h.g_logp[n] = g;
    if (dlogits)
      row_grad(row, dlogits + n * fp.grad_row_stride, lp.V, lp.targets[n], st.m, logs, 0.0f, g, 0.0f,
               lp.temperature);
  }
}

void fused_loss(const FusedLossParams& p, int num_threads) {
  if (p.lp.dtype == kFloat32) return fused_loss_impl<float>(p, num_threads);
  if (p.lp.dtype == kBFloat16) return fused_loss_impl<bf16_t>(p, num_threads);
  return fused_loss_impl<f16_t>(p, num_threads);
}

}  // namespace cpu
}  // namespace grpo
