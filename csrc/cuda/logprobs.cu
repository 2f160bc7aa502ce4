// CUDA: selective logprob (+ entropy) in one read of each logits row, and the softmax-gradient pass.
// C++ twin: csrc/cpu/logprobs.cpp. One block per row.
#include "../params.h"
#include "common.cuh"
#include "kernels.h"

namespace grpo {
namespace cuda {

template <typename T, int kThreads>
__global__ void __launch_bounds__(kThreads) logprobs_kernel(LogprobParams p) {
  for (int64_t n = blockIdx.x; n < p.N; n += gridDim.x) {
    const T* row = static_cast<const T*>(p.logits) + n * p.row_stride;
    const RowStats st = row_stats_block<T, kThreads>(row, p.V, p.temperature);
    if (threadIdx.x == 0) {
      const float logs = row_logs(st);
      p.logp[n] = target_logp(scale_logit(to_f(row[p.targets[n]]), p.temperature), st.m, (double)st.s);
      if (p.stats) {
        p.stats[2 * n] = st.m;
        p.stats[2 * n + 1] = logs;
      }
      if (p.entropy) p.entropy[n] = row_entropy(st);
    }
  }
}

template <typename T, int kThreads>
__global__ void __launch_bounds__(kThreads) softmax_grad_kernel(SoftmaxGradParams p) {
  for (int64_t n = blockIdx.x; n < p.N; n += gridDim.x) {
    const T* row = static_cast<const T*>(p.logits) + n * p.row_stride;
    T* out = static_cast<T*>(p.dlogits) + n * p.grad_row_stride;
    const float g_ent = p.g_ent ? p.g_ent[n] : 0.0f;
    const float H = p.g_ent ? p.entropy[n] : 0.0f;
    row_grad_block<T, kThreads>(row, out, p.V, p.targets[n], p.stats[2 * n], p.stats[2 * n + 1], H, p.g_logp[n],
                                g_ent, p.temperature);
  }
}

static unsigned grid_for(int64_t rows) { return (unsigned)(rows < 2147483647 ? rows : 2147483647); }

std::string logprobs(const LogprobParams& p, void* stream) {
  if (p.N == 0) return "";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  with_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    with_block_size(p.V, [&](auto threads) {
      logprobs_kernel<T, decltype(threads)::value><<<grid_for(p.N), decltype(threads)::value, 0, s>>>(p);
    });
  });
  return launch_error();
}

std::string softmax_grad(const SoftmaxGradParams& p, void* stream) {
  if (p.N == 0) return "";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  with_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    with_block_size(p.V, [&](auto threads) {
      softmax_grad_kernel<T, decltype(threads)::value><<<grid_for(p.N), decltype(threads)::value, 0, s>>>(p);
    });
  });
  return launch_error();
}

}  // namespace cuda
}  // namespace grpo
