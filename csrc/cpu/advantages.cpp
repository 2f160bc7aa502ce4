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
#pragma omp parallel for schedule(static) num_threads(num_threads) if (num_groups > 4096)
  for (int64_t g = 0; g < num_groups; ++g) {
    const float* r = p.rewards + g * p.G;
    const GroupStats st = group_stats(r, p.G);
    const float std_used = p.scale == kScaleBatch ? batch_std : st.std;
    for (int64_t i = 0; i < p.G; ++i)
      p.advantages[g * p.G + i] = advantage_of(r[i], st, p.G, std_used, p.scale, p.estimator, p.eps);
    p.zero_std[g] = st.zero ? 1 : 0;
  }
}

}  // namespace cpu
}  // namespace grpo
