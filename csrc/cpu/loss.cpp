// C++ twin of csrc/cuda/loss.cu: the GRPO loss head and the fused token-level loss (row stats, head and
// dlogits for a row while it is still in cache: one read of the row from memory, one read+write).
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels.h"
#include "row.h"

namespace grpo {
namespace cpu {

void loss_head(const LossHeadParams& p, int num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if (p.B * p.T > 65536)
  for (int64_t b = 0; b < p.B; ++b) head_sequence(p, b);
}

// The per-token head for row n from its statistics: logp (and stats, entropy) written; returns g.
static float row_head(const FusedLossParams& fp, int64_t n, const RowSums& st, float x_t) {
  const LogprobParams& lp = fp.lp;
  const LossHeadParams& h = fp.head;
  const float logs = st.logs();
  const float logp = target_logp(x_t, lp.temperature, st.m, st.s);
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
  h.tok_loss[n] = th.loss;
  if (h.g_logp) h.g_logp[n] = th.g;
  return th.g;
}

// Masked tokens (mask 0, so coef 0) are not read: logp, statistics, entropy, loss and g are 0, which
// leaves the loss, the gradient and the masked metrics unchanged and skips their share of the logits.
static bool skip_masked(const FusedLossParams& fp, int64_t n) {
  if (fp.head.mask[n] != 0.0f) return false;
  const LogprobParams& lp = fp.lp;
  lp.logp[n] = 0.0f;
  if (lp.stats) lp.stats[2 * n] = lp.stats[2 * n + 1] = 0.0f;
  if (lp.entropy) lp.entropy[n] = 0.0f;
  fp.head.tok_loss[n] = 0.0f;
  if (fp.head.g_logp) fp.head.g_logp[n] = 0.0f;
  return true;
}

// One row with its gradient: max pass, exp pass storing exp(z - m) as float (into the dlogits row when
// it is float, else into the thread's scratch row), head, scale pass. Rows with NaN or an infinite max
// take the two-exp path, which gives torch's NaN answers.
template <typename T>
static void fused_row_with_grad(const FusedLossParams& fp, int64_t n, float* scratch) {
  const LogprobParams& lp = fp.lp;
  const T* row = static_cast<const T*>(lp.logits) + n * lp.row_stride;
  T* out = static_cast<T*>(fp.dlogits) + n * fp.grad_row_stride;
  const int64_t target = lp.targets[n];
  if (skip_masked(fp, n)) return row_grad(row, out, lp.V, target, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 1.0f);  // zeros
  const float x_t = load(row, target);  // before `out` (maybe `row`) is written
  bool has_nan;
  const float m = row_max(row, lp.V, lp.temperature, &has_nan);
  if (has_nan || std::isinf(m)) {
    const RowSums st = lp.entropy ? row_stats<true>(row, lp.V, lp.temperature)
                                   : row_stats<false>(row, lp.V, lp.temperature);
    const float g = row_head(fp, n, st, x_t);
    row_grad(row, out, lp.V, target, st.m, st.logs(), 0.0f, g, 0.0f, lp.temperature);
    return;
  }
  float* e = std::is_same<T, float>::value ? reinterpret_cast<float*>(out) : scratch;
  const RowSums st = lp.entropy ? row_exp<true>(row, e, lp.V, m, lp.temperature)
                                 : row_exp<false>(row, e, lp.V, m, lp.temperature);
  const float g = row_head(fp, n, st, x_t);
  row_scale_grad(e, out, lp.V, target, st.s, g, lp.temperature);
}

template <typename T>
static void fused_loss_impl(const FusedLossParams& fp, int num_threads) {
  const LogprobParams& lp = fp.lp;
  const T* logits = static_cast<const T*>(lp.logits);
  if (!fp.dlogits) {  // forward only: the statistics pass and the head
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t n = 0; n < lp.N; ++n) {
      if (skip_masked(fp, n)) continue;
      const T* row = logits + n * lp.row_stride;
      const RowSums st = lp.entropy ? row_stats<true>(row, lp.V, lp.temperature)
                                     : row_stats<false>(row, lp.V, lp.temperature);
      row_head(fp, n, st, load(row, lp.targets[n]));
    }
    return;
  }
#pragma omp parallel num_threads(num_threads)
  {
    // exp(z - m) of one row as float for half-precision rows (float rows use their own dlogits row).
    std::vector<float> scratch(std::is_same<T, float>::value ? 0 : (size_t)lp.V);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < lp.N; ++n) fused_row_with_grad<T>(fp, n, scratch.data());
  }
}

void fused_loss(const FusedLossParams& p, int num_threads) {
  if (p.lp.dtype == kFloat32) return fused_loss_impl<float>(p, num_threads);
  if (p.lp.dtype == kBFloat16) return fused_loss_impl<bf16_t>(p, num_threads);
  return fused_loss_impl<f16_t>(p, num_threads);
}

}  // namespace cpu
}  // namespace grpo
