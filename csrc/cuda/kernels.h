// Entry points of the CUDA kernels. Plain C++ declarations (no CUDA headers) so the pybind layer,
// compiled by the host compiler, can call them. `stream` is a cudaStream_t passed as void*.
// Each returns an error string (empty on success) instead of throwing across the nvcc boundary.
#pragma once
#include <string>

#include "../params.h"

namespace grpo {
namespace cuda {

std::string advantages(const AdvantageParams& p, void* stream);
std::string logprobs(const LogprobParams& p, void* stream);
std::string softmax_grad(const SoftmaxGradParams& p, void* stream);
std::string loss_head(const LossHeadParams& p, void* stream);
std::string fused_loss(const FusedLossParams& p, void* stream);

}  // namespace cuda
}  // namespace grpo
