// CUDA: the GRPO loss head (per sequence) and the fused token-level loss (per row: statistics, head and,
// when asked, dlogits in one launch). C++ twin: csrc/cpu/loss.cpp; row passes in common.cuh.
#include <algorithm>
#include <map>
#include <mutex>
#include <utility>

#include "../params.h"
#include "common.cuh"
#include "kernels.h"

namespace grpo {
namespace cuda {

// head_sequence (grpo_math.h) with its three token loops spread over the kThreads lanes of a sequence:
// the per-token arithmetic is the same expressions in the same order; only the sequence sums (masked
// log-ratio and IS log-ratio sums and the token count, then the seq-ratio gradient accumulator) are
// reduced as a tree in double, so they can differ from the serial sums in the last bits of a double,
// not in the floats derived from them (short of a rounding tie). Token-level configurations skip them.
template <int kThreads>
__global__ void __launch_bounds__(Slots<kThreads>::kBlock) loss_head_kernel(const LossHeadParams p) {
  using S = Slots<kThreads>;
  const int lane = S::lane();
  for (int64_t b = S::first(); b < p.B; b += S::stride()) {
    const int64_t base = b * p.T;
    SeqFactors f{1.0f, 1.0f, 1.0f};  // token-level ratio and IS: head_token reads none of these
    if (head_seq_ratio(p) || head_seq_is(p)) {
      double sums[3] = {0.0, 0.0, 0.0};
      for (int64_t t = lane; t < p.T; t += kThreads) head_sums_add(p, base + t, sums);
      group_sum<kThreads>(sums);
      f = head_seq_factors(p, sums);
    }
    double acc[1] = {0.0};
    for (int64_t t = lane; t < p.T; t += kThreads) acc[0] += head_token(p, base + t, p.advantages[b], f);
    if (head_seq_ratio(p)) {  // each lane adds to the g_logp it wrote itself: no barrier needed for those
      group_sum<kThreads>(acc);
      const float scale = (float)acc[0] * f.r_seq / f.n_cl;
      for (int64_t t = lane; t < p.T; t += kThreads) p.g_logp[base + t] += scale * p.mask[base + t];
    }
  }
}

// The token head's per-token inputs besides logp: the target's raw logit and the row's old / ref / sampling
// logprobs, advantage and weight. Loaded by one lane before the row pass (and before any lane writes the
// row: dlogits may alias it), consumed after it.
struct HeadIn {
  float x_t = 0.0f, old = 0.0f, ref = 0.0f, samp = 0.0f, A = 0.0f, coef = 0.0f;
};

template <typename T>
__device__ __forceinline__ HeadIn load_head_in(const LossHeadParams& h, const T* row, int64_t target, int64_t n) {
  HeadIn in;
  in.x_t = to_f(row[target]);
  if (h.old_logp) in.old = h.old_logp[n];
  if (h.ref_logp) in.ref = h.ref_logp[n];
  if (h.sampling_logp) in.samp = h.sampling_logp[n];
  in.A = h.advantages[n / h.T];
  in.coef = h.coef[n];
  return in;
}

// token_head with on-policy defaults: old = logp (detached) without old_logp, sampling = old without it.
__device__ __forceinline__ TokenHead run_head(const LossHeadParams& h, const HeadIn& in, float logp) {
  const float old = h.old_logp ? in.old : logp;
  const float samp = h.sampling_logp ? in.samp : old;
  return token_head(h, logp, old, in.ref, samp, in.A, in.coef);
}

// One row per group of lanes: pass 1 (statistics, logp, entropy), the token head on lane 0 exactly as
// csrc/cpu/loss.cpp, g shared with the group, pass 2 (dlogits, no entropy term). Masked rows are skipped.
// One read of the row for the forward, one read + one write for the gradient; dlogits may alias logits.
template <typename T, int kThreads>
__global__ void __launch_bounds__(Slots<kThreads>::kBlock, Slots<kThreads>::kMinBlocks)
    fused_loss_kernel(const FusedLossParams fp) {
  using S = Slots<kThreads>;
  const LogprobParams& lp = fp.lp;
  const LossHeadParams& h = fp.head;
  const int lane = S::lane();
  const int V = (int)lp.V;
  for (int64_t n = S::first(); n < lp.N; n += S::stride()) {
    const T* row = static_cast<const T*>(lp.logits) + n * lp.row_stride;
    if (h.mask[n] == 0.0f) {  // masked (coef 0): not read; zeros as csrc/cpu/loss.cpp skip_masked
      if (lane == 0) {
        lp.logp[n] = 0.0f;
        if (lp.stats) lp.stats[2 * n] = lp.stats[2 * n + 1] = 0.0f;
        if (lp.entropy) lp.entropy[n] = 0.0f;
        h.tok_loss[n] = 0.0f;
        if (h.g_logp) h.g_logp[n] = 0.0f;
      }
      if (fp.dlogits) row_zero<T, kThreads>(static_cast<T*>(fp.dlogits) + n * fp.grad_row_stride, V, lane);
      continue;
    }
    const int64_t target = lp.targets[n];
    HeadIn in;
    if (lane == 0) in = load_head_in(h, row, target, n);
    const RowStats st = row_stats<T, kThreads>(row, V, lane, lp.temperature, lp.entropy != nullptr);
    const float logs = row_logs(st);
    float shared[2] = {0.0f, in.x_t};  // g, x_t
    if (lane == 0) {
      const float logp = target_logp(in.x_t, lp.temperature, st.m, (double)st.s);
      lp.logp[n] = logp;
      if (lp.stats) {
        lp.stats[2 * n] = st.m;
        lp.stats[2 * n + 1] = logs;
      }
      if (lp.entropy) lp.entropy[n] = row_entropy(st);
      const TokenHead th = run_head(h, in, logp);
      h.tok_loss[n] = th.loss;
      if (h.g_logp) h.g_logp[n] = th.g;
      shared[0] = th.g;
    }
    if (fp.dlogits) {
      group_bcast<kThreads>(shared);  // lane 0 read x_t before this point: no lane has written the row yet
      T* out = static_cast<T*>(fp.dlogits) + n * fp.grad_row_stride;
      row_grad<T, kThreads>(row, out, V, lane, (int)target, shared[1], st.m, logs, 0.0f, shared[0], 0.0f,
                            lp.temperature);
    }
  }
}

// The fused loss with each row held on chip (sm_90): a cluster of C blocks per row, each block loads its
// slice of the row into registers once (kR 16-byte vectors a thread), folds them into the block's
// statistics, and the blocks exchange those through distributed shared memory. Every block merges the C
// parts in rank order (the same bits everywhere), runs the token head itself on thread 0 (rank 0 writes the
// per-token outputs) and writes dlogits for its slice from the registers: one read of the logits and one
// write of dlogits from and to memory, where the kernel above reads a long row twice (its second read
// misses L2 once hundreds of 300 KB rows are in flight). Masked rows are neither read nor synchronized.
// Each element is loaded and stored by the same thread and every store comes after the cluster barrier
// that follows all loads (and the head's read of the target), so dlogits may alias logits.
// kPrefetch: a persistent grid whose blocks copy their slice of the cluster's next row into shared memory
// (cp.async, each thread its own slots) while the current row is reduced, exchanged and written.
constexpr int kResThreads = 256;
constexpr int kResPortable = 8;  // the portable cluster size limit; sm_90 allows 16 when asked (non-portable)
constexpr int kResMaxCluster = 16;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
  const uint32_t s = (uint32_t)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_all;" ::: "memory"); }

// The cluster's part of a row between the two passes: this block's statistics `st` (every thread holds the
// same) go to `part`; after the barrier thread 0 merges the C parts in rank order, runs the head (rank 0
// writes the per-token outputs) and leaves g, x_t, m, log s in bc for the block. `pending` tracks the arrive
// whose wait must come before `part` is written again (or the block exits).
__device__ __forceinline__ void cluster_row_head(const FusedLossParams& fp, int64_t n, const HeadIn& in,
                                                 RowStats st, RowStats& part, float (&bc)[4], bool& pending) {
  const LogprobParams& lp = fp.lp;
  const LossHeadParams& h = fp.head;
  if (pending) __cluster_barrier_wait();  // every block has read the previous row's parts
  if (threadIdx.x == 0) part = st;
  __cluster_barrier_arrive();  // release: our part, and every load of the row, come before it
  __cluster_barrier_wait();    // acquire: every block's part is written
  if (threadIdx.x == 0) {
    const unsigned rank = __clusterRelativeBlockRank(), C = __clusterSizeInBlocks();
    RowStats all = row_stats_init();
    for (unsigned r = 0; r < C; ++r)
      all = row_stats_merge(all, *static_cast<const RowStats*>(__cluster_map_shared_rank(&part, r)));
    all = row_stats_final(all);
    const float logs = row_logs(all);
    const float logp = target_logp(in.x_t, lp.temperature, all.m, (double)all.s);
    const TokenHead th = run_head(h, in, logp);
    if (rank == 0) {
      lp.logp[n] = logp;
      if (lp.stats) {
        lp.stats[2 * n] = all.m;
        lp.stats[2 * n + 1] = logs;
      }
      if (lp.entropy) lp.entropy[n] = row_entropy(all);
      h.tok_loss[n] = th.loss;
      if (h.g_logp) h.g_logp[n] = th.g;
    }
    bc[0] = th.g, bc[1] = in.x_t, bc[2] = all.m, bc[3] = logs;
  }
  __cluster_barrier_arrive();  // thread 0 has read the cluster's parts; waited for before `part` changes
  pending = true;
  __syncthreads();  // bc is next written after the next row's cluster barrier, which every thread here
                    // reaches after reading it
}

// Masked row (coef 0): not read; zeros as the kernel above.
template <int kR>
__device__ __forceinline__ void resident_masked_row(const FusedLossParams& fp, int64_t n, uint4* dst, int v0, int v1) {
  if (__clusterRelativeBlockRank() == 0 && threadIdx.x == 0) {
    fp.lp.logp[n] = 0.0f;
    if (fp.lp.stats) fp.lp.stats[2 * n] = fp.lp.stats[2 * n + 1] = 0.0f;
    if (fp.lp.entropy) fp.lp.entropy[n] = 0.0f;
    fp.head.tok_loss[n] = 0.0f;
    if (fp.head.g_logp) fp.head.g_logp[n] = 0.0f;
  }
#pragma unroll
  for (int k = 0; k < kR; ++k) {
    const int i = v0 + (int)threadIdx.x + k * kResThreads;
    if (i < v1) __stcs(dst + i, make_uint4(0u, 0u, 0u, 0u));
  }
}
#endif

template <typename T, int kR, bool kEnt, bool kScaled, bool kPrefetch>
__global__ void __launch_bounds__(kResThreads, kR >= 16 ? 2 : 3)
    resident_loss_kernel(const FusedLossParams fp, int per_block) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr int kN = Vec<T>::kN;
  using S = std::conditional_t<kScaled, DivScale, NoScale>;
  const LogprobParams& lp = fp.lp;
  const S scale = [&] { if constexpr (kScaled) return DivScale(lp.temperature); else return NoScale{}; }();
  const int nvec = (int)(lp.V / kN);
  const int v0 = (int)__clusterRelativeBlockRank() * per_block, v1 = min(v0 + per_block, nvec);  // our vectors
  const auto mine = [&](int k) { return v0 + (int)threadIdx.x + k * kResThreads; };  // k-th vector, < v1
  const auto src_of = [&](int64_t n) {
    return reinterpret_cast<const uint4*>(static_cast<const T*>(lp.logits) + n * lp.row_stride);
  };
  __shared__ RowStats part;          // this block's statistics of the current row, read by the whole cluster
  __shared__ float bc[4];            // g, x_t, m, log s: thread 0 to the block
  extern __shared__ uint4 stage[];   // kPrefetch: this thread's vectors of the next row, at k * 256 + tid
  // The cluster's rows: first, first + stride, ... (special registers, read where needed: no GPRs held)
  const auto stride = [] { return (int64_t)__clusterGridDimInClusters().x; };
  const auto prefetch = [&](int64_t n) {  // unmasked rows only: masked rows are never read
    if (n < lp.N && fp.head.mask[n] != 0.0f) {
#pragma unroll
      for (int k = 0; k < kR; ++k)
        if (mine(k) < v1) cp_async16(&stage[k * kResThreads + threadIdx.x], src_of(n) + mine(k));
    }
    cp_async_commit();
  };
  if constexpr (kPrefetch) prefetch(__clusterIdx().x);
  bool pending = false;  // an arrive of ours whose wait is still due: the cluster may be reading `part`
  for (int64_t n = __clusterIdx().x; n < lp.N; n += stride()) {
    uint4* dst = reinterpret_cast<uint4*>(static_cast<T*>(fp.dlogits) + n * fp.grad_row_stride);
    if (fp.head.mask[n] == 0.0f) {
      if constexpr (kPrefetch) prefetch(n + stride());
      resident_masked_row<kR>(fp, n, dst, v0, v1);
      continue;
    }
    uint4 raw[kR];
    if constexpr (kPrefetch) cp_async_wait_all();  // our copies of this row have landed
#pragma unroll
    for (int k = 0; k < kR; ++k)  // all loads in flight at once: the row is read here and never again
      if (mine(k) < v1) raw[k] = kPrefetch ? stage[k * kResThreads + threadIdx.x] : __ldcs(src_of(n) + mine(k));
    const int64_t target = lp.targets[n];
    HeadIn in;
    if (threadIdx.x == 0) in = load_head_in(fp.head, static_cast<const T*>(lp.logits) + n * lp.row_stride, target, n);
    RowStats st = row_stats_init();
#pragma unroll
    for (int k = 0; k < kR; ++k) {
      if (mine(k) < v1) {
        float x[kN];
        unpack<T>(raw[k], x);
#pragma unroll
        for (int e = 0; e < kN; ++e) x[e] = scale(x[e]);
        stats_push<kEnt>(st, x);
      }
    }
    // Every slot of `stage` has been read into registers and used above: the next row may stream in now.
    if constexpr (kPrefetch) prefetch(n + stride());
    cluster_row_head(fp, n, in, group_merge<kResThreads>(st), part, bc, pending);
    const float g = bc[0];
    const GradRow<false, S> gr((int)target, bc[1], bc[2], bc[3], 0.0f, g, 0.0f, lp.temperature, scale);
#pragma unroll
    for (int k = 0; k < kR; ++k) {
      if (mine(k) < v1) {
        float x[kN];
        if (g == 0.0f) {  // as row_grad: a zero gradient row is zeros, whatever the logits hold
#pragma unroll
          for (int e = 0; e < kN; ++e) x[e] = 0.0f;
        } else {
          unpack<T>(raw[k], x);
          gr.vec(mine(k) * kN, x);
        }
        __stcs(dst + mine(k), pack<T>(x));
      }
    }
  }
  if constexpr (kPrefetch) cp_async_wait_all();  // no copy into our shared memory outlives the block
  if (pending) __cluster_barrier_wait();         // no block leaves while another may still read its `part`
#endif
}

constexpr int64_t kResMinV = 4096;

// The shape for rows of V elements of `dtype` (kernels.h ResidentPlan), whatever the device. policy 1 (the
// default): the smallest slice of 4, 8 or 16 vectors a thread whose cluster of 256-thread blocks covers the
// row within the portable 8 blocks; policy 4, 8 or 16: that slice, in up to 16 blocks (for measurements).
// The row is spread evenly over the blocks. Empty for policy 0, short rows (V < 4096: the kernel above reads
// them twice from cache) and rows that are not whole 16-byte vectors.
ResidentPlan resident_plan_for(int64_t V, int dtype, int policy) {
  ResidentPlan plan;
  const int kN = dtype == kFloat32 ? 4 : 8;
  if (policy == 0 || V < kResMinV || V % kN != 0 || V > kMaxV) return plan;
  const int64_t nvec = V / kN;
  const bool fixed = policy != 1;
  for (int R : {4, 8, 16}) {
    if (fixed && R != policy) continue;
    const int64_t C = (nvec + (int64_t)R * kResThreads - 1) / ((int64_t)R * kResThreads);
    if (C <= (fixed ? kResMaxCluster : kResPortable)) {
      plan.R = R, plan.C = (int)C, plan.per_block = (int)((nvec + C - 1) / C);
      return plan;
    }
  }
  return plan;
}

// resident_plan_for on an sm_90 device (the current one), else empty.
ResidentPlan resident_plan(int64_t V, int dtype, int policy) {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess || major < 9) {
    cudaGetLastError();  // a failed query (no device, no driver) is not the caller's launch error
    return ResidentPlan{};
  }
  return resident_plan_for(V, dtype, policy);
}

bool rows_aligned(const void* rows, int64_t row_stride, int dtype) {
  const int64_t esize = dtype == kFloat32 ? 4 : 2;
  return reinterpret_cast<uintptr_t>(rows) % 16 == 0 && (row_stride * esize) % 16 == 0;
}

bool resident_applies(const FusedLossParams& p, const ResidentPlan& plan) {
  return plan.R != 0 && p.dlogits && rows_aligned(p.lp.logits, p.lp.row_stride, p.lp.dtype) &&
         rows_aligned(p.dlogits, p.grad_row_stride, p.lp.dtype);
}

// How many clusters of C blocks of `kernel` fit on the current device at once (cudaOccupancyMaxActiveClusters;
// past 8 blocks after allowing non-portable sizes; 0: this shape does not fit), asked once per kernel, C and
// device. cfg carries the block size and dynamic shared memory.
template <typename K>
int cluster_slots(K kernel, const cudaLaunchConfig_t& cfg, int C) {
  static std::mutex mu;
  static std::map<std::pair<int, int>, int> known;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) return 0;
  std::lock_guard<std::mutex> lock(mu);
  const auto it = known.find({C, dev});
  if (it != known.end()) return it->second;
  bool ok = C <= kResPortable ||
            cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) == cudaSuccess;
  if (ok && cfg.dynamicSmemBytes > 48 * 1024)
    ok = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)cfg.dynamicSmemBytes) ==
         cudaSuccess;
  int active = 0;
  if (!ok || cudaOccupancyMaxActiveClusters(&active, kernel, &cfg) != cudaSuccess) active = 0;
  cudaGetLastError();  // a refused shape is not the caller's launch error
  known.emplace(std::make_pair(C, dev), active);
  return active;
}

// Launches resident_loss_kernel for `plan`: one row a cluster (grid-stride past 2^31 - 1 blocks), or with
// kPrefetch a persistent grid of as many clusters as fit at once. *launched stays false when the cluster
// shape does not fit (the caller then takes fused_loss_kernel).
template <typename T, int kR, bool kEnt, bool kScaled, bool kPrefetch>
std::string launch_resident(const FusedLossParams& p, const ResidentPlan& plan, cudaStream_t s, bool* launched) {
  auto kernel = resident_loss_kernel<T, kR, kEnt, kScaled, kPrefetch>;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = (unsigned)plan.C, attr[0].val.clusterDim.y = 1, attr[0].val.clusterDim.z = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3((unsigned)plan.C);  // for the occupancy query; set below
  cfg.blockDim = dim3(kResThreads);
  cfg.dynamicSmemBytes = kPrefetch ? (size_t)kR * kResThreads * 16 : 0;
  cfg.stream = s;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const int slots = cluster_slots(kernel, cfg, plan.C);
  if (slots < 1) return "";
  const int64_t cap = kPrefetch ? (int64_t)slots : (int64_t)(2147483647 / plan.C);
  cfg.gridDim = dim3((unsigned)(std::min<int64_t>(p.lp.N, cap) * plan.C));  // a multiple of C
  *launched = true;
  const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, p, plan.per_block);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return std::string(cudaGetErrorString(e)) + " (the rows-on-chip loss kernel; GRPO_ROWS_ON_CHIP=0 avoids it)";
  }
  return launch_error();
}

std::string loss_head(const LossHeadParams& p, void* stream) {
  if (p.B <= 0 || p.T <= 0) return "";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (p.T > 256) {
    loss_head_kernel<256><<<grid_for(p.B, Slots<256>::kPerBlock), Slots<256>::kBlock, 0, s>>>(p);
  } else {  // short sequences: a warp each, four a block
    loss_head_kernel<32><<<grid_for(p.B, Slots<32>::kPerBlock), Slots<32>::kBlock, 0, s>>>(p);
  }
  return launch_error();
}

std::string fused_loss(const FusedLossParams& p, void* stream) {
  if (p.lp.N <= 0) return "";
  if (p.lp.V > kMaxV) return "V exceeds the CUDA kernels' limit of 2^30 elements per row";
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  const ResidentPlan plan = resident_plan(p.lp.V, p.lp.dtype, p.rows_on_chip);
  if (resident_applies(p, plan)) {
    bool launched = false;
    std::string err;
    with_dtype(p.lp.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const bool ent = p.lp.entropy != nullptr, scaled = p.lp.temperature != 1.0;
      const auto go = [&](auto r, auto e, auto sc) {
        constexpr int kR = decltype(r)::value;
        constexpr bool kE = decltype(e)::value, kS = decltype(sc)::value;
        err = p.rows_prefetch ? launch_resident<T, kR, kE, kS, true>(p, plan, s, &launched)
                              : launch_resident<T, kR, kE, kS, false>(p, plan, s, &launched);
      };
      using R4 = std::integral_constant<int, 4>;
      using R8 = std::integral_constant<int, 8>;
      using R16 = std::integral_constant<int, 16>;
      using Y = std::true_type;
      using No = std::false_type;
      const auto with_r = [&](auto e, auto sc) {
        plan.R == 4 ? go(R4{}, e, sc) : plan.R == 8 ? go(R8{}, e, sc) : go(R16{}, e, sc);
      };
      const auto with_sc = [&](auto e) { scaled ? with_r(e, Y{}) : with_r(e, No{}); };
      ent ? with_sc(Y{}) : with_sc(No{});
    });
    if (launched) return err;
  }
  with_dtype(p.lp.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_row_threads(p.lp.V, [&](auto threads) {
      constexpr int kT = decltype(threads)::value;
      fused_loss_kernel<T, kT><<<grid_for(p.lp.N, Slots<kT>::kPerBlock), Slots<kT>::kBlock, 0, s>>>(p);
    });
  });
  return launch_error();
}

}  // namespace cuda
}  // namespace grpo
