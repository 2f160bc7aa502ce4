// Entry points of the C++ CPU kernels (the `cpu` backend). Each takes one params struct.
#pragma once
#include "../params.h"

namespace grpo {
namespace cpu {

void advantages(const AdvantageParams& p, int num_threads);
void logprobs(const LogprobParams& p, int num_threads);
void softmax_grad(const SoftmaxGradParams& p, int num_threads);
void loss_head(const LossHeadParams& p, int num_threads);
void fused_loss(const FusedLossParams& p, int num_threads);
void linear(const LinearParams& p, int num_threads);

}  // namespace cpu
}  // namespace grpo
