// Plain parameter structs: the only thing the kernels (CPU and CUDA) see.
// The pybind host functions check their inputs and fill these; nothing here knows about Python or torch.
#pragma once
#include <cstdint>

namespace grpo {

// Codes shared with grpo/ops/variants.py (the Python registries name them; the kernels switch on them).
enum DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };
enum AdvScale : int { kScaleGroup = 0, kScaleBatch = 1, kScaleNone = 2 };
enum AdvEstimator : int { kEstGRPO = 0, kEstRLOO = 1 };
enum KLKind : int { kKL3 = 0, kKL2 = 1, kKL1 = 2 };
enum RatioLevel : int { kRatioToken = 0, kRatioSequence = 1 };
enum ISMode : int { kISNone = 0, kISTokenTruncate = 1, kISTokenMask = 2, kISSeqTruncate = 3, kISSeqMask = 4 };

struct AdvantageParams {
  const float* rewards;   // (B,)
  float* advantages;      // (B,)
  uint8_t* zero_std;      // (B / G,) 1 where every reward of the group is equal
  int64_t B;
  int64_t G;
  int scale;              // AdvScale
  int estimator;          // AdvEstimator
  float eps;
};

// Row statistics of logits / temperature: logsumexp, target logprob and (optionally) entropy.
struct LogprobParams {
  const void* logits;     // (N, V) rows of `row_stride` elements, dtype `dtype`
  const int64_t* targets; // (N,)
  float* logp;            // (N,) out
  float* stats;           // (N, 2) out, may be null: row max m and log s (lse = m + log s), kept apart
                          // so p = exp((z - m) - log s) keeps precision when one token dominates
  float* entropy;         // (N,) out, null when not wanted
  float* logp_lo;         // (N,) out, may be null: logp's rounding residual (logp64 - logp), for sequence sums
  int64_t N;
  int64_t V;
  int64_t row_stride;
  double temperature;     // logits are divided by it (exactly: see grpo_math.h scale_logit)
  int dtype;              // DType
};

// dlogits[n, j] = (g_logp[n] * (onehot_j - p_j) - g_ent[n] * p_j * (log p_j + H_n)) / temperature
struct SoftmaxGradParams {
  const void* logits;     // (N, V)
  const int64_t* targets; // (N,); one outside [0, V) adds no one-hot term: the rows are a block of vocabulary
                          // columns (V of them, targets shifted by the block's first column) without it
  const float* stats;     // (N, 2): m and log s from LogprobParams.stats
  const float* entropy;   // (N,) needed only when g_ent != null
  const float* g_logp;    // (N,)
  const float* g_ent;     // (N,) may be null
  void* dlogits;          // (N, V) out, same dtype as logits; may alias logits
  int64_t N;
  int64_t V;
  int64_t row_stride;
  int64_t grad_row_stride;
  double temperature;     // logits are divided by it (exactly: see grpo_math.h scale_logit)
  int dtype;
};

// The GRPO per-token head: turns logp (and old/ref/sampling logp) into the per-token loss and
// g = dLoss/dlogp. N = B * T tokens laid out as B sequences of T.
struct LossHeadParams {
  const float* logp;          // (N,) current policy logprobs
  const float* logp_lo;       // (N,) or null: logp's rounding residual (LogprobParams.logp_lo)
  const float* old_logp;      // (N,) or null: on-policy (old = logp, detached)
  const float* ref_logp;      // (N,) or null (beta == 0)
  const float* sampling_logp; // (N,) or null (no importance-sampling correction)
  const float* mask;          // (N,) 0/1
  const float* coef;          // (N,) aggregation weight of each token (mask folded in)
  const float* advantages;    // (B,)
  float* tok_loss;            // (N,) out: unweighted per-token loss
  float* g_logp;              // (N,) out: dLoss/dlogp (coef folded in)
  int64_t B;
  int64_t T;
  float eps_low;
  float eps_high;
  float dual_clip;            // <= 0: off
  float beta;
  float is_cap;
  int kl;                     // KLKind
  int ratio_level;            // RatioLevel
  int is_mode;                // ISMode
};

// Fused token-level loss: per row, pass 1 (row stats) -> head -> pass 2 (dlogits), one launch.
struct FusedLossParams {
  LogprobParams lp;           // logits, targets, logp/stats/entropy outputs
  LossHeadParams head;        // head.logp must equal lp.logp
  void* dlogits;              // (N, V) or null (no gradient wanted); may alias logits
  int64_t grad_row_stride;
  int rows_on_chip;           // the CUDA launcher may hold each row on chip (sm_90 clusters, one read of the
                              // logits for loss and dlogits) where it applies. 0: never; 1: its default plan;
                              // 4, 8, 16: that many 16-byte vectors a thread (measurements). CPU: unused
  int rows_prefetch;          // 1: that kernel on a persistent grid, each block copying its slice of the next
                              // row into shared memory during the current one (measurements). CPU: unused
};

// y = x · wᵀ + bias for a few rows of x (decode steps of the sampler), over the weight as stored.
struct LinearParams {
  const void* x;          // (M, K) rows of `ldx` elements
  const void* w;          // (N, K) rows of `ldw` elements
  const void* bias;       // (N,) or null
  void* y;                // (M, N) rows of `ldy` elements
  int64_t M, N, K, ldx, ldw, ldy;
  int dtype;              // DType of x, w, bias and y
};

}  // namespace grpo
