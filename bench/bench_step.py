"""End-to-end GRPO steps of the engine on a preset: tokens/s per phase (generation, reward, logprob passes,
train, weight sync) and overall, tokens/s/GPU, peak memory and step time, warm-up steps excluded.

    python -m bench.bench_step [--preset tiny] [--set key=value ...] [--steps S] [--warmup W] [--threads N]
                               [--quick] [--out CSV]

What is measured: `GRPOEngine(cfg).train_step()` exactly as `grpo train` runs it (the preset's sampler,
loss, micro-batching and weight sync; `--set` applies config overrides, e.g. --set train.prompts_per_step=2).
The first W steps are warm-up (vLLM's first logprobs request compiles a kernel, allocations fault their
pages in, the allocator settles) and are not in the rows; the shape column states W and S. Per measured
step the engine reports `time/<phase>` and `tokens_per_s/<phase>` (completion tokens for generation and
reward, prompt + completion tokens for the passes that read both) and `tokens_per_s/overall` = completion
tokens / step time. tokens/s/GPU = completion tokens / (step time x GPUs); on CPU the row is
`tokens_per_s_per_device` with the CPU counted as one device. Peak memory: on GPU the engine's
max_memory_allocated (reset every step); on CPU the process's resident high-water mark, reset before each
measured step ("5" > /proc/self/clear_refs), so it is the step's peak RSS: model, optimizer state, vLLM's
KV cache pages in use and the step's temporaries, not the start-up. Rows (p20/p50/p80 over the measured
steps) are appended to bench/results/bench_step.csv.
"""
from __future__ import annotations

import argparse
import os
import time

from bench import common  # sets THP_MEM_ALLOC_ENABLE before torch allocates

import torch  # noqa: E402

PHASES = ("generation", "reward", "logprobs", "train", "weight_sync")
QUICK = dict(preset="tiny", steps=2, warmup=1)
FULL = dict(preset="tiny", steps=5, warmup=2)


def reset_peak_rss() -> bool:
    """Resets the process's resident high-water mark (VmHWM) to its current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_steps(preset: str, overrides: list, steps: int, warmup: int, log=print) -> dict:
    """Builds the engine for `preset` + `overrides` and runs warmup + steps train steps. Returns the config,
    the engine's description of the workload, and the metrics of each measured step (with the
    background CPU load of other processes during it)."""
    from grpo.config import resolve_config
    from grpo.engine import GRPOEngine

    cfg = resolve_config(preset, overrides=list(overrides) + [f"train.steps={warmup + steps}"])
    t0 = time.perf_counter()
    engine = GRPOEngine(cfg, run_dir=None)
    startup = time.perf_counter() - t0
    log(f"== step suite: preset {cfg.preset}, model {engine.model_path.name}, start-up {startup:.1f} s; "
        f"{warmup} warm-up step(s) then {steps} measured")
    measured = []
    try:
        for i in range(warmup + steps):
            cpu = engine.device.type == "cpu"
            if cpu and i >= warmup:
                reset_peak_rss()
            meter = common.LoadMeter()
            m = engine.train_step()
            m["background"] = meter.others()
            tag = "warm-up" if i < warmup else "measured"
            log(f"   step {i + 1} ({tag}): {m['time/step']:.2f} s, {m.get('tokens/completion', 0)} completion tokens, "
                f"{m.get('tokens_per_s/overall', 0):.1f} tok/s, other processes {100 * m['background']:.0f}% of CPUs")
            if i >= warmup:
                measured.append(m)
    finally:
        close = getattr(engine.sampler, "close", None)
        if close is not None:
            close()
    gpus = torch.cuda.device_count() if engine.device.type == "cuda" else 0
    return dict(cfg=cfg, model=engine.model_path.name, startup=startup, steps=measured, warmup=warmup, gpus=gpus,
                device=str(engine.device))


def shape_of(r: dict) -> str:
    """The `shape` column: the workload of one step and how many steps were measured."""
    c = r["cfg"]
    return (f"preset={c.preset},model={r['model']},P={c.train.prompts_per_step},G={c.sampling.group_size},"
            f"max_tokens={c.sampling.max_tokens},sampler={c.sampler.backend},warmup={r['warmup']},"
            f"steps={len(r['steps'])}")


def summarize(r: dict) -> list:
    """(metric, unit, [per-step values]) for every headline number of the measured steps."""
    steps = r["steps"]
    out = []

    def col(key):
        return [float(m[key]) for m in steps if key in m]

    for phase in PHASES:
        if col(f"time/{phase}"):
            out.append((f"time/{phase}", "s", col(f"time/{phase}")))
            out.append((f"tokens_per_s/{phase}", "tok/s", col(f"tokens_per_s/{phase}") or [float("nan")]))
    out.append(("time/step", "s", col("time/step")))
    out.append(("tokens_per_s/overall", "tok/s", col("tokens_per_s/overall")))
    per = [m["tokens/completion"] / (m["time/step"] * max(1, r["gpus"])) for m in steps]
    out.append(("tokens_per_s_per_gpu" if r["gpus"] else "tokens_per_s_per_device", "tok/s", per))
    out.append(("tokens_per_s/prompt_and_completion", "tok/s",
                [(m["tokens/completion"] + m["tokens/prompt"]) / m["time/step"] for m in steps]))
    out.append(("peak_memory", "GB", col("peak_memory_gb")))
    out.append(("tokens/completion", "tokens", col("tokens/completion")))
    out.append(("tokens/prompt", "tokens", col("tokens/prompt")))
    out.append(("background_cpu_load", "%", [100 * m["background"] for m in steps]))
    return out


def record(sink, r: dict) -> list:
    """Queues one row per metric (p20/p50/p80 over the measured steps); returns the summary lines."""
    c = r["cfg"]
    backend = f"{c.sampler.backend}+{c.train.backend}"
    dtype = c.model.dtype
    shape = shape_of(r)
    lines = []
    for metric, unit, xs in summarize(r):
        xs = [x for x in xs if x == x]  # a phase that did not run in a step has no rate (NaN)
        q = common.quantiles(xs) if xs else (None, None, None)
        sink.add("grpo_step", "grpo", backend, dtype, shape, metric, unit, *q)
        lines.append((metric, unit, q))
    return lines


def print_lines(shape: str, lines: list) -> None:
    """The suite's table: metric, p20 / p50 / p80."""
    print(f"\n{shape}")
    print(f"{'metric':38s} {'unit':>7s} {'p20':>11s} {'p50':>11s} {'p80':>11s}")
    for metric, unit, q in lines:
        vals = " ".join(f"{x:11.4g}" if x is not None else f"{'nan':>11s}" for x in q)
        print(f"{metric:38s} {unit:>7s} {vals}")


def parse_args(argv=None):
    """Command line -> namespace."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=None, help="engine preset (default: tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable (e.g. --set train.prompts_per_step=2)")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default 5, quick 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps, not measured (default 2, quick 1)")
    p.add_argument("--quick", action="store_true", help="tiny preset, 1 warm-up + 2 measured steps")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--out", default=None, help="CSV to append to (default bench/results/bench_step.csv)")
    a = p.parse_args(argv)
    base = QUICK if a.quick else FULL
    a.preset = a.preset or base["preset"]
    a.steps = a.steps if a.steps is not None else base["steps"]
    a.warmup = a.warmup if a.warmup is not None else base["warmup"]
    if a.steps < 1 or a.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    return a


def main(argv=None) -> list:
    """Runs the steps, appends the rows, prints the table; returns the rows written."""
    a = parse_args(argv)
    threads = common.set_threads(a.threads)
    if a.threads:  # vLLM binds its OpenMP threads itself: give it the same cores
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", f"0-{threads - 1}")
    device = common.default_device()
    sink = common.CsvSink("bench_step", "step", device, a.out)
    try:
        import transformers
        sink.fixed["versions"] += f"; transformers {transformers.__version__}"
        import vllm
        sink.fixed["versions"] += f"; vllm {vllm.__version__}"
    except ImportError:
        pass
    print(f"device: {common.device_name(device)}  threads: {threads}  {sink.fixed['versions']}")
    print(common.busy_note(), flush=True)
    r = run_steps(a.preset, a.overrides, a.steps, a.warmup)
    lines = record(sink, r)
    rows = list(sink.rows)
    sink.flush()
    print_lines(shape_of(r), lines)
    print(f"(warm-up: {a.warmup} step(s) excluded; start-up {r['startup']:.1f} s not counted)")
    print(common.busy_note())
    print(f"appended {len(rows)} rows to {sink.path}")
    return rows


if __name__ == "__main__":
    main()
