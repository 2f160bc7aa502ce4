// CUDA: group-normalized advantages for every group in one launch (one block; B is O(10^4)).
// C++ twin: csrc/cpu/advantages.cpp.
#include "../params.h"
#include "common.cuh"
#include "kernels.h"

namespace grpo {
namespace cuda {

constexpr int kAdvThreads = 1024;

__device__ double block_sum(double v, double* shared) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kAdvThreads / 32 ? shared[lane] : 0.0;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  v = shared[0];
  __syncthreads();
  return v;
}

__global__ void __launch_bounds__(kAdvThreads) advantages_kernel(AdvantageParams p) {
  __shared__ double shared[kAdvThreads / 32];
  float batch_std = 0.0f;
  if (p.scale == kScaleBatch && p.B > 1) {  // torch.std over the whole batch, two passes as on the CPU
    double s = 0.0;
    for (int64_t i = threadIdx.x; i < p.B; i += kAdvThreads) s += p.rewards[i];
    const double mean = block_sum(s, shared) / (double)p.B;
    double ss = 0.0;
    for (int64_t i = threadIdx.x; i < p.B; i += kAdvThreads) {
      const double d = p.rewards[i] - mean;
      ss += d * d;
    }
    batch_std = (float)sqrt(block_sum(ss, shared) / (double)(p.B - 1));
  }
  const int64_t num_groups = p.B / p.G;
  for (int64_t g = threadIdx.x; g < num_groups; g += kAdvThreads) advantages_of_group(p, g, batch_std);
}

std::string advantages(const AdvantageParams& p, void* stream) {
  if (p.B == 0) return "";
  advantages_kernel<<<1, kAdvThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return launch_error();
}

}  // namespace cuda
}  // namespace grpo
