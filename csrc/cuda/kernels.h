// Entry points of the CUDA kernels. Plain C++ declarations (no CUDA headers) so the pybind layer,
// compiled by the host compiler, can call them. `stream` is a cudaStream_t passed as void*.
// Each returns an error string (empty on success) instead of throwing across the nvcc boundary.
#pragma once
#include <cstdint>
#include <string>

#include "../params.h"

namespace grpo {
namespace cuda {

std::string advantages(const AdvantageParams& p, void* stream);
std::string logprobs(const LogprobParams& p, void* stream);
std::string softmax_grad(const SoftmaxGradParams& p, void* stream);
std::string loss_head(const LossHeadParams& p, void* stream);
std::string fused_loss(const FusedLossParams& p, void* stream);
// fused_loss's rows-on-chip kernel (sm_90): R 16-byte vectors a thread, clusters of C blocks of 256
// threads, per_block vectors of the row a block. R = 0: not for these rows.
struct ResidentPlan {
  int R = 0, C = 0, per_block = 0;
};
// policy: FusedLossParams.rows_on_chip (0 never, 1 the default plan, 4 / 8 / 16 that slice size)
ResidentPlan resident_plan_for(int64_t V, int dtype, int policy);  // the shape, whatever the device
ResidentPlan resident_plan(int64_t V, int dtype, int policy);      // on the current device (empty before sm_90)
// Whether rows at `rows`, `row_stride` elements apart, start on 16-byte boundaries (the kernel's other need).
bool rows_aligned(const void* rows, int64_t row_stride, int dtype);

}  // namespace cuda
}  // namespace grpo
