// Shared CUDA helpers: dtype conversion, 16-byte vector loads, block reduction of row statistics.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "../grpo_math.h"

namespace grpo {
namespace cuda {

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ __half from_f<__half>(float x) { return __float2half_rn(x); }

// 16 bytes of T: 4 floats or 8 halves; rows whose start is 16-byte aligned take the vector path.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kN = 16 / sizeof(T);
  T v[kN];
};

template <typename T>
__device__ __forceinline__ bool aligned16(const T* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

// Fold one scaled logit into a thread's running (m, s, t); -inf never moves the state (p = 0).
__device__ __forceinline__ void stats_push(RowStats& st, float z) {
  if (z > st.m) {
    if (st.s > 0.0f) {
      const float dm = st.m - z;
      const float c = fexp(dm);
      st.t = (st.t + st.s * dm) * c;
      st.s = st.s * c + 1.0f;
    } else {
      st.s = 1.0f;
      st.t = 0.0f;
    }
    st.m = z;
  } else if (z != -INFINITY) {  // NaN lands here and poisons s, as it should
    const float d = z - st.m;
    const float e = fexp(d);
    st.s += e;
    st.t += e > 0.0f ? e * d : 0.0f;
  }
}

__device__ __forceinline__ RowStats warp_merge(RowStats s) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    RowStats o;
    o.m = __shfl_xor_sync(0xffffffffu, s.m, off);
    o.s = __shfl_xor_sync(0xffffffffu, s.s, off);
    o.t = __shfl_xor_sync(0xffffffffu, s.t, off);
    s = row_stats_merge(s, o);
  }
  return s;
}

// All threads get the merged statistics of the block. kThreads is a multiple of 32, at most 1024.
template <int kThreads>
__device__ __forceinline__ RowStats block_merge(RowStats s) {
  __shared__ RowStats shared[kThreads / 32];
  s = warp_merge(s);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (kThreads == 32) return s;
  if (lane == 0) shared[warp] = s;
  __syncthreads();
  if (warp == 0) {
    s = lane < kThreads / 32 ? shared[lane] : row_stats_init();
    s = warp_merge(s);
    if (lane == 0) shared[0] = s;
  }
  __syncthreads();
  s = shared[0];
  __syncthreads();  // shared[] may be reused by a later call
  return s;
}

// Statistics of one row (z = x * temperature), merged over the block.
template <typename T, int kThreads>
__device__ __forceinline__ RowStats row_stats_block(const T* row, int64_t V, float temperature) {
  RowStats st = row_stats_init();
  if (aligned16(row)) {
    constexpr int kN = Pack<T>::kN;
    const Pack<T>* packs = reinterpret_cast<const Pack<T>*>(row);
    const int64_t nv = V / kN;
    for (int64_t i = threadIdx.x; i < nv; i += kThreads) {
      const Pack<T> pk = packs[i];
#pragma unroll
      for (int k = 0; k < kN; ++k) stats_push(st, scale_logit(to_f(pk.v[k]), temperature));
    }
    for (int64_t j = nv * kN + threadIdx.x; j < V; j += kThreads) stats_push(st, scale_logit(to_f(row[j]), temperature));
  } else {
    for (int64_t j = threadIdx.x; j < V; j += kThreads) stats_push(st, scale_logit(to_f(row[j]), temperature));
  }
  return block_merge<kThreads>(st);
}

// dlogits of one row from its statistics: out may alias row (each element is read before it is written
// by the same thread).
template <typename T, int kThreads>
__device__ __forceinline__ void row_grad_block(const T* row, T* out, int64_t V, int64_t target, float m,
                                               float logs, float H, float g_logp, float g_ent,
                                               float temperature) {
  if (g_logp == 0.0f && g_ent == 0.0f) {
    for (int64_t j = threadIdx.x; j < V; j += kThreads) out[j] = from_f<T>(0.0f);
    return;
  }
  if (aligned16(row) && aligned16(out)) {
    constexpr int kN = Pack<T>::kN;
    const Pack<T>* src = reinterpret_cast<const Pack<T>*>(row);
    Pack<T>* dst = reinterpret_cast<Pack<T>*>(out);
    const int64_t nv = V / kN;
    for (int64_t i = threadIdx.x; i < nv; i += kThreads) {
      const Pack<T> pk = src[i];
      Pack<T> o;
#pragma unroll
      for (int k = 0; k < kN; ++k) {
        const int64_t j = i * kN + k;
        const float d = scale_logit(to_f(pk.v[k]), temperature) - m;
        o.v[k] = from_f<T>(softmax_grad_elem(d, logs, j == target, g_logp, g_ent, H, temperature));
      }
      dst[i] = o;
    }
    for (int64_t j = nv * kN + threadIdx.x; j < V; j += kThreads) {
      const float d = scale_logit(to_f(row[j]), temperature) - m;
      out[j] = from_f<T>(softmax_grad_elem(d, logs, j == target, g_logp, g_ent, H, temperature));
    }
  } else {
    for (int64_t j = threadIdx.x; j < V; j += kThreads) {
      const float d = scale_logit(to_f(row[j]), temperature) - m;
      out[j] = from_f<T>(softmax_grad_elem(d, logs, j == target, g_logp, g_ent, H, temperature));
    }
  }
}

inline std::string launch_error() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : std::string(cudaGetErrorString(e));
}

// Calls f(std::integral_constant<int, threads>) with a block size suited to V.
template <typename F>
inline void with_block_size(int64_t V, F f) {
  if (V >= 4096) {
    f(std::integral_constant<int, 256>{});
  } else if (V >= 512) {
    f(std::integral_constant<int, 128>{});
  } else {
    f(std::integral_constant<int, 32>{});
  }
}

template <typename F>
inline void with_dtype(int dtype, F f) {
  if (dtype == kFloat32) {
    f(float{});
  } else if (dtype == kBFloat16) {
    f(__nv_bfloat16{});
  } else {
    f(__half{});
  }
}

}  // namespace cuda
}  // namespace grpo
