// CUDA: the GRPO loss head (per sequence) and the fused token-level loss (per row: statistics, head and,
// when asked, dlogits in one launch). C++ twin: csrc/cpu/loss.cpp; row passes in common.cuh.
#include "../params.h"
#include "common.cuh"
#include "kernels.h"

namespace grpo {
namespace cuda {

// head_sequence (grpo_math.h) with its three token loops spread over the kThreads lanes of a sequence:
// the per-token arithmetic is the same expressions in the same order; only the sequence sums (masked
// log-ratio and IS log-ratio sums and the token count, then the seq-ratio gradient accumulator) are
// reduced as a tree in double, so they can differ from the serial sums in the last bits of a double,
// not in the floats derived from them (short of a rounding tie). Token-level configurations skip them.
template <int kThreads>
__global__ void __launch_bounds__(Slots<kThreads>::kBlock) loss_head_kernel(const LossHeadParams p) {
  using S = Slots<kThreads>;
  const int lane = S::lane();
  for (int64_t b = S::first(); b < p.B; b += S::stride()) {
    const int64_t base = b * p.T;
    SeqFactors f{1.0f, 1.0f, 1.0f};  // token-level ratio and IS: head_token reads none of these
    if (head_seq_ratio(p) || head_seq_is(p)) {
      double sums[3] = {0.0, 0.0, 0.0};
      for (int64_t t = lane; t < p.T; t += kThreads) head_sums_add(p, base + t, sums);
      group_sum<kThreads>(sums);
      f = head_seq_factors(p, sums);
    }
    double acc[1] = {0.0};
    for (int64_t t = lane; t < p.T; t += kThreads) acc[0] += head_token(p, base + t, p.advantages[b], f);
    if (head_seq_ratio(p)) {  // each lane adds to the g_logp it wrote itself: no barrier needed for those
      group_sum<kThreads>(acc);
      const float scale = (float)acc[0] * f.r_seq / f.n_cl;
      for (int64_t t = lane; t < p.T; t += kThreads) p.g_logp[base + t] += scale * p.mask[base + t];
    }
  }
}

// One row per group of lanes: pass 1 (statistics, logp, entropy), the token head on lane 0 exactly as
// csrc/cpu/loss.cpp, g shared with the group, pass 2 (dlogits, no entropy term). Masked rows are skipped.
// One read of the row for the forward, one read + one write for the gradient; dlogits may alias logits.
template <typename T, int kThreads>
__global__ void __launch_bounds__(Slots<kThreads>::kBlock, Slots<kThreads>::kMinBlocks)
    fused_loss_kernel(const FusedLossParams fp) {
  using S = Slots<kThreads>;
  const LogprobParams& lp = fp.lp;
  const LossHeadParams& h = fp.head;
  const int lane = S::lane();
  const int V = (int)lp.V;
  for (int64_t n = S::first(); n < lp.N; n += S::stride()) {
    const T* row = static_cast<const T*>(lp.logits) + n * lp.row_stride;
    if (h.mask[n] == 0.0f) {  // masked (coef 0): not read; zeros as csrc/cpu/loss.cpp skip_masked
      if (lane == 0) {
        lp.logp[n] = 0.0f;
        if (lp.stats) lp.stats[2 * n] = lp.stats[2 * n + 1] = 0.0f;
        if (lp.entropy) lp.entropy[n] = 0.0f;
        h.tok_loss[n] = 0.0f;
        if (h.g_logp) h.g_logp[n] = 0.0f;
      }
      if (fp.dlogits) row_zero<T, kThreads>(static_cast<T*>(fp.dlogits) + n * fp.grad_row_stride, V, lane);
      continue;
    }
    const int64_t target = lp.targets[n];
    // Lane 0's loads for the head are issued now and consumed after the row pass.
    float x_t = 0.0f, old = 0.0f, ref = 0.0f, samp = 0.0f, A = 0.0f, coef = 0.0f;
    if (lane == 0) {
      x_t = to_f(row[target]);
      if (h.old_logp) old = h.old_logp[n];
      if (h.ref_logp) ref = h.ref_logp[n];
      if (h.sampling_logp) samp = h.sampling_logp[n];
      A = h.advantages[n / h.T];
      coef = h.coef[n];
    }
    const RowStats st = row_stats<T, kThreads>(row, V, lane, lp.temperature, lp.entropy != nullptr);
    const float logs = row_logs(st);
    float shared[2] = {0.0f, x_t};  // g, x_t
    if (lane == 0) {
      const float logp = target_logp(x_t, lp.temperature, st.m, (double)st.s);
      lp.logp[n] = logp;
      if (lp.stats) {
        lp.stats[2 * n] = st.m;
        lp.stats[2 * n + 1] = logs;
      }
      if (lp.entropy) lp.entropy[n] = row_entropy(st);
      if (!h.old_logp) old = logp;
      if (!h.sampling_logp) samp = old;
      const TokenHead th = token_head(h, logp, old, ref, samp, A, coef);
      h.tok_loss[n] = th.loss;
      if (h.g_logp) h.g_logp[n] = th.g;
      shared[0] = th.g;
    }
    if (fp.dlogits) {
      group_bcast<kThreads>(shared);  // lane 0 read x_t before this point: no lane has written the row yet
      T* out = static_cast<T*>(fp.dlogits) + n * fp.grad_row_stride;
      row_grad<T, kThreads>(row, out, V, lane, (int)target, shared[1], st.m, logs, 0.0f, shared[0], 0.0f,
                            lp.temperature);
    }
  }
}

std::string loss_head(const LossHeadParams& p, void* stream) {
  if (p.B <= 0 || p.T <= 0) return "";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (p.T > 256) {
    loss_head_kernel<256><<<grid_for(p.B, Slots<256>::kPerBlock), Slots<256>::kBlock, 0, s>>>(p);
  } else {  // short sequences: a warp each, four a block
    loss_head_kernel<32><<<grid_for(p.B, Slots<32>::kPerBlock), Slots<32>::kBlock, 0, s>>>(p);
  }
  return launch_error();
}

std::string fused_loss(const FusedLossParams& p, void* stream) {
  if (p.lp.N <= 0) return "";
  if (p.lp.V > kMaxV) return "V exceeds the CUDA kernels' limit of 2^30 elements per row";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  with_dtype(p.lp.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_row_threads(p.lp.V, [&](auto threads) {
      constexpr int kT = decltype(threads)::value;
      fused_loss_kernel<T, kT><<<grid_for(p.lp.N, Slots<kT>::kPerBlock), Slots<kT>::kBlock, 0, s>>>(p);
    });
  });
  return launch_error();
}

}  // namespace cuda
}  // namespace grpo
