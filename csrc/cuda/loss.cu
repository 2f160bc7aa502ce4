// CUDA: the GRPO loss head (per sequence) and the fused token-level loss (per row: statistics, head and,
// when asked, dlogits in one launch). C++ twin: csrc/cpu/loss.cpp.
#include "../params.h"
#include "common.cuh"
#include "kernels.h"

namespace grpo {
namespace cuda {

// One sequence per block; the shared serial head_sequence keeps the arithmetic identical to the CPU's.
// O(B * T) work against O(B * T * V) for the row passes.
__global__ void loss_head_kernel(LossHeadParams p) {
  for (int64_t b = blockIdx.x; b < p.B; b += gridDim.x)
    if (threadIdx.x == 0) head_sequence(p, b);
}

template <typename T, int kThreads>
__global__ void __launch_bounds__(kThreads) fused_loss_kernel(FusedLossParams fp) {
  const LogprobParams& lp = fp.lp;
  const LossHeadParams& h = fp.head;
  __shared__ float g_shared;
  for (int64_t n = blockIdx.x; n < lp.N; n += gridDim.x) {
    const T* row = static_cast<const T*>(lp.logits) + n * lp.row_stride;
    const RowStats st = row_stats_block<T, kThreads>(row, lp.V, lp.temperature);
    const float logs = row_logs(st);
    if (threadIdx.x == 0) {
      const float logp = target_logp(scale_logit(to_f(row[lp.targets[n]]), lp.temperature), st.m, (double)st.s);
      lp.logp[n] = logp;
      if (lp.stats) {
        lp.stats[2 * n] = st.m;
        lp.stats[2 * n + 1] = logs;
      }
      if (lp.entropy) lp.entropy[n] = row_entropy(st);
      const float old = h.old_logp ? h.old_logp[n] : logp;
      const float ref = h.ref_logp ? h.ref_logp[n] : 0.0f;
      const float samp = h.sampling_logp ? h.sampling_logp[n] : old;
      const TokenHead th = token_head(h, logp, old, ref, samp, h.advantages[n / h.T], h.coef[n]);
      h.tok_loss[n] = th.loss;
      if (h.g_logp) h.g_logp[n] = th.g;
      g_shared = th.g;
    }
    __syncthreads();
    const float g = g_shared;
    if (fp.dlogits) {
      T* out = static_cast<T*>(fp.dlogits) + n * fp.grad_row_stride;
      row_grad_block<T, kThreads>(row, out, lp.V, lp.targets[n], st.m, logs, 0.0f, g, 0.0f, lp.temperature);
    }
    __syncthreads();  // g_shared is rewritten for the next row
  }
}

std::string loss_head(const LossHeadParams& p, void* stream) {
  if (p.B == 0) return "";
  const unsigned grid = (unsigned)(p.B < 2147483647 ? p.B : 2147483647);
  loss_head_kernel<<<grid, 32, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return launch_error();
}

std::string fused_loss(const FusedLossParams& p, void* stream) {
  if (p.lp.N == 0) return "";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const unsigned grid = (unsigned)(p.lp.N < 2147483647 ? p.lp.N : 2147483647);
  with_dtype(p.lp.dtype, [&](auto tag) {
    using T = decltype(tag);
    with_block_size(p.lp.V, [&](auto threads) {
      fused_loss_kernel<T, decltype(threads)::value><<<grid, decltype(threads)::value, 0, s>>>(p);
    });
  });
  return launch_error();
}

}  // namespace cuda
}  // namespace grpo
