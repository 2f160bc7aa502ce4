"""The benchmark CLI and the profiler, end to end on the tiny model (no test asserts a speed):

- `python -m bench --quick` (kernels, step, peer suites) writes CSVs with the fixed schema and nonzero rows,
  a summary and a plot; the peer suite skips cleanly when TRL cannot be imported (made so for real: a
  sitecustomize on PYTHONPATH makes `import trl` fail in the bench processes, whether or not TRL is
  installed in this environment);
- `grpo bench` hands its arguments to `python -m bench`;
- `grpo profile` writes a loadable Chrome trace that contains the engine's phase ranges and our ops.

The step and profile runs use the TorchSampler (sampler.backend=torch) to stay fast; the vLLM engine path
is covered by tests/test_engine.py. The kernels suite runs with --no-compile (a cold torch.compile would
take most of the time budget).
"""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["suite", "op", "provider", "backend", "dtype", "shape", "metric", "unit", "p20", "p50", "p80",
           "device", "threads", "versions", "git_rev", "timestamp"]  # bench/common.py COLUMNS, the fixed schema

BLOCK_TRL = '''
import importlib.abc, sys
class _NoTRL(importlib.abc.MetaPathFinder):
    """Makes `import trl` fail, as on a machine without the optional extra."""
    def find_spec(self, name, path=None, target=None):
        if name == "trl" or name.startswith("trl."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, _NoTRL())
'''


def _env(tmp_path: Path, block_trl: bool = False) -> dict:
    env = dict(os.environ, GRPO_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="2")
    if block_trl:
        site = tmp_path / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(BLOCK_TRL)
        env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _run(cmd, env, timeout=300) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (f"{cmd} exited {r.returncode}\n--- stdout\n{r.stdout[-4000:]}\n"
                               f"--- stderr\n{r.stderr[-4000:]}")
    return r


def _read(path: Path) -> list:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        assert header == COLUMNS, f"{path.name}: header {header}"
        rows = [dict(zip(header, row)) for row in reader]
    for i, row in enumerate(rows):
        assert len(row) == len(COLUMNS) and all(row[c] != "" for c in ("suite", "op", "provider", "metric", "unit")), \
            f"{path.name} row {i}: {row}"
        for q in ("p20", "p50", "p80"):
            float(row[q])  # a number or "nan"
    return rows


def test_bench_quick_suites_and_peer_skip(tmp_path):
    """kernels + step + peer in --quick mode: schema, rows, summary, plot; peer skipped without TRL."""
    env = _env(tmp_path, block_trl=True)
    probe = subprocess.run([sys.executable, "-c", "import trl"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked by the test" in probe.stderr  # the simulation holds
    results = tmp_path / "results"
    r = _run([sys.executable, "-m", "bench", "--suite", "kernels,step,peer", "--quick", "--no-compile",
              "--results", str(results), "--set", "sampler.backend=torch"], env, timeout=600)
    out = results / "quick"
    files = {p.name: _read(p) for p in out.glob("*.csv")}
    for name in ("bench_loss.csv", "bench_fused_linear.csv", "bench_advantages.csv", "bench_step.csv",
                 "bench_peer.csv"):
        assert files.get(name), f"no rows in {name}; files: {sorted(files)}\n{r.stdout[-3000:]}"
    loss = files["bench_loss.csv"]
    assert {row["op"] for row in loss} >= {"grpo_loss", "token_logprobs", "token_logprobs_entropy", "memcpy"}
    assert all(row["provider"] not in ("trl", "compile") for row in loss)  # TRL blocked, --no-compile
    bw = [row for row in loss if row["metric"] == "bandwidth" and row["op"] != "memcpy"]
    assert bw and all(float(row["p50"]) > 0 for row in bw)
    step = {row["metric"]: row for row in files["bench_step.csv"]}
    for metric in ("time/generation", "time/train", "time/step", "tokens_per_s/overall", "tokens_per_s_per_device",
                   "peak_memory"):
        assert metric in step and float(step[metric]["p50"]) > 0, metric
    assert "warmup=1" in step["time/step"]["shape"]  # the excluded warm-up is stated
    peer = files["bench_peer.csv"]
    assert [row["metric"] for row in peer] == ["skipped"] and peer[0]["unit"] == "trl not installed"
    assert "peer suite SKIPPED" in r.stdout and "pip install trl" in r.stdout
    summary = (out / "SUMMARY-kernels-step-peer.md").read_text()
    assert "## kernels" in summary and "## step" in summary and "skipped" in summary
    assert (out / "plots-kernels-step-peer" / "kernels_bandwidth.png").stat().st_size > 0


def test_tune_triton_dry_run_on_the_interpreter(tmp_path):
    """bench/tune_triton.py under TRITON_INTERPRET=1 on a tiny shape: every tile (hints and stages too) is
    checked against the default tile (max |d| printed, 0 up to rounding order) and gets time rows."""
    env = dict(_env(tmp_path), TRITON_INTERPRET="1")
    out = tmp_path / "tune.csv"
    r = _run([sys.executable, "-m", "bench.tune_triton", "--device", "cpu", "--shape", "4x300", "--tiles",
              "64x1,128x2x2,256x1hr", "--reps", "1", "--out", str(out)], env)
    rows = _read(out)
    for op in ("grpo_loss", "token_logprobs"):
        got = {row["provider"] for row in rows if row["op"] == op and row["metric"] == "time"}
        assert got == {"triton[default]", "triton[64x1]", "triton[128x2x2]", "triton[256x1hr]"}, got
    diffs = [float(line.split()[-1]) for line in r.stdout.splitlines() if line.strip().startswith(("64x1", "256x1hr"))]
    assert len(diffs) == 4 and max(diffs) < 1e-5, r.stdout


def test_triton_resources_compiles_for_sm90_without_a_gpu(tmp_path):
    """bench/triton_resources.py: the three row kernels compile ahead of time for sm_90 here (no GPU), report
    registers and no spills, and with 16-divisible strides their logits loads are 16-byte vectors."""
    env = {k: v for k, v in _env(tmp_path).items() if k != "TRITON_INTERPRET"}
    r = _run([sys.executable, "-m", "bench.triton_resources", "--tiles", "4096x4,2048x2rp"], env)
    kernels = (["logprobs"], ["softmax_grad"], ["loss"])
    rows = [line.split() for line in r.stdout.splitlines() if line.split()[:1] in kernels]
    assert len(rows) == 6, r.stdout
    for row in rows:
        regs, local = int(row[2]), int(row[6])
        assert 0 < regs <= 255 and local == 0, row
        assert any(op.startswith("ld.global.v4.b32x") for op in row[8:]), row


def test_grpo_bench_delegates_to_python_m_bench(tmp_path):
    """`grpo bench ARGS` is `python -m bench ARGS` run from the repository root."""
    r = _run([sys.executable, "-m", "grpo.cli", "bench", "--help"], _env(tmp_path), timeout=120)
    assert "--suite" in r.stdout and "kernels" in r.stdout and "peer" in r.stdout


def test_grpo_profile_trace_has_phase_ranges(tmp_path):
    """`grpo profile` writes a loadable Chrome trace with the phase ranges, our op names, and the tables."""
    out = tmp_path / "prof"
    r = _run([sys.executable, "-m", "grpo.cli", "profile", "--preset", "tiny", "--steps", "1", "--warmup", "0",
              "--out", str(out), "sampler.backend=torch"], _env(tmp_path), timeout=300)
    trace = json.loads((out / "trace.json").read_text())
    names = {ev.get("name") for ev in trace["traceEvents"]}
    for phase in ("generation", "reward", "train", "weight_sync"):
        assert f"grpo/{phase}" in names, f"grpo/{phase} not in the trace"
    assert "grpo::fused_linear_grpo_loss" in names  # our op under its registered name
    phases = json.loads((out / "phases.json").read_text())
    assert set(phases) >= {"generation", "train"} and phases["train"]["count"] == 1
    top = json.loads((out / "top_kernels.json").read_text())
    assert top and all({"name", "calls", "self_us", "pct"} <= set(row) for row in top)
    assert "Self CPU time total" in (out / "top_kernels.txt").read_text() or torch_has_cuda()
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert metrics and "time/generation" in metrics[-1] and "tokens_per_s/overall" in metrics[-1]
    assert "top kernels" in r.stdout


def torch_has_cuda() -> bool:
    """Whether a GPU is visible (the top-kernels table then sorts by device time)."""
    import torch
    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
