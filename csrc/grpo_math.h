// Per-element and per-sequence GRPO math shared by the CUDA kernels and their C++ twins.
// Everything here is __host__ __device__ so the CPU tests run the same arithmetic the GPU runs.
// Formulas follow TRL's GRPOTrainer._compute_loss (ratio, clip, KL, IS correction) and
// _generate_and_score_completions (advantages); see grpo/ops/*.py for the PyTorch reference.
#pragma once
#include <cmath>
#include <cstdint>

#include "params.h"

#if defined(__CUDACC__)
#define GRPO_HD __host__ __device__ __forceinline__
#else
#define GRPO_HD inline
#endif

namespace grpo {

// exp(x) in fp32. Device: hardware exp2 path. Host: Cephes-style polynomial (about 1 ulp) written
// branch-free so gcc vectorizes the row loops; exp(-inf) = 0 and NaN propagates.
GRPO_HD float fexp(float x) {
#if defined(__CUDA_ARCH__)
  return __expf(x);
#else
  const float lo = -87.33654f, hi = 88.72283f;
  float xc = x < lo ? lo : (x > hi ? hi : x);
  float fn = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - fn * 0.693359375f;
  r = r - fn * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  int32_t n = (int32_t)fn;
  // 2^n split in two factors so n = 128 (x near hi) does not overflow the exponent field.
  int32_t n1 = n >> 1, n2 = n - n1;
  union { int32_t i; float f; } s1, s2;
  s1.i = (n1 + 127) << 23;
  s2.i = (n2 + 127) << 23;
  y = y * s1.f * s2.f;
  y = x < lo ? 0.0f : y;
  y = x > hi ? INFINITY : y;
  return x != x ? x : y;
#endif
}

// z = x / T, correctly rounded as torch's logits / T (a multiply by a rounded 1/T is off by up to an ulp
// of z, which shows in logp for large logits), and rounded before anything is subtracted from it.
GRPO_HD float scale_logit(float x, float temperature) {
#if defined(__CUDA_ARCH__)
  return temperature == 1.0f ? x : __fdiv_rn(x, temperature);
#else
  return temperature == 1.0f ? x : x / temperature;
#endif
}

// ---------------------------------------------------------------------------------------------
// Group advantages (TRL: _generate_and_score_completions): a = (r - baseline) / (std + eps).
struct GroupStats {
  float mean;
  float std;   // unbiased, as torch.std
  bool zero;   // every reward equal (includes G == 1)
};

GRPO_HD GroupStats group_stats(const float* r, int64_t G) {
  double s = 0.0;
  float mn = r[0], mx = r[0];
  for (int64_t i = 0; i < G; ++i) {
    s += r[i];
    mn = r[i] < mn ? r[i] : mn;
    mx = r[i] > mx ? r[i] : mx;
  }
  double mean = s / (double)G;
  double ss = 0.0;
  for (int64_t i = 0; i < G; ++i) ss += ((double)r[i] - mean) * ((double)r[i] - mean);
  GroupStats st;
  st.mean = (float)mean;
  st.std = G > 1 ? (float)sqrt(ss / (double)(G - 1)) : 0.0f;
  st.zero = !(mx > mn);
  return st;
}

// One reward's advantage given its group's statistics and the divisor's std (group or batch).
GRPO_HD float advantage_of(float r, GroupStats st, int64_t G, float std_used, int scale,
                           int estimator, float eps) {
  if (st.zero) return 0.0f;
  float centered = r - st.mean;
  if (estimator == kEstRLOO) centered = centered * ((float)G / (float)(G - 1));  // r - mean(others)
  if (scale == kScaleNone) return centered;
  return centered / (std_used + eps);
}

// Advantages and the zero-variance flag of group g; batch_std is used when scale == kScaleBatch.
GRPO_HD void advantages_of_group(const AdvantageParams& p, int64_t g, float batch_std) {
  const float* r = p.rewards + g * p.G;
  const GroupStats st = group_stats(r, p.G);
  const float std_used = p.scale == kScaleBatch ? batch_std : st.std;
  for (int64_t i = 0; i < p.G; ++i)
    p.advantages[g * p.G + i] = advantage_of(r[i], st, p.G, std_used, p.scale, p.estimator, p.eps);
  p.zero_std[g] = st.zero ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------
// Row softmax statistics. Online form: state (m, s, t) with s = sum exp(z - m), t = sum exp(z - m)(z - m).
struct RowStats {
  float m;
  float s;
  float t;
};

GRPO_HD RowStats row_stats_init() { return RowStats{-INFINITY, 0.0f, 0.0f}; }

// Merge two partial states (used by vector lanes, threads and warps alike).
GRPO_HD RowStats row_stats_merge(RowStats a, RowStats b) {
  if (a.s == 0.0f) return b;  // empty part (NaN in s still propagates)
  if (b.s == 0.0f) return a;
  float m = a.m > b.m ? a.m : b.m;
  float ca = fexp(a.m - m), cb = fexp(b.m - m);
  float da = a.m - m, db = b.m - m;
  RowStats o;
  o.m = m;
  o.s = a.s * ca + b.s * cb;
  // sum e(z - m) over each part re-expressed against the new max: e' = e*c, (z - m') = (z - m_part) + d
  o.t = (a.t + a.s * da) * ca + (b.t + b.s * db) * cb;
  return o;
}

GRPO_HD float row_logs(RowStats st) { return logf(st.s); }

// logp of the target from its scaled logit and the row's (m, s), with one rounding: z - m is exact in
// double and log s is taken in double, so the result is within half an ulp plus the error of s.
GRPO_HD float target_logp(float z_t, float m, double s) { return (float)(((double)z_t - (double)m) - log(s)); }

// H = log s - t / s (entropy of softmax(z), z already divided by the temperature).
GRPO_HD float row_entropy(RowStats st) { return logf(st.s) - st.t / st.s; }

// d/dz_j of (g_logp * logp_target + g_ent * H), divided by the temperature. dj = z_j - m (z = logits / T), logs = log s.
// log p_j = dj - logs: subtracting the max first keeps p's precision when one token dominates the row.
GRPO_HD float softmax_grad_elem(float dj, float logs, bool is_target, float g_logp, float g_ent,
                                float H, float temperature) {
  float lp = dj - logs;
  float p = fexp(lp);
  float d = g_logp * ((is_target ? 1.0f : 0.0f) - p);
  float ent = p > 0.0f ? p * (lp + H) : 0.0f;
  d -= g_ent * ent;
  return d / temperature;
}

// ---------------------------------------------------------------------------------------------
// KL estimators between the policy and the reference (Schulman's k1/k2/k3; TRL uses k3).
GRPO_HD float kl_value(int kind, float logp, float ref) {
  float d = ref - logp;
  if (kind == kKL3) return fexp(d) - d - 1.0f;
  if (kind == kKL2) return 0.5f * d * d;
  return -d;  // k1 = logp - ref
}

GRPO_HD float kl_grad(int kind, float logp, float ref) {  // d KL / d logp
  float d = ref - logp;
  if (kind == kKL3) return 1.0f - fexp(d);
  if (kind == kKL2) return -d;
  return 1.0f;
}

// Truncated importance-sampling weight from a log ratio old - sampling (token or sequence sum).
GRPO_HD float is_weight(int mode, float log_ratio, float cap) {
  if (mode == kISNone) return 1.0f;
  float w = fexp(log_ratio);
  if (mode == kISTokenTruncate || mode == kISSeqTruncate) return w < cap ? w : cap;
  return w > cap ? 0.0f : w;  // *_mask modes
}

// Clipped policy-gradient term: p = max(-r A, -clip(r, 1 - el, 1 + eh) A), capped at -c A for A < 0
// (dual clip). Returns p and dp/dr. Ties take the unclipped branch (torch splits ties 1/2 + 1/2 and
// clamp passes the gradient at its bounds, which sums to the same value).
struct PolicyTerm {
  float loss;
  float dloss_dr;
};

GRPO_HD PolicyTerm policy_term(float r, float A, float eps_low, float eps_high, float dual_clip) {
  float lo = 1.0f - eps_low, hi = 1.0f + eps_high;
  float rc = r < lo ? lo : (r > hi ? hi : r);
  float u1 = -r * A, u2 = -rc * A;
  PolicyTerm o;
  if (u2 > u1) {
    o.loss = u2;
    o.dloss_dr = 0.0f;
  } else {
    o.loss = u1;
    o.dloss_dr = -A;
  }
  if (dual_clip > 0.0f && A < 0.0f) {
    float u3 = -dual_clip * A;
    if (u3 < o.loss) {
      o.loss = u3;
      o.dloss_dr = 0.0f;
    }
  }
  return o;
}

// Per-token loss and dLoss/dlogp for token-level ratios and token-level (or no) IS weights.
// old_lp == logp for on-policy. Returns the unweighted loss and g = coef * dloss/dlogp.
struct TokenHead {
  float loss;
  float g;
};

GRPO_HD TokenHead token_head(const LossHeadParams& p, float logp, float old_lp, float ref_lp, float samp_lp,
                             float A, float coef) {
  float r = fexp(logp - old_lp);
  float w = p.is_mode == kISNone ? 1.0f : is_weight(p.is_mode, old_lp - samp_lp, p.is_cap);
  PolicyTerm pt = policy_term(r, A, p.eps_low, p.eps_high, p.dual_clip);
  float loss = pt.loss * w;
  float dl = pt.dloss_dr * r * w;
  if (p.beta != 0.0f) {
    loss += p.beta * kl_value(p.kl, logp, ref_lp);
    dl += p.beta * kl_grad(p.kl, logp, ref_lp);
  }
  return TokenHead{loss, coef * dl};
}

GRPO_HD bool head_is_tokenwise(const LossHeadParams& p) {
  return p.ratio_level == kRatioToken && (p.is_mode == kISNone || p.is_mode == kISTokenTruncate ||
                                          p.is_mode == kISTokenMask);
}

GRPO_HD float head_old(const LossHeadParams& p, int64_t i) { return p.old_logp ? p.old_logp[i] : p.logp[i]; }
GRPO_HD float head_ref(const LossHeadParams& p, int64_t i) { return p.ref_logp ? p.ref_logp[i] : 0.0f; }
GRPO_HD float head_samp(const LossHeadParams& p, int64_t i) {
  return p.sampling_logp ? p.sampling_logp[i] : head_old(p, i);
}

GRPO_HD bool head_seq_ratio(const LossHeadParams& p) { return p.ratio_level == kRatioSequence; }
GRPO_HD bool head_seq_is(const LossHeadParams& p) { return p.is_mode == kISSeqTruncate || p.is_mode == kISSeqMask; }

// Token i's terms of its sequence's sums: masked log-ratio (logp - old), masked IS log-ratio
// (old - sampling), mask. Summed in double, serially on the CPU and as a tree over lanes on the GPU.
GRPO_HD void head_sums_add(const LossHeadParams& p, int64_t i, double (&sums)[3]) {
  const double m = p.mask[i];
  sums[0] += m * ((double)p.logp[i] - (double)head_old(p, i));
  sums[1] += m * ((double)head_old(p, i) - (double)head_samp(p, i));
  sums[2] += m;
}

// The sequence's factors from its sums: the clamped token count, the GSPO ratio exp(mean log-ratio) and
// the sequence IS weight (1 when the IS mode is not sequence-level).
struct SeqFactors {
  float n_cl;
  float r_seq;
  float w_seq;
};

GRPO_HD SeqFactors head_seq_factors(const LossHeadParams& p, const double (&sums)[3]) {
  SeqFactors f;
  f.n_cl = sums[2] < 1.0 ? 1.0f : (float)sums[2];
  f.r_seq = fexp((float)(sums[0] / (double)f.n_cl));
  f.w_seq = head_seq_is(p) ? is_weight(p.is_mode, (float)sums[1], p.is_cap) : 1.0f;
  return f;
}

// Token i of sequence-aware head (advantage A, the sequence's factors f): writes tok_loss[i] and g_logp[i]
// (without the sequence-ratio term, which needs the whole sequence first) and returns that term's share,
// coef_i w_i dp/dr.
GRPO_HD double head_token(const LossHeadParams& p, int64_t i, float A, SeqFactors f) {
  const bool seq_ratio = head_seq_ratio(p);
  const float lp = p.logp[i], old = head_old(p, i);
  const float r = seq_ratio ? f.r_seq : fexp(lp - old);
  float w = f.w_seq;
  if (!head_seq_is(p) && p.is_mode != kISNone) w = is_weight(p.is_mode, old - head_samp(p, i), p.is_cap);
  PolicyTerm pt = policy_term(r, A, p.eps_low, p.eps_high, p.dual_clip);
  float loss = pt.loss * w;
  float g = seq_ratio ? 0.0f : pt.dloss_dr * r * w;
  if (p.beta != 0.0f) {
    const float ref = head_ref(p, i);
    loss += p.beta * kl_value(p.kl, lp, ref);
    g += p.beta * kl_grad(p.kl, lp, ref);
  }
  p.tok_loss[i] = loss;
  p.g_logp[i] = p.coef[i] * g;
  return (double)p.coef[i] * pt.dloss_dr * w;
}

// One sequence b, serially over its T tokens: sequence-level ratio (GSPO: exp of the masked mean of
// logp - old, gradient through the mean) and/or sequence-level IS weight (exp of the masked sum of
// old - sampling). Also handles the token-level case.
GRPO_HD void head_sequence(const LossHeadParams& p, int64_t b) {
  const int64_t base = b * p.T;
  double sums[3] = {0.0, 0.0, 0.0};
  for (int64_t t = 0; t < p.T; ++t) head_sums_add(p, base + t, sums);
  const SeqFactors f = head_seq_factors(p, sums);
  // Sequence ratio: dL/dlogp_t = (sum_t' coef_t' w_t' dp/dr) * r * m_t / n  + coef_t beta dKL_t.
  double acc = 0.0;
  for (int64_t t = 0; t < p.T; ++t) acc += head_token(p, base + t, p.advantages[b], f);
  if (head_seq_ratio(p)) {
    const float scale = (float)acc * f.r_seq / f.n_cl;
    for (int64_t t = 0; t < p.T; ++t) p.g_logp[base + t] += scale * p.mask[base + t];
  }
}

}  // namespace grpo
