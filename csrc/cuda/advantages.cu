// CUDA: group-normalized advantages for every group in one launch. C++ twin: csrc/cpu/advantages.cpp.
// One block: B is O(10^4) rewards, so a single launch beats any split; the batch std (two passes, as the
// CPU) is a block reduction in double, then each thread runs the shared advantages_of_group on whole
// groups, so group statistics are summed serially exactly as on the CPU.
#include "../params.h"
#include "common.cuh"
#include "kernels.h"

namespace grpo {
namespace cuda {

constexpr int kAdvThreads = 1024;

__global__ void __launch_bounds__(kAdvThreads) advantages_kernel(const AdvantageParams p) {
  float batch_std = 0.0f;
  if (p.scale == kScaleBatch && p.B > 1) {  // torch.std over the whole batch (TRL scale_rewards="batch")
    double s[1] = {0.0};
    for (int64_t i = threadIdx.x; i < p.B; i += kAdvThreads) s[0] += p.rewards[i];
    group_sum<kAdvThreads>(s);
    const double mean = s[0] / (double)p.B;
    double ss[1] = {0.0};
    for (int64_t i = threadIdx.x; i < p.B; i += kAdvThreads) ss[0] += (p.rewards[i] - mean) * (p.rewards[i] - mean);
    group_sum<kAdvThreads>(ss);
    batch_std = (float)sqrt(ss[0] / (double)(p.B - 1));
  }
  const int64_t num_groups = p.B / p.G;
  for (int64_t g = threadIdx.x; g < num_groups; g += kAdvThreads) advantages_of_group(p, g, batch_std);
}

std::string advantages(const AdvantageParams& p, void* stream) {
  if (p.B <= 0) return "";
  if (p.G <= 0 || p.B % p.G != 0) return "B must be a multiple of G >= 1";
  advantages_kernel<<<1, kAdvThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return launch_error();
}

}  // namespace cuda
}  // namespace grpo
