// C++ twin of csrc/cuda/advantages.cu: group-normalized advantages for every group in one call.
#include <cmath>

#include "../grpo_math.h"
#include "kernels.h"

namespace grpo {
namespace cpu {

void advantages(const AdvantageParams& p, int num_threads) {
  const int64_t num_groups = p.B / p.G;
  float batch_std = 0.0f;
  if (p.scale == kScaleBatch && p.B > 1) {  // torch.std over the whole batch (TRL scale_rewards="batch")
    double s = 0.0, ss = 0.0;
    for (int64_t i = 0; i < p.B; ++i) s += p.rewards[i];
    const double mean = s / (double)p.B;
    for (int64_t i = 0; i < p.B; ++i) ss += (p.rewards[i] - mean) * (p.rewards[i] - mean);
    batch_std = (float)std::sqrt(ss / (double)(p.B - 1));
  }
#pragma omp parallel for schedule(static) num_threads(num_threads) if (p.B > 16384)
  for (int64_t g = 0; g < num_groups; ++g) advantages_of_group(p, g, batch_std);
}

}  // namespace cpu
}  // namespace grpo
