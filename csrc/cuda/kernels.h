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
// Whether fused_loss holds rows of V elements of `dtype` on chip on the current device (aligned rows).
bool resident_rows(int64_t V, int dtype);

}  // namespace cuda
}  // namespace grpo
