"""Peer comparison, side by side in one run: TRL's GRPOTrainer vs our engine on the same model, prompts,
G, batch, max completion length, learning rate, beta, clip range and loss aggregation.

    python -m bench.bench_peer [--models tiny,default] [--quick] [--steps S] [--warmup W] [--threads N]
                               [--prompts P] [--group-size G] [--max-tokens T] [--set key=value ...] [--out CSV]

TRL is an optional extra (`pip install trl torch==<the installed torch>`, which keeps the installed torch);
without it the suite prints how to install it, writes a `skipped` row and exits 0.

How it runs: one process per side (bench/peer_sides.py), both alive for the whole comparison, so each has
its own peak memory and vLLM and TRL share no state. After both have loaded, the parent alternates
them step by step (round r: TRL then ours, round r + 1: ours then TRL); while one steps, the other waits
on a pipe, idle, and a step starts only once the side that ran before it has gone quiet (no CPU time for
0.3 s: see settle()). The first W rounds are warm-up and are not in the rows.
- Ours: `GRPOEngine(cfg).train_step()` with the preset's sampler, which on CPU is colocated vLLM (in-process,
  eager fp32): generation, reward, train, and the weight sync into vLLM are all in the step.
- TRL: `GRPOTrainer.train()` with per_device_train_batch_size = P x G, gradient_accumulation_steps = 1,
  num_iterations = 1 (one generation and one optimizer update per step, like ours); on CPU use_vllm=False, so
  TRL generates with transformers' `generate` (that difference is part of what users choose between); on
  GPU vLLM in colocate mode when vllm imports. fp32 on CPU (bf16 mixed precision on GPU, like our
  autocast), no gradient checkpointing (TRL's default is on; ours is off), AdamW with our betas/eps, fused on both
  sides by default (TRL's own default optim adamw_torch_fused; optim.fused=false gives adamw_torch to both).
- Same settings: TRL's loss_type "dapo" = our token_mean, "grpo" = seq_mean_token_mean, "dr_grpo" =
  seq_mean_token_sum_norm; epsilon / epsilon_high = eps_low / eps_high; scale_rewards = advantage_scale;
  beta; temperature, top_p, top_k; lr with a constant schedule and no warm-up; max_grad_norm. Our
  importance-sampling correction and the sampler sync check are off (TRL without vLLM has neither).
- Same prompts: the first (W + S) x P prompts our engine's stream would draw, in that order, for both
  (TRL with shuffle_dataset=False); the same reward functions (grpo.rewards.score with the preset's specs).
Per measured step: completion tokens / step wall time (tokens/s), step time, generation time, peak RSS
during the step (the high-water mark reset when the step starts: weights, optimizer state, KV cache in
use and temporaries), mean completion length, and other processes' CPU load. The ratio rows (grpo/trl)
are medians of the per-round ratios. Rows are appended to bench/results/bench_peer.csv.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time

from bench import common  # sets THP_MEM_ALLOC_ENABLE before torch allocates

import torch  # noqa: E402

INSTALL = ".venv/bin/pip install trl torch==" + torch.__version__.split("+")[0]
PROTO = "@@peer "
# name -> (preset, prompts per step P, group size G, max completion tokens T, measured steps)
MODELS = {"tiny": ("tiny", 4, 4, 64, 10), "default": ("default", 2, 4, 48, 5)}
QUICK_WORKLOAD = (2, 4, 16)  # P, G, T of --quick (tiny model)
LOSS_TYPE = {"token_mean": "dapo", "seq_mean_token_mean": "grpo", "seq_mean_token_sum_norm": "dr_grpo"}


def trl_version() -> str | None:
    """TRL's version, or None when it is not importable (GRPOTrainer is imported by the child)."""
    try:
        import trl
        return trl.__version__
    except Exception:  # noqa: BLE001 -- absent, or an install that does not import
        return None


# --- the workload -------------------------------------------------------------------------------------
def our_overrides(P: int, G: int, T: int, steps: int, extra: list) -> list:
    """Config overrides that make our engine run what TRL runs (see the module docstring)."""
    return [f"train.prompts_per_step={P}", f"sampling.group_size={G}", f"sampling.max_tokens={T}",
            f"train.steps={steps}", "train.updates_per_rollout=1", "train.dynamic_sampling=false",
            "optim.warmup_steps=0", "optim.schedule=constant", "loss.is_mode=null", "sampler.sync_check_every=0",
            *extra]


def make_spec(a, name: str) -> dict:
    """Everything both children need: the resolved config's settings, the model folder, the prompts."""
    from transformers import AutoTokenizer

    from grpo import data as data_mod
    from grpo.builders import build_data, resolve_model_path
    from grpo.config import resolve_config, to_dict

    preset, P, G, T, steps = MODELS[name]
    if a.quick:
        (P, G, T), steps = QUICK_WORKLOAD, 2
    P, G, T, steps = a.prompts or P, a.group_size or G, a.max_tokens or T, a.steps or steps
    total = a.warmup + steps
    overrides = our_overrides(P, G, T, total, a.overrides)
    cfg = resolve_config(preset, overrides=overrides)
    if cfg.loss.loss_agg not in LOSS_TYPE:
        raise SystemExit(f"bench_peer: loss.loss_agg={cfg.loss.loss_agg!r} has no TRL loss_type")
    if cfg.train.advantage_estimator != "grpo":
        raise SystemExit("bench_peer: TRL's GRPOTrainer has only the grpo advantage estimator")
    model = resolve_model_path(cfg.model)  # builds the tiny / default folder once, here
    train, _, _ = build_data(cfg, AutoTokenizer.from_pretrained(str(model)))
    examples = data_mod.PromptStream(train, seed=cfg.data.seed).next_batch(total * P)
    return dict(name=name, preset=preset, overrides=overrides, model=str(model), P=P, G=G, T=T,
                warmup=a.warmup, steps=steps, threads=a.threads, config=to_dict(cfg),
                examples=[dataclasses.asdict(ex) for ex in examples])


def shape_of(spec: dict) -> str:
    """The `shape` column: model and workload, and the shared loss settings."""
    c = spec["config"]
    return (f"model={spec['name']}({os.path.basename(spec['model'])}),P={spec['P']},G={spec['G']},"
            f"max_tokens={spec['T']},our_sampler={c['sampler']['backend']}-{c['sampler']['dtype']}"
            f"{'-plain_gemm' if c['sampler'].get('cpu_gemm') == 'plain' else ''},"
            f"our_is={c['loss']['is_mode'] or 'none'},lr={c['optim']['lr']:g},"
            f"beta={c['loss']['beta']:g},"
            f"loss={c['loss']['loss_agg']}/{LOSS_TYPE[c['loss']['loss_agg']]},warmup={spec['warmup']},"
            f"steps={spec['steps']}")


# --- the parent ---------------------------------------------------------------------------------------
class Child:
    """A side's process: started with the spec, spoken to line by line."""

    def __init__(self, side: str, spec_path: str, log_path: str):
        self.side, self.log_path = side, log_path
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled")
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.peer_sides", side, spec_path],
                                     cwd=common.ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, bufsize=1)
        # A reader thread, not select(): select() on a buffered pipe misses lines already read into the buffer.
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(PROTO):
                self.lines.put(json.loads(line[len(PROTO):]))
        self.lines.put(None)  # EOF: the child exited

    def expect(self, event: str, timeout: float) -> dict:
        """The next protocol event, which must be `event`; raises with the log's tail when the child dies."""
        try:
            msg = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.side}: no '{event}' within {timeout:.0f} s; log {self.log_path}") from None
        if msg is None:
            self.proc.wait(timeout=30)
            raise RuntimeError(f"{self.side} child exited with {self.proc.returncode} waiting for '{event}':\n"
                               + tail(self.log_path))
        if msg["event"] != event:
            raise RuntimeError(f"{self.side}: expected '{event}', got {msg}")
        return msg

    def step(self, timeout: float) -> dict:
        """Lets the child run one step; its measurements."""
        self.expect("waiting", timeout)
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.expect("step", timeout)

    def close(self) -> None:
        """Ends the process (quit, then kill after 60 s)."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process (all its threads), in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def settle(pid: int, quiet: float = 0.3, limit: float = 10.0) -> float:
    """Waits until process `pid` has used no CPU for `quiet` seconds (at most `limit`); returns the wait.
    A side that just stepped can keep threads busy for a while (measured here: our process uses CPU for
    up to ~0.6 s after its step returns); without the wait that tail would run inside the other side's
    timed step."""
    t0 = time.monotonic()
    try:
        last, since = cpu_ticks(pid), time.monotonic()
        while time.monotonic() - t0 < limit:
            time.sleep(0.05)
            now = cpu_ticks(pid)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
    except (OSError, IndexError, ValueError):  # no /proc, or the process ended
        pass
    return time.monotonic() - t0


def tail(path: str, n: int = 25) -> str:
    """The last n lines of a log file."""
    with open(path, errors="replace") as f:
        return "".join(f.readlines()[-n:])


def run_pair(spec: dict, workdir: str, timeout: float, wait_quiet: float = 0.0) -> tuple:
    """Both children, loaded in parallel (not timed), then alternating rounds (each round first waits up
    to `wait_quiet` seconds for other processes to leave the CPUs idle). Returns
    ({side: [measured step dicts]}, {side: versions})."""
    path = os.path.join(workdir, f"spec-{spec['name']}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    kids = {s: Child(s, path, os.path.join(workdir, f"{spec['name']}-{s}.log")) for s in ("trl", "grpo")}
    try:
        versions = {s: k.expect("loaded", timeout)["versions"] for s, k in kids.items()}
        steps = {s: [] for s in kids}
        for r in range(spec["warmup"] + spec["steps"]):
            order = ("trl", "grpo") if r % 2 == 0 else ("grpo", "trl")
            if wait_quiet > 0:
                common.wait_quiet(wait_quiet, window=1.0)
            for s in order:
                m = kids[s].step(timeout)
                m["settle"] = settle(kids[s].proc.pid)  # before the other side starts: it runs alone
                tag = "warm-up" if r < spec["warmup"] else "measured"
                print(f"   round {r + 1} ({tag}) {s:4s}: {m['seconds']:7.2f} s, {m['completion_tokens']:5d} completion "
                      f"tokens, {m['completion_tokens'] / m['seconds']:8.1f} tok/s, generation "
                      f"{m['generation_seconds']:.2f} s, peak {m['peak_gb']:.2f} GB, others "
                      f"{100 * m['background']:.0f}%, settled in {m['settle']:.2f} s", flush=True)
                if r >= spec["warmup"]:
                    steps[s].append(m)
        for k in kids.values():
            k.expect("done", timeout)
    finally:
        for k in kids.values():
            k.close()
    return steps, versions


def record(sink, spec: dict, steps: dict, versions: dict) -> dict:
    """Rows per side and the grpo/trl ratio rows; returns the p50s for the printed summary."""
    shape = shape_of(spec)
    dtype = spec["config"]["model"]["dtype"] + ("+bf16-autocast" if torch.cuda.is_available() else "")
    backend = {"trl": "transformers.generate" if "use_vllm=False" in versions["trl"] else "vllm-colocate",
               "grpo": "vllm" if versions["grpo"] else "torch"}
    out = {}
    for side, ms in steps.items():
        cols = {"completion_tokens_per_s": ("tok/s", [m["completion_tokens"] / m["seconds"] for m in ms]),
                "step_time": ("s", [m["seconds"] for m in ms]),
                "generation_time": ("s", [m["generation_seconds"] for m in ms]),
                "peak_memory": ("GB", [m["peak_gb"] for m in ms]),
                "completion_len_mean": ("tokens", [m["completion_tokens"] / m["sequences"] for m in ms]),
                "background_cpu_load": ("%", [100 * m["background"] for m in ms])}
        for metric, (unit, xs) in cols.items():
            q = common.quantiles(xs)
            sink.add("grpo_step_peer", side, backend[side], dtype, shape, metric, unit, *q)
            out[(side, metric)] = q
    tps = {s: [m["completion_tokens"] / m["seconds"] for m in ms] for s, ms in steps.items()}
    for metric, num, den in (("completion_tokens_per_s_ratio", tps["grpo"], tps["trl"]),
                             ("step_time_speedup", [m["seconds"] for m in steps["trl"]],
                              [m["seconds"] for m in steps["grpo"]]),
                             ("peak_memory_ratio", [m["peak_gb"] for m in steps["grpo"]],
                              [m["peak_gb"] for m in steps["trl"]])):
        q = common.paired_ratios(num, den)
        sink.add("grpo_step_peer", "grpo/trl", "ratio", dtype, shape, metric, "x", *q)
        out[("ratio", metric)] = q
    return out


def print_summary(spec: dict, out: dict, versions: dict) -> None:
    """Both sides and the ratio, side by side."""
    print(f"\n{shape_of(spec)}\n  trl: {versions['trl']}   grpo: {versions['grpo'] or 'torch sampler'}")
    print(f"  {'side':5s} {'tok/s p50':>10s} {'(p20-p80)':>18s} {'step s':>8s} {'gen s':>8s} {'peak GB':>8s} "
          f"{'len':>6s}")
    for side in ("trl", "grpo"):
        t = out[(side, "completion_tokens_per_s")]
        print(f"  {side:5s} {t[1]:10.1f} {f'({t[0]:.1f}-{t[2]:.1f})':>18s} {out[(side, 'step_time')][1]:8.2f} "
              f"{out[(side, 'generation_time')][1]:8.2f} {out[(side, 'peak_memory')][1]:8.2f} "
              f"{out[(side, 'completion_len_mean')][1]:6.1f}")
    r = out[("ratio", "completion_tokens_per_s_ratio")]
    verdict = "held" if r[1] >= 2.0 else "NOT held"
    print(f"  completion tokens/s, grpo / trl: {r[1]:.2f}x (per-round p20-p80 {r[0]:.2f}-{r[2]:.2f}); "
          f"target >= 2x: {verdict}; peak memory grpo / trl {out[('ratio', 'peak_memory_ratio')][1]:.2f}x")


def parse_args(argv=None):
    """Command line -> namespace."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None,
                   help=f"comma-separated from {', '.join(MODELS)} (default: all; quick: tiny)")
    p.add_argument("--quick", action="store_true", help=f"tiny model, P, G, T = {QUICK_WORKLOAD}, 1 warm-up + 2 steps")
    p.add_argument("--steps", type=int, default=None,
                   help="measured steps per side (default: tiny 10, default 5; quick 2)")
    p.add_argument("--warmup", type=int, default=1, help="warm-up steps per side, not measured")
    p.add_argument("--prompts", type=int, default=None, help="prompts per step P (default: per model)")
    p.add_argument("--group-size", type=int, default=None, help="completions per prompt G (default: per model)")
    p.add_argument("--max-tokens", type=int, default=None, help="max completion tokens T (default: per model)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="extra override for both sides' settings (our config keys), repeatable")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both sides (default: all cores)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds allowed for loading or one step")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                   help="before each round wait up to S seconds for other processes to leave the CPUs idle")
    p.add_argument("--out", default=None, help="CSV to append to (default bench/results/bench_peer.csv)")
    a = p.parse_args(argv)
    a.models = (a.models or ("tiny" if a.quick else ",".join(MODELS))).split(",")
    for m in a.models:
        if m not in MODELS:
            p.error(f"--models: unknown {m!r}; expected some of {', '.join(MODELS)}")
    return a


def main(argv=None) -> int:
    """Runs each model's comparison; 0 also when TRL is missing (the suite is skipped, said and recorded)."""
    a = parse_args(argv)
    a.threads = common.set_threads(a.threads)
    device = common.default_device()
    sink = common.CsvSink("bench_peer", "peer", device, a.out)
    version = trl_version()
    if version is None:
        print(f"peer suite SKIPPED: TRL is not installed in this environment ({sys.executable}).\n"
              f"  It is an optional extra; install it (keeps this torch) with:  {INSTALL}")
        for name in a.models:
            sink.add("grpo_step_peer", "trl", "-", "-", f"model={name}", "skipped", "trl not installed",
                     None, None, None)
        sink.flush()
        return 0
    sink.fixed["versions"] += f"; trl {version}"
    print(f"device: {common.device_name(device)}  threads: {a.threads}  {sink.fixed['versions']}\n{common.busy_note()}")
    print("TRL generates with transformers (use_vllm=False) on CPU; our engine with colocated vLLM" if device == "cpu"
          else "TRL in vLLM colocate mode (when vllm imports); our engine with colocated vLLM")
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as workdir:
        for name in a.models:
            spec = make_spec(a, name)
            print(f"== peer {shape_of(spec)}: {spec['warmup']} warm-up round(s), then {spec['steps']} measured, "
                  f"alternating", flush=True)
            steps, versions = run_pair(spec, workdir, a.timeout, a.wait_quiet)
            if versions["grpo"] and versions["grpo"] not in sink.fixed["versions"]:
                sink.fixed["versions"] += f"; {versions['grpo']}"
            out = record(sink, spec, steps, versions)
            sink.flush()
            print_summary(spec, out, versions)
    print(common.busy_note())
    print(f"appended rows to {sink.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
