// CPU row primitives over one logits row: loads of fp32/bf16/fp16, the statistics pass and the gradient
// pass. Loops run over fixed 16-wide lanes so gcc vectorizes them without reassociating a reduction.
#pragma once
#include <cstdint>
#include <cstring>

#include "../grpo_math.h"

namespace grpo {
namespace cpu {

constexpr int kLanes = 16;
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

// Softmax statistics of row * inv_temp: max, sum exp(z - m), sum exp(z - m)(z - m).
template <typename T>
RowStats row_stats(const T* row, int64_t V, float inv_temp) {
  float mx[kLanes];
  for (int l = 0; l < kLanes; ++l) mx[l] = -INFINITY;
  const int64_t Vv = V - V % kLanes;
  for (int64_t j = 0; j < Vv; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      float z = load(row, j + l) * inv_temp;
      mx[l] = z > mx[l] ? z : mx[l];
    }
  float m = -INFINITY;
  for (int l = 0; l < kLanes; ++l) m = mx[l] > m ? mx[l] : m;
  for (int64_t j = Vv; j < V; ++j) {
    float z = load(row, j) * inv_temp;
    m = z > m ? z : m;
  }
  double s = 0.0, t = 0.0;
  for (int64_t c0 = 0; c0 < Vv; c0 += kChunk) {
    const int64_t c1 = c0 + kChunk < Vv ? c0 + kChunk : Vv;
    float sl[kLanes], tl[kLanes];
    for (int l = 0; l < kLanes; ++l) sl[l] = tl[l] = 0.0f;
    for (int64_t j = c0; j < c1; j += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        float d = load(row, j + l) * inv_temp - m;
        float e = fexp(d);
        sl[l] += e;
        tl[l] += e > 0.0f ? e * d : 0.0f;
      }
    for (int l = 0; l < kLanes; ++l) {
      s += sl[l];
      t += tl[l];
    }
  }
  for (int64_t j = Vv; j < V; ++j) {
    float d = load(row, j) * inv_temp - m;
    float e = fexp(d);
    s += e;
    t += e > 0.0f ? e * d : 0.0f;
  }
  return RowStats{m, (float)s, (float)t};
}

// dlogits row: (g_logp * (onehot - p) - g_ent * p (log p + H)) * inv_temp. `out` may alias `row`.
template <typename T>
void row_grad(const T* row, T* out, int64_t V, int64_t target, float m, float logs, float H, float g_logp,
              float g_ent, float inv_temp) {
  if (g_logp == 0.0f && g_ent == 0.0f) {
    for (int64_t j = 0; j < V; ++j) store(out, j, 0.0f);
    return;
  }
  const float a = -g_logp * inv_temp, b = -g_ent * inv_temp;
  const float z_t = load(row, target) * inv_temp;
  for (int64_t j = 0; j < V; ++j) {
    float zl = (load(row, j) * inv_temp - m) - logs;  // log p_j
    float p = fexp(zl);
    float ent = p > 0.0f ? p * (zl + H) : 0.0f;
    store(out, j, a * p + b * ent);
  }
  // The one-hot term, added once to the target column (re-derived from the saved logit: `out` may alias).
  const float lpt = (z_t - m) - logs;
  const float pt = fexp(lpt);
  const float ent_t = pt > 0.0f ? pt * (lpt + H) : 0.0f;
  store(out, target, g_logp * inv_temp * (1.0f - pt) + b * ent_t);
}

}  // namespace cpu
}  // namespace grpo
