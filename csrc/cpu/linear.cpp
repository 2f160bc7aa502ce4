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

// Streams the next tile's weight rows toward L2 while this tile computes, spread evenly over the tile's
// k-steps in all its row-block passes. At decode sizes the kernel streams the weight once; on a 2-core
// Zen 4 the hardware prefetcher alone left bandwidth unused (a standalone copy of this kernel on a 100M
// model's step: +40% at M = 8, +14% at M = 32, unchanged at M = 900); on a 2-core AVX-512 Xeon the same
// step measured alike with and without (bench/README.md, "Sampler").
struct NextRows {
  const char* row[kRN];
  int rows = 0;        // rows of the next tile (0 at the last tile)
  int64_t lines = 0;   // 64-byte lines per row
  int64_t per_step = 0;
  int r = 0;
  int64_t l = 0;

  template <typename T>
  static NextRows make(const LinearParams& p, int64_t n0, int64_t passes) {
    NextRows n;
    const int64_t steps = passes * (p.K / kW);
    const int64_t rows = std::min<int64_t>(kRN, p.N - n0 - kRN);
    if (rows <= 0 || steps == 0) return n;
    n.rows = (int)rows;
    for (int j = 0; j < n.rows; ++j) n.row[j] = (const char*)((const T*)p.w + (n0 + kRN + j) * p.ldw);
    n.lines = ((int64_t)sizeof(T) * p.K + 63) / 64;
    n.per_step = (rows * n.lines + steps - 1) / steps;
    return n;
  }
  inline void step() {
    for (int64_t i = 0; i < per_step && r < rows; ++i) {
      __builtin_prefetch(row[r] + l * 64, 0, 2);  // prefetcht1: into L2, not L1, where the tile's rows live
      if (++l == lines) { l = 0; ++r; }
    }
  }
};

// A vector loaded into a register by one instruction that the compiler cannot fold into the FMAs using it
// (folded, a tile would load each x and w vector once per FMA). opaque(vload()) did this too, but with the
// tile's 29 live vectors gcc 12 bounced 4 of the 6 w vectors of every k-step through the stack (a 64-byte
// store and reload each). bf16/fp16 loads convert, which no FMA folds.
inline vf vload_reg(const float* p) {
#if defined(__AVX512F__)
  vf v;
  asm("vmovups (%1), %0" : "=v"(v) : "r"(p));
  return v;
#elif defined(__AVX__)
  vf v;
  asm("vmovups (%1), %0" : "=x"(v) : "r"(p));
  return v;
#else
  return opaque(vload(p));
#endif
}
inline vf vload_reg(const bf16_t* p) { return vload(p); }
inline vf vload_reg(const f16_t* p) { return vload(p); }

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
inline void tile(const LinearParams& p, int64_t m0, int64_t n0, NextRows& next) {
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
    // vload_reg(): each vector is loaded once into a register; left alone, gcc folds a load into every FMA
    // that uses it (32 loads per 16 FMAs instead of 8, and the tile runs at half the FMA rate)
    vf xv[MB];
    next.step();
    for (int i = 0; i < MB; ++i) xv[i] = vload_reg(xr[i] + k);
    for (int j = 0; j < kRN; ++j) {
      const vf wv = vload_reg(wr[j] + k);
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
void tail(const LinearParams& p, int64_t m0, int64_t n0, NextRows& next) {
  if constexpr (MB > 0) {
    if (p.M - m0 == MB) return tile<T, MB>(p, m0, n0, next);
    tail<T, MB - 1>(p, m0, n0, next);
  }
}

template <typename T>
void run(const LinearParams& p, int num_threads) {
  const int64_t n_tiles = (p.N + kRN - 1) / kRN;
  const int64_t m_full = p.M - p.M % kRM;
  const int64_t passes = (p.M + kRM - 1) / kRM;
  // Each thread owns a contiguous range of weight rows (one pass over its share of the weight); a tile's
  // kRN rows are reused from L1 for every row block of x.
#pragma omp parallel for schedule(static) num_threads(num_threads) if (n_tiles > 1 && p.M * p.N * p.K > 32768)
  for (int64_t t = 0; t < n_tiles; ++t) {
    const int64_t n0 = t * kRN;
    NextRows next = NextRows::make<T>(p, n0, passes);
    for (int64_t m0 = 0; m0 < m_full; m0 += kRM) tile<T, kRM>(p, m0, n0, next);
    if (m_full < p.M) tail<T, kRM - 1>(p, m_full, n0, next);
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
