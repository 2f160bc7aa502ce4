// CPU row primitives over one logits row: loads of fp32/bf16/fp16, the statistics pass and the gradient
// pass, written with explicit vectors (16 or 8 lanes).
#pragma once
#include <cstdint>
#include <cmath>
#include <cstring>
#if defined(__FMA__)
#include <immintrin.h>
#endif

#include "../grpo_math.h"

namespace grpo {
namespace cpu {

constexpr int64_t kChunk = 512;  // partial sums are folded into double every kChunk elements

struct bf16_t { uint16_t x; };
struct f16_t { _Float16 x; };

inline float load(const float* p, int64_t j) { return p[j]; }
inline float load(const bf16_t* p, int64_t j) {
  uint32_t u = (uint32_t)p[j].x << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float load(const f16_t* p, int64_t j) { return (float)p[j].x; }

inline void store(float* p, int64_t j, float v) { p[j] = v; }
inline void store(bf16_t* p, int64_t j, float v) {  // round to nearest even; NaN stays NaN
  uint32_t u;
  std::memcpy(&u, &v, 4);
  uint32_t rounded = u + 0x7fffu + ((u >> 16) & 1u);
  bool nan = (u & 0x7fffffffu) > 0x7f800000u;
  p[j].x = nan ? (uint16_t)((u >> 16) | 0x40u) : (uint16_t)(rounded >> 16);
}
inline void store(f16_t* p, int64_t j, float v) { p[j].x = (_Float16)v; }

// kW-wide float vectors (gcc vector extensions) with the same math as the scalar fexp of grpo_math.h, so
// the row loops run vectorized whatever the auto-vectorizer decides: 16 lanes (zmm) where AVX-512 is
// compiled in (the extension is built with -march=native on the machine that runs it), else 8 (ymm on
// AVX2, two xmm halves elsewhere). The row loops are bound by work per element rather than by memory
// (one and two threads give the same ns per element per thread); 16 lanes over 8 measured ~9% faster.
#if defined(__AVX512F__)
constexpr int kW = 16;
#else
constexpr int kW = 8;
#endif
typedef float vf __attribute__((vector_size(4 * kW)));
typedef int32_t vi __attribute__((vector_size(4 * kW)));
typedef uint32_t vu __attribute__((vector_size(4 * kW)));
typedef uint16_t vu16 __attribute__((vector_size(2 * kW)));
typedef _Float16 vh __attribute__((vector_size(2 * kW)));

inline vf splat(float x) { return vf{} + x; }
inline vf opaque(vf v) {  // a rounded value stays rounded: no fp contraction into what follows
#if defined(__AVX512F__)
  asm("" : "+v"(v));
#elif defined(__AVX__)
  asm("" : "+x"(v));
#else  // the vector lives in two registers or in memory: a memory barrier works everywhere
  asm("" : "+m"(v));
#endif
  return v;
}
inline vf as_vf(vi v) { vf f; std::memcpy(&f, &v, sizeof f); return f; }

inline vf vload(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline vf vload(const bf16_t* p) {
  vu16 h;
  std::memcpy(&h, p, sizeof h);
  vu u = __builtin_convertvector(h, vu) << 16;
  vf f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline vf vload(const f16_t* p) { vh h; std::memcpy(&h, p, sizeof h); return __builtin_convertvector(h, vf); }

inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline void vstore(bf16_t* p, vf v) {
  // Round to nearest even. Arithmetic NaNs are quiet (0x7fc00000 | sign) and stay NaN under the
  // rounding add, so no NaN select is needed here.
  vi u;
  std::memcpy(&u, &v, sizeof u);
  vu16 h = __builtin_convertvector((vu)(u + 0x7fff + ((u >> 16) & 1)) >> 16, vu16);  // the top halves
  std::memcpy(p, &h, sizeof h);
}
inline void vstore(f16_t* p, vf v) { vh h = __builtin_convertvector(v, vh); std::memcpy(p, &h, sizeof h); }

// exp(d) for d <= 0 (every softmax argument here: z - max, log p), lane-wise, ~1 ulp: exp2 split into a
// rounded integer part (magic-number rounding) and a degree-6 polynomial on [-0.5, 0.5] (Cephes exp2f),
// the integer part added straight into the exponent bits. Below 2^-126 the result is 0 (so -inf -> 0).
// NaN is not propagated here: row_stats flags NaN rows in its max pass.
inline vf vexp_nonpos(vf d) {
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer in the low bits
  vf t = d * 1.44269504088896341f;
  t = t < -126.0f ? splat(-126.5f) : t;
  vf r = t + magic;
  vf f = t - (r - magic);
  vf y = splat(1.535336188319500e-4f);
  y = y * f + 1.339887440266574e-3f;
  y = y * f + 9.618437357674640e-3f;
  y = y * f + 5.550332471162809e-2f;
  y = y * f + 2.402264791363012e-1f;
  y = y * f + 6.931472028550421e-1f;
  y = y * f + 1.0f;
  vi yi, ri;
  std::memcpy(&yi, &y, sizeof y);
  std::memcpy(&ri, &r, sizeof r);
  yi += ri << 23;  // low mantissa bits of r hold n (two's complement): y * 2^n
  return t < -126.0f ? splat(0.0f) : as_vf(yi);
}

inline float hmax(vf v) {
  float m = v[0];
  for (int l = 1; l < kW; ++l) m = v[l] > m ? v[l] : m;
  return m;
}
inline double hsum(vf v) {
  double s = 0.0;
  for (int l = 0; l < kW; ++l) s += v[l];
  return s;
}

// a * b + c with one rounding, lane-wise.
inline vf vfma(vf a, vf b, vf c) {
#if defined(__AVX512F__)
  return (vf)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif defined(__FMA__)
  return (vf)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  vf o;
  for (int l = 0; l < kW; ++l) o[l] = std::fma(a[l], b[l], c[l]);
  return o;
#endif
}

// Logits scaling: none at T = 1, else z = x / T rounded once for the double T (grpo_math.h scale_logit,
// lane-wise: one multiply and three fmas instead of a division).
struct NoScale {
  vf operator()(vf x) const { return x; }
  float operator()(float x) const { return x; }
};
struct DivScale {
  TempScale s;
  vf operator()(vf x) const {
    const vf q = opaque(x * s.y);
    const vf r = vfma(-q, splat(s.T_lo), vfma(-q, splat(s.T_hi), x));
    vi xi;
    std::memcpy(&xi, &x, sizeof x);
    const vf ax = as_vf(xi & 0x7fffffff);
    return opaque((ax >= s.lo) & (ax <= s.hi) ? vfma(splat(s.y), r, q) : q);
  }
  float operator()(float x) const { return scale_logit(x, s); }
};

// Softmax statistics of z = row / T: max, sum exp(z - m) and (kEntropy) sum exp(z - m)(z - m). The max
// loop streams the row from memory, the sum loop re-reads it from cache; partial sums are folded into
// double every kChunk elements.
// Row statistics with the sums kept in double (the CPU folds partial sums into double anyway).
struct RowSums {
  float m;
  double s;
  double t;
  float logs() const { return (float)std::log(s); }
  float entropy() const { return (float)(std::log(s) - t / s); }
};

// Row max of z = row / T and whether any z is NaN: the first pass, streaming the row from memory.
template <typename T, typename S>
float row_max(const T* row, int64_t V, S scale, bool* has_nan_out) {
  const int64_t Vv = V - V % kW;
  vf mx = splat(-INFINITY);
  vi nan = vi{} + 0;
  for (int64_t j = 0; j < Vv; j += kW) {
    vf z = scale(vload(row + j));
    mx = z > mx ? z : mx;
    nan |= z != z;
  }
  float m = hmax(mx);
  bool has_nan = false;
  for (int l = 0; l < kW; ++l) has_nan |= nan[l] != 0;
  for (int64_t j = Vv; j < V; ++j) {
    float z = scale(load(row, j));
    m = z > m ? z : m;
    has_nan |= z != z;
  }
  *has_nan_out = has_nan;
  return m;
}

// Pass 2 of the statistics: s = sum exp(z - m) and (kEntropy) t = sum exp(z - m)(z - m), partial sums
// folded into double every kChunk elements; with kStore each exp is also stored to e[j] (float; e may
// alias row when T is float: each element is read before it is overwritten).
template <bool kEntropy, bool kStore, typename T, typename S>
RowSums row_sum_exp(const T* row, float* e, int64_t V, float m, S scale) {
  const int64_t Vv = V - V % kW;
  double s = 0.0, t = 0.0;
  const vf zero = splat(0.0f);
  for (int64_t c0 = 0; c0 < Vv; c0 += kChunk) {
    const int64_t c1 = c0 + kChunk < Vv ? c0 + kChunk : Vv;
    vf sv = zero, tv = zero;
    for (int64_t j = c0; j < c1; j += kW) {
      vf d = scale(vload(row + j)) - m;
      vf ev = vexp_nonpos(d);
      if (kStore) vstore(e + j, ev);
      sv += ev;
      if (kEntropy) tv += ev > 0.0f ? ev * d : zero;
    }
    s += hsum(sv);
    if (kEntropy) t += hsum(tv);
  }
  for (int64_t j = Vv; j < V; ++j) {
    float d = scale(load(row, j)) - m;
    float ev = fexp(d);
    if (kStore) e[j] = ev;
    s += ev;
    t += ev > 0.0f ? ev * d : 0.0f;
  }
  return RowSums{m, s, t};
}

template <bool kEntropy, typename T, typename S>
RowSums row_stats_impl(const T* row, int64_t V, S scale) {
  bool has_nan;
  const float m = row_max(row, V, scale, &has_nan);
  if (has_nan || m == -INFINITY) return RowSums{m, NAN, NAN};  // as torch: NaN row, or all -inf -> NaN
  return row_sum_exp<kEntropy, false>(row, nullptr, V, m, scale);
}

template <bool kEntropy, typename T>
RowSums row_stats(const T* row, int64_t V, double temperature) {
  if (temperature == 1.0) return row_stats_impl<kEntropy>(row, V, NoScale{});
  return row_stats_impl<kEntropy>(row, V, DivScale{temp_scale(temperature)});
}

// dlogits row: (g_logp * (onehot - p) - g_ent * p (log p + H)) / T. `out` may alias `row`.
template <typename T, typename S>
void row_grad_impl(const T* row, T* out, int64_t V, int64_t target, float m, float logs, float H, float g_logp,
                   float g_ent, double temperature, S scale) {
  const int64_t Vv = V - V % kW;
  if (g_logp == 0.0f && g_ent == 0.0f) {
    for (int64_t j = 0; j < Vv; j += kW) vstore(out + j, splat(0.0f));
    for (int64_t j = Vv; j < V; ++j) store(out, j, 0.0f);
    return;
  }
  const float a = (float)(-(double)g_logp / temperature), b = (float)(-(double)g_ent / temperature);
  // A target outside [0, V): the row is a block of vocabulary columns that does not hold it (no one-hot term).
  const bool has_target = target >= 0 && target < V;
  const float z_t = has_target ? scale(load(row, target)) : 0.0f;
  const vf zero = splat(0.0f);
  if (g_ent == 0.0f) {  // the loss backward: no entropy term
    for (int64_t j = 0; j < Vv; j += kW) vstore(out + j, a * vexp_nonpos((scale(vload(row + j)) - m) - logs));
  } else {
    for (int64_t j = 0; j < Vv; j += kW) {
      vf zl = (scale(vload(row + j)) - m) - logs;  // log p_j
      vf p = vexp_nonpos(zl);
      vf ent = p > 0.0f ? p * (zl + H) : zero;
      vstore(out + j, a * p + b * ent);
    }
  }
  for (int64_t j = Vv; j < V; ++j) {
    float zl = (scale(load(row, j)) - m) - logs;
    float p = fexp(zl);
    float ent = p > 0.0f ? p * (zl + H) : 0.0f;
    store(out, j, a * p + b * ent);
  }
  // The one-hot term, added once to the target column (re-derived from the saved logit: `out` may alias).
  if (!has_target) return;
  const float lpt = (z_t - m) - logs;
  const float pt = fexp(lpt);
  const float ent_t = pt > 0.0f ? pt * (lpt + H) : 0.0f;
  store(out, target, (float)((double)(g_logp * (1.0f - pt)) / temperature) + b * ent_t);
}

template <typename T>
void row_grad(const T* row, T* out, int64_t V, int64_t target, float m, float logs, float H, float g_logp,
              float g_ent, double temperature) {
  if (temperature == 1.0) return row_grad_impl(row, out, V, target, m, logs, H, g_logp, g_ent, 1.0f, NoScale{});
  row_grad_impl(row, out, V, target, m, logs, H, g_logp, g_ent, temperature, DivScale{temp_scale(temperature)});
}

// The fused loss's one-exp gradient path (forward and backward of one row while it is in cache), for rows
// whose max is finite and which hold no NaN (the others take row_stats + row_grad: torch's NaN answers):
// pass 2 stores e_j = exp(z_j - m) to `e` (the dlogits row itself when it is float) while summing it;
// pass 3 writes c e_j with c = -g / (T s), one rounding per element. One exp per element instead of two
// (the statistics pass and the gradient pass each took one), and p_j = e_j / s without log s's rounding.
template <typename T>
float row_max(const T* row, int64_t V, double temperature, bool* has_nan) {
  if (temperature == 1.0) return row_max(row, V, NoScale{}, has_nan);
  return row_max(row, V, DivScale{temp_scale(temperature)}, has_nan);
}

template <bool kEntropy, typename T>
RowSums row_exp(const T* row, float* e, int64_t V, float m, double temperature) {
  if (temperature == 1.0) return row_sum_exp<kEntropy, true>(row, e, V, m, NoScale{});
  return row_sum_exp<kEntropy, true>(row, e, V, m, DivScale{temp_scale(temperature)});
}

// out_j = c e_j (c = -g / (T s)); out[target] = g (1 - p_t) / T. `out` may alias `e` (float rows).
template <typename T>
void row_scale_grad(const float* e, T* out, int64_t V, int64_t target, double s, float g, double temperature) {
  const int64_t Vv = V - V % kW;
  const float c = (float)(-(double)g / ((double)temperature * s));
  const float p_t = (float)((double)e[target] / s);
  const float v_t = (float)((double)(g * (1.0f - p_t)) / temperature);
  for (int64_t j = 0; j < Vv; j += kW) vstore(out + j, c * vload(e + j));
  for (int64_t j = Vv; j < V; ++j) store(out, j, c * e[j]);
  store(out, target, v_t);
}

}  // namespace cpu
}  // namespace grpo
