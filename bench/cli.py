"""`grpo bench` / `python -m bench`: every benchmark suite from one command, a table, CSV rows, a markdown
summary and PNG plots.

    python -m bench [--suite kernels,sampler,step,peer|all] [--quick] [--threads N] [--results DIR]
                    [--presets tiny,default] [--set key=value ...] [--peer-models tiny,default]
                    [--no-compile] [--wait-quiet S] [--no-plots]

Suites (each runs in a fresh process, so vLLM, torch.compile and thread settings of one never leak into
the next; a suite that fails is reported and the others still run):
- kernels: bench_loss (grpo_loss fwd+bwd, token_logprobs, token_logprobs_entropy: ours per backend, the
  torch reference, torch.compile of it, TRL's selective_log_softmax / entropy_from_logits and Liger where
  installed), bench_fused_linear, bench_advantages; ceilings measured in the same run: memcpy bandwidth
  (the bench_loss memcpy rows), on GPU also a bf16 matmul rate (bench_ceilings.csv).
- sampler: bench_sampler (generation tokens/s vLLM vs transformers, weight-sync GB/s vs memcpy).
- step: bench_step per preset (tokens/s per phase and overall, tokens/s/GPU, peak memory, step time).
- peer: bench_peer (TRL's GRPOTrainer vs our engine, alternating; skipped with a message without TRL).

--quick: small shapes and few repetitions, the tiny model only, for a smoke check in about two minutes on
2 CPU cores; its CSVs, summary and plots go to <results>/quick/ so they never mix with full runs. A full run
appends to <results>/*.csv and writes <results>/SUMMARY.md and <results>/plots/*.png (a run of only some
suites: SUMMARY-<suites>.md and plots-<suites>/, so it does not overwrite the summary of a whole run). The
summary and the table show the rows this run appended (read back from the CSVs by their size before it).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from bench import common, report

ORDER = ("kernels", "sampler", "step", "peer")
FILES = {"kernels": ("bench_loss", "bench_fused_linear", "bench_advantages", "bench_ceilings"),
         "sampler": ("bench_sampler",), "step": ("bench_step",), "peer": ("bench_peer",)}
# --quick shapes: two V values (the bandwidth plot needs a line), one dtype, 3 timed rounds
QUICK_LOSS = ["--shapes", "256x8192,256x32000", "--dtypes", "fp32", "--reps", "3", "--warmup", "1", "--retries", "0"]
QUICK_FUSED = ["--shapes", "256x128x8192", "--reps", "3", "--no-memory"]
QUICK_ADV = ["--sizes", "4096x16", "--scales", "group", "--reps", "5", "--calls", "20"]


def csv_path(a, name: str) -> str:
    """Where a benchmark's rows go in this run."""
    return os.path.join(a.out_dir, f"{name}.csv")


def threads_args(a) -> list:
    """--threads N for a benchmark's command line, when this run was given one."""
    return ["--threads", str(a.threads)] if a.threads else []


# --- the suites (each runs inside its own `python -m bench --suite-child NAME` process) ----------------
def kernels_suite(a) -> None:
    """bench_loss, bench_fused_linear, bench_advantages with this run's output files; GPU matmul ceiling."""
    from bench import bench_advantages, bench_fused_linear, bench_loss

    loss = ["--ops", ",".join(bench_loss.OPS), "--out", csv_path(a, "bench_loss"), *threads_args(a),
            "--wait-quiet", str(a.wait_quiet)]
    fused = ["--out", csv_path(a, "bench_fused_linear"), *threads_args(a)]
    adv = ["--out", csv_path(a, "bench_advantages"), *threads_args(a)]
    if a.quick:  # torch.compile of the fused linear reference's backward alone takes ~30 s on 2 cores
        loss, fused, adv = loss + QUICK_LOSS, fused + QUICK_FUSED + ["--quick"], adv + QUICK_ADV
        fused += ["--providers", ",".join(p for p in bench_fused_linear.parse_args([]).providers if p != "compile")]
    if a.no_compile:
        loss += ["--providers", without_compile(bench_loss)]
        adv += ["--providers", without_compile(bench_advantages)]
        if not a.quick:
            fused += ["--providers", without_compile(bench_fused_linear)]
    bench_loss.main(loss)
    bench_fused_linear.main(fused)
    bench_advantages.main(adv)
    if common.default_device() == "cuda":
        matmul_ceiling(a)


def without_compile(module) -> str:
    """A benchmark's default providers minus torch.compile (--no-compile: no C++ compiler, or no time)."""
    return ",".join(p for p in module.parse_args([]).providers if p != "compile")


def matmul_ceiling(a, n: int = 8192) -> None:
    """The GPU's bf16 matmul rate (TFLOP/s of an n x n x n torch.mm), measured in this run."""
    import torch
    x = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ts = common.interleaved({"mm": lambda: torch.mm(x, y)}, "cuda", 10 if not a.quick else 5, 3)["mm"]
    q = [2 * n ** 3 / t / 1e12 for t in reversed(common.quantiles(ts))]
    sink = common.CsvSink("bench_ceilings", "kernels", "cuda", csv_path(a, "bench_ceilings"))
    sink.add("matmul", "torch", "cublas", "bfloat16", f"M=N=K={n}", "throughput", "TFLOP/s", *q)
    sink.flush()
    print(f"bf16 matmul ceiling ({n}^3): p50 {q[1]:.1f} TFLOP/s")


def sampler_suite(a) -> None:
    """bench_sampler (the sampler issue's benchmark): tiny model in --quick, its defaults otherwise."""
    try:
        from bench import bench_sampler
    except ImportError as e:
        raise SystemExit(f"sampler suite: bench/bench_sampler.py is not importable here ({e})") from None
    argv = ["--out", csv_path(a, "bench_sampler"), *threads_args(a)]
    bench_sampler.main(argv + (["--quick", "--models", "tiny"] if a.quick else []))


def step_suite(a) -> None:
    """bench_step once per preset, each in its own process (one vLLM engine per process)."""
    for preset in a.presets:
        cmd = [sys.executable, "-m", "bench.bench_step", "--preset", preset, "--out", csv_path(a, "bench_step"),
               *threads_args(a), *(["--quick"] if a.quick else [])]
        for o in a.overrides:
            cmd += ["--set", o]
        rc = subprocess.call(cmd, cwd=common.ROOT)
        if rc != 0:
            raise SystemExit(f"step suite: preset {preset} failed with exit code {rc}")


def peer_suite(a) -> None:
    """bench_peer (exits 0 with a `skipped` row when TRL is missing)."""
    from bench import bench_peer
    argv = ["--out", csv_path(a, "bench_peer"), *threads_args(a), "--wait-quiet", str(a.wait_quiet)]
    if a.peer_models:
        argv += ["--models", ",".join(a.peer_models)]
    rc = bench_peer.main(argv + (["--quick"] if a.quick else []))
    if rc:
        raise SystemExit(rc)


SUITES = {"kernels": kernels_suite, "sampler": sampler_suite, "step": step_suite, "peer": peer_suite}


# --- the driver ---------------------------------------------------------------------------------------
def child_argv(a, name: str) -> list:
    """The command line of a suite's process: this run's options."""
    argv = [sys.executable, "-m", "bench", "--suite-child", name, "--results", a.results]
    argv += ["--quick"] if a.quick else []
    argv += ["--no-compile"] if a.no_compile else []
    argv += ["--wait-quiet", str(a.wait_quiet)]
    argv += threads_args(a) + ["--presets", ",".join(a.presets)]
    argv += ["--peer-models", ",".join(a.peer_models)] if a.peer_models else []
    for o in a.overrides:
        argv += ["--set", o]
    return argv


def run_suite(a, name: str) -> tuple:
    """Runs one suite's process; returns (its run record, the rows it appended)."""
    paths = [csv_path(a, f) for f in FILES[name]]
    sizes = {p: os.path.getsize(p) if os.path.exists(p) else 0 for p in paths}
    print(f"\n======== suite {name} {'(quick)' if a.quick else ''}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(child_argv(a, name), cwd=common.ROOT)
    seconds = time.perf_counter() - t0
    rows = [r for p in paths for r in report.read_rows(p, sizes[p])]
    skipped = any(r["metric"] == "skipped" for r in rows)
    status = "failed (exit %d)" % rc if rc else ("skipped" if skipped else "ok")
    print(f"======== suite {name}: {status}, {seconds:.0f} s, {len(rows)} rows", flush=True)
    return dict(suite=name, status=status, seconds=seconds, rows=len(rows), rc=rc), rows


def write_outputs(a, runs: list, rows: list) -> str:
    """The markdown summary (and the plots it shows); returns its path."""
    # a run of some suites gets its own file names, so it never overwrites the summary of a run of all
    tag = "" if a.suites == list(ORDER) else "-" + "-".join(a.suites)
    plots = []
    if a.plots and rows:
        try:
            plots = report.make_plots(rows, os.path.join(a.out_dir, "plots" + tag))
        except ImportError as e:  # matplotlib is an engine dependency; say so instead of failing the run
            print(f"(no plots: {e})")
    rel = [os.path.relpath(p, a.out_dir) for p in plots]
    path = os.path.join(a.out_dir, f"SUMMARY{tag}.md")
    with open(path, "w") as f:
        f.write(report.markdown(rows, runs, a.quick, rel))
    return path


def parse_args(argv=None):
    """Command line -> namespace (suite names checked, lists split)."""
    p = argparse.ArgumentParser(prog="grpo bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="all", help=f"comma-separated from {', '.join(ORDER)}, or all (default)")
    p.add_argument("--quick", action="store_true", help="small shapes, tiny model: ~2 min on 2 CPU cores")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every suite (default: all cores)")
    p.add_argument("--results", default=common.RESULTS, help="results folder (default bench/results)")
    p.add_argument("--presets", default=None, help="step suite presets (default: tiny,default; quick: tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="step suite config override, repeatable (e.g. --set sampler.backend=torch)")
    p.add_argument("--peer-models", default=None, help="peer suite models: tiny, default (default: both; quick: tiny)")
    p.add_argument("--no-compile", action="store_true", help="kernels suite without the torch.compile providers")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="shared machine: wait up to S seconds for idle CPUs before each kernels case / peer round")
    p.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    p.add_argument("--suite-child", default=None, choices=ORDER, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.suites = list(ORDER) if a.suite == "all" else [s.strip() for s in a.suite.split(",") if s.strip()]
    for s in a.suites:
        if s not in SUITES:
            p.error(f"--suite: unknown suite {s!r}; expected some of {', '.join(ORDER)} or all")
    a.presets = (a.presets or ("tiny" if a.quick else "tiny,default")).split(",")
    a.peer_models = a.peer_models.split(",") if a.peer_models else None
    a.results = os.path.abspath(a.results)
    a.out_dir = os.path.join(a.results, "quick") if a.quick else a.results
    return a


def main(argv=None) -> int:
    """Runs the chosen suites, then prints the table and writes the summary; 1 when a suite failed."""
    a = parse_args(argv)
    os.makedirs(a.out_dir, exist_ok=True)
    if a.suite_child:
        SUITES[a.suite_child](a)
        return 0
    t0 = time.perf_counter()
    runs, rows = [], []
    for name in a.suites:
        run, new = run_suite(a, name)
        runs.append(run)
        rows += new
    print("\n" + "\n".join(report.table_lines(rows)))
    path = write_outputs(a, runs, rows)
    total = time.perf_counter() - t0
    print("\n" + "  ".join(f"{r['suite']}: {r['status']} ({r['seconds']:.0f} s)" for r in runs))
    print(f"rows: {len(rows)} in {a.out_dir}/*.csv; summary {path}; total {total:.0f} s")
    return 1 if any(r["rc"] for r in runs) else 0
