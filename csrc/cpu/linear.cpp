// y (M, N) = x (M, K) · w (N, K)ᵀ + bias on CPU, reading the weight in the row-major layout torch keeps
// (no packed copy). For the few rows of a decode step (M = the sequences in flight) a GEMM is a stream over
// the weight, read once while x stays in L1/L2. So an in-place weight update is a plain copy into that
// tensor, with nothing to re-pack (vLLM's oneDNN path keeps only a packed copy and re-creates it on every
// reload). Two tilings: dot-product tiles (each weight row dotted with x rows; bf16/fp16, and fp32 up to
// kDotRows rows, where the weight stream sets the pace) and, for fp32 past that, broadcast tiles (each weight
// element times two vectors of x rows, over x transposed once per call), with dot-product tiles for a short
// last block of rows.
#include <algorithm>
#include <vector>

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

// One float broadcast to every lane straight from memory: a load-port instruction. splat(*p) became
// vaddss (+0) and a register vbroadcastss, a shuffle on the port of the second FMA unit, per weight element.
inline vf vbroadcast(const float* p) {
#if defined(__AVX512F__) || defined(__AVX__)
  vf v;
  asm("vbroadcastss (%1), %0" : "=v"(v) : "r"(p));
  return v;
#else
  return splat(*p);
#endif
}

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

// fp32 past kDotRows rows: x is transposed once per call into xt, in blocks of kMB rows: block b (rows
// m0 = kMB b ..) holds (K, kMB) floats at xt + m0 K (zero lanes past M). The weight is then read as it is
// stored, each element once per row block, as a broadcast scalar against x vectors: acc[j][v] (lanes = x
// rows) += xt[k][v] * w[n0 + j][k]. No horizontal sums, no weight packing, and each k-step reads two x
// vectors (128 B from L1/L2) where the dot-product tile re-reads kRM x rows. A last block of at most
// kDotRows rows runs dot-product tiles instead (dot_tiles).
constexpr int kMB = 2 * kW;               // x rows per block (two vectors)
constexpr int kNB = kW == 16 ? 12 : 6;    // weight rows per tile: 2 kNB accumulators (+ 2 x vectors)
// Each output sums kKC products in a register chain, then adds that into its running sum (in memory): a
// k-order chain over all of K (576) was 2.7x torch's fp64 error, past DESIGN.md's rule; chains of 256
// still failed it for 6 of 2100 random cases (K = 129 in one chain, N = 7: few outputs, so torch's largest
// error is small); chains of 64 failed none, at ~3% of the time of a 100M model's step at M = 32 and 64
// (2-core Zen 4).
constexpr int64_t kKC = 64;
// Prefetch distance along a weight row, elements: 64 (4 lines) beat 128 and 256 on the 2-core Xeon (a 100M
// model's decode-step GEMMs at M = 8 and 32, weights streamed from memory).
constexpr int64_t kPF = 64;
// A call, or the last block of a call, with at most this many rows of x runs dot-product tiles: a
// broadcast tile costs the FMAs of a whole block however few of its rows are stored, a dot-product tile
// those of its rows. On a 2-core Zen 4 (a 100M model's decode-step GEMMs, weights streamed from memory)
// the two tilings ran alike at 32 rows, dot-product tiles took 24.4 ms at 20 rows against 34.4, and M = 36
// went from 55.2 to 40.4 ms; on a 2-core AVX-512 Xeon broadcast tiles were 1.15x faster at 32.
constexpr int64_t kDotRows = 3 * kMB / 4;
static_assert(kDotRows >= kMB - kW, "a broadcast block must fill both of its x vectors' worth of rows");

void transpose_x(const LinearParams& p, float* xt, int64_t k0, int64_t k1) {
  const float* x = static_cast<const float*>(p.x);
  for (int64_t m0 = 0; m0 < p.M; m0 += kMB) {
    const int64_t rows = std::min<int64_t>(kMB, p.M - m0);
    if (rows <= kDotRows) break;  // the last block, read as stored by dot_tiles
    float* blk = xt + m0 * p.K;
    for (int64_t k = k0; k < k1; ++k) {
      float* o = blk + k * kMB;
      for (int64_t i = 0; i < rows; ++i) o[i] = x[(m0 + i) * p.ldx + k];
      for (int64_t i = rows; i < kMB; ++i) o[i] = 0.0f;
    }
  }
}

#if defined(__AVX512F__)
// Four rows (b, b + s, b + 2s, b + t with t = 3s: one base register and two index registers) x two x
// vectors. gcc gives each of a tile's 12 row pointers a register of its own and spills four of them,
// reloading them at every k-step (12x2 tiles ran at ~110 GFLOP/s a core from L2 against ~150 for this
// asm); an asm block names its accumulators as operands, at most 16 of the 30 operands gcc allows (a "+"
// operand counts twice).
#define GRPO_BCAST(ADDR) "vbroadcastss " ADDR ", %%zmm29\n\t"
#define GRPO_FMA(X, ACC) "vfmadd231ps %[" X "], %%zmm29, %" ACC "\n\t"
#define GRPO_ROWS4_X2(A)                                                                                      \
  GRPO_BCAST("(%[b])") GRPO_FMA("x0", "0") GRPO_FMA("x1", "1")                                                 \
  GRPO_BCAST("(%[b],%[s],1)") GRPO_FMA("x0", "2") GRPO_FMA("x1", "3")                                          \
  GRPO_BCAST("(%[b],%[s],2)") GRPO_FMA("x0", "4") GRPO_FMA("x1", "5")                                          \
  GRPO_BCAST("(%[b],%[t],1)") GRPO_FMA("x0", "6") GRPO_FMA("x1", "7")                                          \
  : "+v"(A[0][0]), "+v"(A[0][1]), "+v"(A[1][0]), "+v"(A[1][1]), "+v"(A[2][0]), "+v"(A[2][1]), "+v"(A[3][0]),  \
    "+v"(A[3][1])

// acc[j][v] += xb[k][v] * w[j][k] for k in [k0, k1): 12 weight rows at b0 + j s bytes (b0: row 0 at k = 0),
// xb the block's (K, 32) transposed x. Every 64-byte line of a row, the line kPF elements on is prefetched
// (past K: the same row of the next tile, which starts 12 rows on).
inline void steps_12(vf (&acc)[12][2], const float* xb, const char* b0, int64_t s, int64_t K, int64_t k0,
                     int64_t k1) {
  typedef vf Acc4[2];
  const int64_t t = 3 * s;
  for (int64_t k = k0; k < k1; ++k) {
    const char* b = b0 + 4 * k;
    if (k % 16 == 0) {
      const char* q = k + kPF < K ? b + 4 * kPF : b0 + 12 * s + 4 * (k + kPF - K);
      for (int j = 0; j < 12; ++j) __builtin_prefetch(q + j * s, 0, 3);
    }
    const vf x0 = vload(xb + 32 * k), x1 = vload(xb + 32 * k + 16);
    for (int g = 0; g < 3; ++g) {
      Acc4* a = reinterpret_cast<Acc4*>(&acc[4 * g]);
      const char* bg = b + 4 * g * s;
      asm volatile(GRPO_ROWS4_X2(a) : [x0] "v"(x0), [x1] "v"(x1), [b] "r"(bg), [s] "r"(s), [t] "r"(t),
                   "m"(*(const char(*)[])bg) : "xmm29");
    }
  }
}
#undef GRPO_ROWS4_X2
#undef GRPO_FMA
#undef GRPO_BCAST
#endif

// steps_12 in C++, for any row pointers (the tail tile repeats row N - 1) and any ISA: acc[j][v] +=
// xb[k][v] * wr[j][k] for k in [k0, k1), with the same prefetch.
inline void steps_rows(vf (&acc)[kNB][2], const float* xb, const float* const (&wr)[kNB], const LinearParams& p,
                       int64_t k0, int64_t k1) {
  for (int64_t k = k0; k < k1; ++k) {
    if (k % 16 == 0) {  // one 64-byte line per row: fetch the line kPF elements on (the next tile's past K)
      const int64_t a = k + kPF;
      for (int j = 0; j < kNB; ++j) __builtin_prefetch(a < p.K ? wr[j] + a : wr[j] + kNB * p.ldw + (a - p.K), 0, 3);
    }
    const vf x0 = vload(xb + k * kMB), x1 = vload(xb + k * kMB + kW);
    for (int j = 0; j < kNB; ++j) {
      const vf s = vbroadcast(wr[j] + k);
      acc[j][0] += x0 * s;
      acc[j][1] += x1 * s;
    }
  }
}

// One tile: the block's kMB x rows (m0.., `rows` of them stored) against kNB weight rows (n0..; rows past
// N repeat row N - 1, unstored). Sums in k order, fp32, one rounding: bias added at the store.
inline void bcast_tile(const LinearParams& p, const float* xb, int64_t m0, int64_t rows, int64_t n0) {
  constexpr int NB = kNB;
  const float* w = static_cast<const float*>(p.w);
  const float* wr[NB];
  for (int j = 0; j < NB; ++j) wr[j] = w + std::min<int64_t>(n0 + j, p.N - 1) * p.ldw;
  vf sum[NB][2], acc[NB][2];
  for (int j = 0; j < NB; ++j) sum[j][0] = sum[j][1] = splat(0.0f);
  for (int64_t k0 = 0; k0 < p.K; k0 += kKC) {
    for (int j = 0; j < NB; ++j) acc[j][0] = acc[j][1] = splat(0.0f);
    const int64_t k1 = std::min<int64_t>(p.K, k0 + kKC);
#if defined(__AVX512F__)
    if (n0 + NB <= p.N)  // rows evenly spaced (no repeated last row)
      steps_12(acc, xb, reinterpret_cast<const char*>(wr[0]), 4 * p.ldw, p.K, k0, k1);
    else
#endif
      steps_rows(acc, xb, wr, p, k0, k1);
    for (int j = 0; j < NB; ++j) {
      sum[j][0] += acc[j][0];
      sum[j][1] += acc[j][1];
    }
  }
  const float* bias = static_cast<const float*>(p.bias);
  float* y = static_cast<float*>(p.y);
  const int nb = (int)std::min<int64_t>(NB, p.N - n0);
  for (int j = 0; j < nb; ++j) {
    const float b = bias ? bias[n0 + j] : 0.0f;
    for (int i = 0; i < rows; ++i) y[(m0 + i) * p.ldy + n0 + j] = sum[j][i / kW][i % kW] + b;
  }
}

// The last block's rows (m0.., at most kDotRows) against the tile's kNB weight rows, which the broadcast
// tiles of the blocks before it just read (in L1/L2): dot-product tiles, whose vectors run along K.
void dot_tiles(const LinearParams& p, int64_t m0, int64_t n0) {
  LinearParams q = p;
  q.N = std::min<int64_t>(p.N, n0 + kNB);  // stop at this tile's rows: the next tile is another thread's
  NextRows none;  // prefetching the next tile's rows here measured no faster (Zen 4, M = 36)
  const int64_t m_full = p.M - (p.M - m0) % kRM;
  for (int64_t n = n0; n < q.N; n += kRN) {
    for (int64_t m = m0; m < m_full; m += kRM) tile<float, kRM>(q, m, n, none);
    if (m_full < p.M) tail<float, kRM - 1>(q, m_full, n, none);
  }
}

void run_f32(const LinearParams& p, int num_threads) {
  thread_local std::vector<float> buf;  // the calling thread's; every OpenMP thread reads it
  buf.resize(p.M * p.K + kMB * p.K);
  float* xt = buf.data();
  const int64_t n_tiles = (p.N + kNB - 1) / kNB;
#pragma omp parallel num_threads(num_threads) if (p.M * p.N * p.K > 32768)
  {
#pragma omp for schedule(static)
    for (int64_t k0 = 0; k0 < p.K; k0 += 64) transpose_x(p, xt, k0, std::min<int64_t>(p.K, k0 + 64));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < n_tiles; ++t) {
      const int64_t n0 = t * kNB;
      for (int64_t m0 = 0; m0 < p.M; m0 += kMB) {
        const int64_t rows = std::min<int64_t>(kMB, p.M - m0);
        if (rows <= kDotRows) dot_tiles(p, m0, n0);
        else bcast_tile(p, xt + m0 * p.K, m0, rows, n0);
      }
    }
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
    // fp32 past kDotRows rows of x: broadcast tiles; fewer rows would leave lanes of a broadcast tile's
    // x vectors empty, and there the weight stream sets the pace, which the dot-product tiles keep up with.
    case kFloat32: return p.M > kDotRows ? run_f32(p, num_threads) : run<float>(p, num_threads);
    case kBFloat16: return run<bf16_t>(p, num_threads);
    default: return run<f16_t>(p, num_threads);
  }
}

}  // namespace cpu
}  // namespace grpo
