// Shared CUDA helpers: dtype conversion (scalar and 16-byte vectors), the online row-statistics update,
// warp/block reductions, the two row passes (statistics; gradient) and the host-side launch helpers.
// The per-element math is the shared grpo_math.h; see csrc/cpu/row.h for the C++ twin of the row passes.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "../grpo_math.h"

namespace grpo {
namespace cuda {

// ---------------------------------------------------------------------------------------------
// dtype <-> float. Stores round to nearest even (NaN stays NaN).
__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

// Elements per 16-byte vector.
template <typename T> struct Vec { static constexpr int kN = 16 / (int)sizeof(T); };

// 16-byte vectors: unpack/pack between the raw 16 bytes and kN floats, and load/store through p (16-byte
// aligned). Halves convert a pair per instruction; bf16 is the top half of a float, so its unpacking is
// shifts and masks. Stores go through __stwb (the default write-back policy) because a plain vector store
// next to a scalar fallback, or of constant zeros, is otherwise split into narrower stores by the optimizer.
template <typename T> __device__ __forceinline__ void unpack(const uint4& v, float (&f)[Vec<T>::kN]);
template <> __device__ __forceinline__ void unpack<float>(const uint4& v, float (&f)[4]) {
  f[0] = __uint_as_float(v.x), f[1] = __uint_as_float(v.y);
  f[2] = __uint_as_float(v.z), f[3] = __uint_as_float(v.w);
}
template <> __device__ __forceinline__ void unpack<__nv_bfloat16>(const uint4& v, float (&f)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) f[2 * i] = __uint_as_float(w[i] << 16), f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
}
template <> __device__ __forceinline__ void unpack<__half>(const uint4& v, float (&f)[8]) {
  __half2 h[4];
  memcpy(h, &v, 16);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 f2 = __half22float2(h[i]);
    f[2 * i] = f2.x, f[2 * i + 1] = f2.y;
  }
}
__device__ __forceinline__ __nv_bfloat162 pack2(__nv_bfloat16*, float a, float b) { return __floats2bfloat162_rn(a, b); }
__device__ __forceinline__ __half2 pack2(__half*, float a, float b) { return __floats2half2_rn(a, b); }
template <typename T> __device__ __forceinline__ uint4 pack(const float (&f)[Vec<T>::kN]) {
  if constexpr (std::is_same_v<T, float>) {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
  } else {
    decltype(pack2((T*)nullptr, 0.0f, 0.0f)) h[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = pack2((T*)nullptr, f[2 * i], f[2 * i + 1]);
    uint4 v;
    memcpy(&v, h, 16);
    return v;
  }
}
template <typename T>
__device__ __forceinline__ void load_vec(const T* p, float (&f)[Vec<T>::kN]) {
  unpack<T>(*reinterpret_cast<const uint4*>(p), f);
}
template <typename T>
__device__ __forceinline__ void store_vec(T* p, const float (&f)[Vec<T>::kN]) {
  __stwb(reinterpret_cast<uint4*>(p), pack<T>(f));
}

// Elements before the first 16-byte boundary of p (V when p is not even element-aligned: all scalar).
template <typename T>
__device__ __forceinline__ int head_elems(const T* p, int V) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a % sizeof(T) != 0) return V;
  const int h = (int)(((16u - (a & 15u)) & 15u) / sizeof(T));
  return h < V ? h : V;
}

// ---------------------------------------------------------------------------------------------
// exp for the row loops (arguments <= 0): fexp's ex2 path without its subnormal fix-up (5 -> 2
// instructions). Results below 2^-126 flush to 0, as the CPU's vexp_nonpos does; -inf -> 0, NaN -> NaN.
__device__ __forceinline__ float exp_row(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * 1.44269504088896341f));
  return y;
}

// z = x / T as grpo_math.h scale_logit (the double temperature as an fp32 pair; q = x y, two fma
// remainders, q + r y), split by type so T = 1 costs nothing in the loops. With T_lo = 0 that is
// Markstein's correctly rounded quotient, bit-identical to __fdiv_rn (checked on 2e8 random pairs with a
// C twin); __fdiv_rn itself keeps a per-element slow-path call whose calling convention spilled registers
// in the hot loops.
struct NoScale {
  __device__ __forceinline__ float operator()(float x) const { return x; }
};
struct DivScale {
  TempScale s;
  __device__ __forceinline__ explicit DivScale(double t) : s(temp_scale(t)) {}
  __device__ __forceinline__ float operator()(float x) const { return scale_logit(x, s); }
};

// Fold K scaled logits into a thread's (m, s, t): one max and at most one rescale per vector, then the
// exps against the running max. Same m as folding RowStats{z, 1, 0} one by one; s and t differ only by
// rounding. NaN never wins the max but reaches s through its exp; -inf adds nothing.
template <bool kEnt, int K>
__device__ __forceinline__ void stats_push(RowStats& st, const float (&z)[K]) {
  float pm = z[0];
#pragma unroll
  for (int k = 1; k < K; ++k) pm = fmaxf(pm, z[k]);
  if (pm > st.m) {
    const float dm = st.m - pm;  // -inf for an empty state (c = 0)
    const float c = exp_row(dm);
    if (kEnt) st.t = st.s == 0.0f ? 0.0f : (st.t + st.s * dm) * c;  // as row_stats_merge
    st.s *= c;
    st.m = pm;
  }
  const float base = st.m == -INFINITY ? 0.0f : st.m;  // nothing finite yet: -inf -> 0, NaN stays NaN
  float e[K];
  float tp = 0.0f;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    const float d = z[k] - base;
    e[k] = exp_row(d);
    if (kEnt) tp = fmaf(e[k], fmaxf(d, -FLT_MAX), tp);  // e = 0 at d = -inf: adds 0, not NaN
  }
#pragma unroll
  for (int w = 1; w < K; w *= 2)  // pairwise within the vector: fewer roundings than a running sum
#pragma unroll
    for (int k = 0; k + w < K; k += 2 * w) e[k] += e[k + w];
  st.s += e[0];
  if (kEnt) st.t += tp;
}

// Torch's answer for rows whose max is infinite (all -inf, or a +inf logit: inf - inf): NaN statistics.
__device__ __forceinline__ RowStats row_stats_final(RowStats st) {
  if (isinf(st.m)) st.s = st.t = NAN;
  return st;
}

// ---------------------------------------------------------------------------------------------
// Reductions over the kThreads lanes that share a row (one warp when kThreads == 32, else the block).
__device__ __forceinline__ RowStats warp_merge(RowStats s) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    RowStats o;
    o.m = __shfl_xor_sync(0xffffffffu, s.m, off);
    o.s = __shfl_xor_sync(0xffffffffu, s.s, off);
    o.t = __shfl_xor_sync(0xffffffffu, s.t, off);
    s = row_stats_merge(s, o);  // commutative: every lane ends with the same bits
  }
  return s;
}

template <int kThreads>
__device__ __forceinline__ RowStats group_merge(RowStats s) {
  s = warp_merge(s);
  if constexpr (kThreads > 32) {
    __shared__ RowStats sh[kThreads / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) sh[warp] = s;
    __syncthreads();
    s = lane < kThreads / 32 ? sh[lane] : row_stats_init();
    s = warp_merge(s);  // every warp merges the partials itself: no second broadcast round
    __syncthreads();    // sh is rewritten by the next call
  }
  return s;
}

// Sums K doubles over the group; every lane gets the totals.
template <int kThreads, int K>
__device__ __forceinline__ void group_sum(double (&v)[K]) {
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v[k] += __shfl_xor_sync(0xffffffffu, v[k], off);
  if constexpr (kThreads > 32) {
    __shared__ double sh[K][kThreads / 32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0)
#pragma unroll
      for (int k = 0; k < K; ++k) sh[k][warp] = v[k];
    __syncthreads();
#pragma unroll
    for (int k = 0; k < K; ++k) {
      v[k] = lane < kThreads / 32 ? sh[k][lane] : 0.0;
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v[k] += __shfl_xor_sync(0xffffffffu, v[k], off);
    }
    __syncthreads();
  }
}

// Lane 0's values to every lane of the group; in a block also a barrier (reads before it, writes after).
template <int kThreads, int K>
__device__ __forceinline__ void group_bcast(float (&v)[K]) {
  if constexpr (kThreads == 32) {
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] = __shfl_sync(0xffffffffu, v[k], 0);
  } else {
    __shared__ float sh[K];
    if (threadIdx.x == 0)
#pragma unroll
      for (int k = 0; k < K; ++k) sh[k] = v[k];
    __syncthreads();
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] = sh[k];
    __syncthreads();
  }
}

// Work items (rows, sequences) per block: a block of kThreads, or 128 / 32 warps of one item each.
template <int kThreads>
struct Slots {
  static constexpr int kBlock = kThreads < 128 ? 128 : kThreads;
  static constexpr int kPerBlock = kBlock / kThreads;
  static constexpr int kMinBlocks = 1024 / kBlock;  // half occupancy at least: 64 registers per thread
  __device__ static int lane() { return (int)(threadIdx.x % kThreads); }
  __device__ static int64_t first() { return (int64_t)blockIdx.x * kPerBlock + threadIdx.x / kThreads; }
  __device__ static int64_t stride() { return (int64_t)gridDim.x * kPerBlock; }
};

// ---------------------------------------------------------------------------------------------
// This lane's share of a row: 16-byte vectors from the row's first 16-byte boundary with two loads in
// flight, then the unaligned head (< 16 bytes) and the tail one element each. vec(j0, x) gets elements
// j0 .. j0 + kN - 1 as floats; one(j, x) a single element.
template <typename T, int kThreads, typename FV, typename F1>
__device__ __forceinline__ void walk_row(const T* row, int V, int lane, FV&& vec, F1&& one) {
  constexpr int kN = Vec<T>::kN;
  const int h = head_elems(row, V);
  const int nv = (V - h) / kN;
  const T* body = row + h;
  int i = lane;
  for (; i + kThreads < nv; i += 2 * kThreads) {
    float a[kN], b[kN];
    load_vec(body + i * kN, a);
    load_vec(body + (i + kThreads) * kN, b);
    vec(h + i * kN, a);
    vec(h + (i + kThreads) * kN, b);
  }
  if (i < nv) {
    float a[kN];
    load_vec(body + i * kN, a);
    vec(h + i * kN, a);
  }
  for (int r = lane; r < V - nv * kN; r += kThreads) {  // r < h: head; else tail past the vectors
    const int j = r < h ? r : r + nv * kN;
    one(j, to_f(row[j]));
  }
}

template <typename F>
__device__ __forceinline__ void with_scale(double temperature, F&& f) {
  if (temperature == 1.0) {
    f(NoScale{});
  } else {
    f(DivScale(temperature));
  }
}

// Pass 1: statistics of z = row / temperature merged over the group (every lane gets the same bits).
// t (the entropy sum) is only accumulated when `entropy`; it stays 0 otherwise.
template <bool kEnt, typename T, int kThreads, typename S>
__device__ __forceinline__ RowStats row_stats_part(const T* row, int V, int lane, S scale) {
  RowStats st = row_stats_init();
  walk_row<T, kThreads>(
      row, V, lane,
      [&](int, float (&x)[Vec<T>::kN]) {
#pragma unroll
        for (int k = 0; k < Vec<T>::kN; ++k) x[k] = scale(x[k]);
        stats_push<kEnt>(st, x);
      },
      [&](int, float x) {
        const float z[1] = {scale(x)};
        stats_push<kEnt>(st, z);
      });
  return st;
}

template <typename T, int kThreads>
__device__ __forceinline__ RowStats row_stats(const T* row, int V, int lane, double temperature, bool entropy) {
  RowStats st;
  with_scale(temperature, [&](auto scale) {
    st = entropy ? row_stats_part<true, T, kThreads>(row, V, lane, scale)
                 : row_stats_part<false, T, kThreads>(row, V, lane, scale);
  });
  return row_stats_final(group_merge<kThreads>(st));
}

// Pass 2's arithmetic, as csrc/cpu/row.h row_grad: a p_j (+ b p_j (log p_j + H)) with a = -g_logp / T,
// b = -g_ent / T, and g_logp (1 - p_t) / T (+ the same entropy term) at the target, computed once per row
// from x_t, the target's raw logit.
template <bool kEnt, typename S>
struct GradRow {
  S scale;
  float m, logs, H, a, b, v_t;
  int target;
  __device__ __forceinline__ GradRow(int target_, float x_t, float m_, float logs_, float H_, float g_logp,
                                     float g_ent, double temperature, S scale_)
      : scale(scale_), m(m_), logs(logs_), H(H_), target(target_) {
    a = (float)(-(double)g_logp / temperature), b = (float)(-(double)g_ent / temperature);
    const float zl_t = (scale(x_t) - m) - logs, p_t = exp_row(zl_t);
    const float v_g = (float)((double)(g_logp * (1.0f - p_t)) / temperature);
    v_t = kEnt ? v_g + ent(p_t, zl_t) : v_g;
  }
  __device__ __forceinline__ float ent(float p, float zl) const {
    return kEnt ? b * (p > 0.0f ? p * (zl + H) : 0.0f) : 0.0f;
  }
  __device__ __forceinline__ float elem(float x) const {
    const float zl = (scale(x) - m) - logs;  // log p_j; the max comes off first so p keeps its precision
    const float p = exp_row(zl);
    return kEnt ? a * p + ent(p, zl) : a * p;
  }
  __device__ __forceinline__ float one(int j, float x) const { return j == target ? v_t : elem(x); }
  // Elements j0 .. j0 + K - 1, in place: logits -> dlogits.
  template <int K>
  __device__ __forceinline__ void vec(int j0, float (&x)[K]) const {
#pragma unroll
    for (int k = 0; k < K; ++k) x[k] = elem(x[k]);
    const unsigned off = (unsigned)(target - j0);
    if (off < (unsigned)K) {  // the target column: rare, and constant indices keep x in registers
#pragma unroll
      for (int k = 0; k < K; ++k)
        if ((unsigned)k == off) x[k] = v_t;
    }
  }
};

// Pass 2 over a row: x_t was read by the caller before any lane of the group wrote the row. Each element
// is read and written by the same lane, read first, so out may alias row. Vectors follow row's alignment;
// when out is not 16-byte aligned at the same elements (a different phase) the stores go scalar.
template <bool kEnt, typename T, int kThreads, typename S>
__device__ __forceinline__ void row_grad_part(const T* row, T* out, int V, int lane, int target, float x_t,
                                              float m, float logs, float H, float g_logp, float g_ent,
                                              double temperature, S scale) {
  constexpr int kN = Vec<T>::kN;
  const GradRow<kEnt, S> gr(target, x_t, m, logs, H, g_logp, g_ent, temperature, scale);
  const bool vec_out = (reinterpret_cast<uintptr_t>(out + head_elems(row, V)) & 15u) == 0;
  walk_row<T, kThreads>(
      row, V, lane,
      [&](int j0, float (&x)[kN]) {
        gr.vec(j0, x);
        if (vec_out) {
          store_vec(out + j0, x);
        } else {
#pragma unroll
          for (int k = 0; k < kN; ++k) out[j0 + k] = from_f<T>(x[k]);
        }
      },
      [&](int j, float x) { out[j] = from_f<T>(gr.one(j, x)); });
}

// A zero gradient row (g_logp = g_ent = 0, e.g. masked tokens): written without reading the logits.
template <typename T, int kThreads>
__device__ __forceinline__ void row_zero(T* out, int V, int lane) {
  constexpr int kN = Vec<T>::kN;
  const int h = head_elems(out, V);
  const int nv = (V - h) / kN;
  const float zero[kN] = {};
  for (int j = lane; j < h; j += kThreads) out[j] = from_f<T>(0.0f);
  for (int i = lane; i < nv; i += kThreads) store_vec(out + h + i * kN, zero);
  for (int j = h + nv * kN + lane; j < V; j += kThreads) out[j] = from_f<T>(0.0f);
}

// dlogits of one row from its saved statistics (m, log s) and, for the entropy term, H.
template <typename T, int kThreads>
__device__ __forceinline__ void row_grad(const T* row, T* out, int V, int lane, int target, float x_t,
                                         float m, float logs, float H, float g_logp, float g_ent, double temperature) {
  if (g_logp == 0.0f && g_ent == 0.0f) return row_zero<T, kThreads>(out, V, lane);
  with_scale(temperature, [&](auto scale) {
    if (g_ent == 0.0f)
      row_grad_part<false, T, kThreads>(row, out, V, lane, target, x_t, m, logs, H, g_logp, g_ent, temperature, scale);
    else
      row_grad_part<true, T, kThreads>(row, out, V, lane, target, x_t, m, logs, H, g_logp, g_ent, temperature, scale);
  });
}

// ---------------------------------------------------------------------------------------------
// Host side.
// Row indices are 32-bit in the kernels (fewer registers and instructions); the launchers refuse longer rows.
constexpr int64_t kMaxV = int64_t(1) << 30;

inline std::string launch_error() {  // after a launch: bad configuration, no device, earlier sticky errors
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : std::string(cudaGetErrorString(e));
}

// Blocks for `items` work items at `per_block` each; gridDim.x is capped and the kernels grid-stride.
inline unsigned grid_for(int64_t items, int per_block) {
  const int64_t blocks = (items + per_block - 1) / per_block;
  return (unsigned)(blocks < 2147483647 ? blocks : 2147483647);
}

template <typename T> struct TypeTag { using type = T; };

template <typename F>
inline void with_dtype(int dtype, F f) {
  if (dtype == kFloat32) {
    f(TypeTag<float>{});
  } else if (dtype == kBFloat16) {
    f(TypeTag<__nv_bfloat16>{});
  } else {
    f(TypeTag<__half>{});
  }
}

// Lanes per row by V: a block of 256 for long rows, 128 for medium ones, one warp (4 rows a block) below.
template <typename F>
inline void with_row_threads(int64_t V, F f) {
  if (V >= 4096) {
    f(std::integral_constant<int, 256>{});
  } else if (V >= 1024) {
    f(std::integral_constant<int, 128>{});
  } else {
    f(std::integral_constant<int, 32>{});
  }
}

}  // namespace cuda
}  // namespace grpo
