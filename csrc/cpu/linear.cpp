// y (M, N) = x (M, K) · w (N, K)ᵀ + bias on CPU, reading the weight in the row-major layout torch keeps
// (no packed copy). For the few rows of a decode step (M = the sequences in flight) a GEMM is a stream over
// the weight: each weight row is read once and dotted with every row of x, which stays in L1/L2. So an
// in-place weight update is a plain copy into that tensor, with nothing to re-pack (vLLM's oneDNN path
// keeps only a packed copy and re-creates it on every reload).
#include <algorithm>

#include "kernels.h"
#include "row.h"

namespace grpo {
namespace cpu {
namespace {

// A tile's kRM x kRN accumulators, kRM x vectors and one w vector fit the 32 zmm registers (16 ymm: 2 x 4).
// 6 x 4, 12 x 2 and 8 x 3 measured alike (1.4-1.6x oneDNN's packed GEMM at M = 8 and 32, 2 cores).
constexpr int kRN = kW == 16 ? 6 : 4;  // weight rows per tile
constexpr int kRM = kW == 16 ? 4 : 2;  // x rows per tile

typedef float vf8 __attribute__((vector_size(32)));
typedef float vf4 __attribute__((vector_size(16)));

// Lane sum by halving (log2(kW) shuffle + add steps): a per-lane loop costs more than the 36 FMAs a
// K = 576 dot product takes.
inline float hsum(vf v) {
#if defined(__AVX512F__)
  vf8 a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
          __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
#else
  vf8 a = v;
#endif
  vf4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  b += __builtin_shufflevector(b, b, 2, 3, 0, 1);
  b += __builtin_shufflevector(b, b, 1, 0, 3, 2);
  return b[0];
}

// One tile: MB rows of x (m0..) against kRN rows of w (n0..; rows past N repeat row N - 1, unstored).
// fp32 accumulation in kW lanes, the K tail in scalars; bias added and y rounded once at the end.
template <typename T, int MB>
inline void tile(const LinearParams& p, int64_t m0, int64_t n0) {
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.w);
  const T* wr[kRN];
  const T* xr[MB];
  for (int j = 0; j < kRN; ++j) wr[j] = w + std::min<int64_t>(n0 + j, p.N - 1) * p.ldw;
  for (int i = 0; i < MB; ++i) xr[i] = x + (m0 + i) * p.ldx;
  vf acc[MB][kRN];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < kRN; ++j) acc[i][j] = splat(0.0f);
  const int64_t kv = p.K - p.K % kW;
  for (int64_t k = 0; k < kv; k += kW) {
    // opaque(): each vector is loaded once into a register; left alone, gcc folds a load into every FMA
    // that uses it (32 loads per 16 FMAs instead of 8, and the tile runs at half the FMA rate)
    vf xv[MB];
    for (int i = 0; i < MB; ++i) xv[i] = opaque(vload(xr[i] + k));
    for (int j = 0; j < kRN; ++j) {
      const vf wv = opaque(vload(wr[j] + k));
      for (int i = 0; i < MB; ++i) acc[i][j] += xv[i] * wv;
    }
  }
  float out[MB][kRN];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < kRN; ++j) out[i][j] = hsum(acc[i][j]);
  for (int64_t k = kv; k < p.K; ++k)
    for (int i = 0; i < MB; ++i)
      for (int j = 0; j < kRN; ++j) out[i][j] += load(xr[i], k) * load(wr[j], k);
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  const int nb = (int)std::min<int64_t>(kRN, p.N - n0);
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < nb; ++j)
      store(y + (m0 + i) * p.ldy, n0 + j, out[i][j] + (bias ? load(bias, n0 + j) : 0.0f));
}

template <typename T, int MB>
void tail(const LinearParams& p, int64_t m0, int64_t n0) {
  if constexpr (MB > 0) {
    if (p.M - m0 == MB) return tile<T, MB>(p, m0, n0);
    tail<T, MB - 1>(p, m0, n0);
  }
}

template <typename T>
void run(const LinearParams& p, int num_threads) {
  const int64_t n_tiles = (p.N + kRN - 1) / kRN;
  const int64_t m_full = p.M - p.M % kRM;
  // Each thread owns a contiguous range of weight rows (one pass over its share of the weight); a tile's
  // kRN rows are reused from L1 for every row block of x.
#pragma omp parallel for schedule(static) num_threads(num_threads) if (n_tiles > 1 && p.M * p.N * p.K > 32768)
  for (int64_t t = 0; t < n_tiles; ++t) {
    const int64_t n0 = t * kRN;
    for (int64_t m0 = 0; m0 < m_full; m0 += kRM) tile<T, kRM>(p, m0, n0);
    if (m_full < p.M) tail<T, kRM - 1>(p, m_full, n0);
  }
}

}  // namespace

void linear(const LinearParams& p, int num_threads) {
  switch (p.dtype) {
    case kFloat32: return run<float>(p, num_threads);
    case kBFloat16: return run<bf16_t>(p, num_threads);
    default: return run<f16_t>(p, num_threads);
  }
}

}  // namespace cpu
}  // namespace grpo
