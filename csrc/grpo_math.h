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

// z = x / T for the temperature T given in double, rounded once to fp32. T is held as an fp32 pair
// T_hi + T_lo: q = x y (y = RN(1/T)), r = x - q T_hi (exact by fma), r -= q T_lo, z = q + r y. For an fp32
// T (T_lo = 0) that is Markstein's correctly rounded quotient, bit-identical to x / T, whenever no step
// overflows or goes subnormal; with T_lo it is the correctly rounded x / T except within ~2^-20 ulp of a
// tie. Taken for 2^-64 <= |x| <= 2^64 and 2^-32 <= T <= 2^32; outside that z = x y (exact for 0, inf,
// NaN; within an ulp otherwise). Why the pair: dividing by fp32(T) (what torch's fp32 logits / 1.3 does)
// scales every z by the same 1 + 3e-8, a bias that adds up over a sequence's logprobs instead of averaging.
struct TempScale {
  float T_hi, T_lo, y, lo, hi;
};

GRPO_HD TempScale temp_scale(double T) {
  TempScale s;
  s.T_hi = (float)T;
  s.T_lo = (float)(T - (double)s.T_hi);
  s.y = (float)(1.0 / T);
  const bool ok = s.T_hi >= 0x1p-32f && s.T_hi <= 0x1p32f;
  s.lo = ok ? 0x1p-64f : INFINITY;
  s.hi = ok ? 0x1p64f : 0.0f;
  return s;
}

GRPO_HD float scale_logit(float x, const TempScale& s) {
#if defined(__CUDA_ARCH__)
  const float q = __fmul_rn(x, s.y);
  const float r = __fmaf_rn(-q, s.T_lo, __fmaf_rn(-q, s.T_hi, x));
  const float ax = fabsf(x);
  return ax >= s.lo && ax <= s.hi ? __fmaf_rn(s.y, r, q) : q;
#else
  const float q = x * s.y;
  const float r = std::fma(-q, s.T_lo, std::fma(-q, s.T_hi, x));
  const float ax = std::fabs(x);
  return ax >= s.lo && ax <= s.hi ? std::fma(s.y, r, q) : q;
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

// logp of the target from its raw logit x_t and the row's (m, s) of z = x / T, in double: x_t / T, the
// subtraction of m and log s (rounding z_t = x_t / T to fp32 first would add up to half an ulp of z_t,
// more than half an ulp of logp when |z_t| > |logp|). Its error is the error of s.
GRPO_HD double target_logp64(float x_t, double temperature, float m, double s) {
  return ((double)x_t / temperature - (double)m) - log(s);
}

// logp rounded once to fp32, and optionally the rounding residual lo = logp64 - logp (also fp32, exact
// enough: |lo| <= half an ulp of logp), so that sums of logp over a sequence keep double precision.
GRPO_HD float target_logp(float x_t, double temperature, float m, double s, float* lo = nullptr) {
  const double l = target_logp64(x_t, temperature, m, s);
  const float f = (float)l;
  if (lo) *lo = (float)(l - (double)f);
  return f;
}

// H = log s - t / s (entropy of softmax(z), z already divided by the temperature).
GRPO_HD float row_entropy(RowStats st) { return logf(st.s) - st.t / st.s; }

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
// logp enters as logp + logp_lo (its unrounded value) when the residual is given: on-policy, the
// sequence IS log-ratio is a sum of T logprobs, where T fp32 roundings would add up (and show in the
// loss, which is exp of that sum).
GRPO_HD void head_sums_add(const LossHeadParams& p, int64_t i, double (&sums)[3]) {
  const double m = p.mask[i];
  const double lp = (double)p.logp[i] + (p.logp_lo ? (double)p.logp_lo[i] : 0.0);
  const double old = p.old_logp ? (double)p.old_logp[i] : lp;
  const double samp = p.sampling_logp ? (double)p.sampling_logp[i] : old;
  sums[0] += m * (lp - old);
  sums[1] += m * (old - samp);
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
