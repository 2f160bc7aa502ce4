"""The `grpo` command: train, eval, plot, profile, bench.

    grpo train                               # the embedded default (SmolLM2-135M-Instruct), no arguments
    grpo train --preset tiny train.steps=5   # a preset plus key=value overrides
    grpo train --config run.yaml --resume runs/default
    grpo eval --checkpoint runs/default/checkpoints/step-000016
    grpo plot runs/default
    grpo profile --preset tiny --steps 2     # torch.profiler trace + top kernels (grpo/profiling.py)
    grpo bench --quick                       # the benchmark suites: python -m bench (bench/README.md)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .config import PRESETS, ConfigError, describe_options, dump_yaml, resolve_config


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default=None, help=f"named preset: {', '.join(PRESETS.names())} (default: default)")
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML/JSON config file(s), in order")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. train.steps=10 loss.beta=0.04")


def build_parser() -> argparse.ArgumentParser:
    epilog = "config options (key = default; presets change some):\n" + describe_options()
    ap = argparse.ArgumentParser(prog="grpo", description="GRPO training engine",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train with GRPO", epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(tr)
    tr.add_argument("--run-dir", default=None, help="run folder (default: log.run_dir of the config)")
    tr.add_argument("--resume", default=None, metavar="RUN_DIR",
                    help="continue the run in RUN_DIR from its latest checkpoint (its config.yaml is the base)")
    tr.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="write a torch.profiler trace of the first STEPS steps to RUN_DIR/trace.json")
    ev = sub.add_parser("eval", help="evaluate on the held-out split", epilog=epilog,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(ev)
    ev.add_argument("--checkpoint", default=None, help="a checkpoint folder (default: the config's model)")
    ev.add_argument("--limit", type=int, default=None, help="evaluate on the first N held-out examples")
    pl = sub.add_parser("plot", help="PNG curves of a run's metrics")
    pl.add_argument("run_dir")
    pf = sub.add_parser("profile", help="torch.profiler trace (Chrome/Perfetto JSON) of N steps, top kernels",
                        epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_args(pf)
    pf.add_argument("--steps", type=int, default=2, help="profiled steps (default 2)")
    pf.add_argument("--warmup", type=int, default=1, help="unprofiled steps first (default 1)")
    pf.add_argument("--out", default=None, help="output folder (default runs/profile-<preset>)")
    pf.add_argument("--rows", type=int, default=25, help="rows of the top-kernels table")
    # `grpo bench ARGS` is handed to `python -m bench ARGS` unparsed (see main); listed here for --help
    sub.add_parser("bench", help="benchmark suites (runs `python -m bench` in the repository; --help there)",
                   add_help=False)
    return ap


def _run_dir(cfg, explicit) -> Path:
    if explicit:
        return Path(explicit)
    return Path(cfg.log.run_dir.format(preset=cfg.preset, time=time.strftime("%Y%m%d-%H%M%S")))


def _write_config(run_dir: Path, cfg) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".config.yaml.tmp"
    tmp.write_text(dump_yaml(cfg))
    os.replace(tmp, run_dir / "config.yaml")


def cmd_train(args) -> int:
    from . import checkpoint
    from .engine import GRPOEngine
    from .metrics import MetricsLogger

    files = list(args.config)
    if args.resume:
        resume_dir = Path(args.resume)
        if not (resume_dir / "config.yaml").exists():
            raise ConfigError(f"--resume {resume_dir}: no config.yaml there (not a run folder)")
        files = [str(resume_dir / "config.yaml")] + files
    cfg = resolve_config(args.preset, files=files, overrides=args.overrides)
    run_dir = Path(args.resume) if args.resume else _run_dir(cfg, args.run_dir)
    print(f"== grpo train: preset {cfg.preset}, run folder {run_dir}\n{dump_yaml(cfg)}", flush=True)
    _write_config(run_dir, cfg)
    engine = GRPOEngine(cfg, run_dir=run_dir)
    print(f"== data: {json.dumps({k: (len(v) if isinstance(v, list) else v) for k, v in engine.data_report.items()})}")
    print(f"== train layout: {engine.layout} (train.layout = {cfg.train.layout})")
    ckpt = checkpoint.latest_checkpoint(run_dir) if args.resume else None
    if ckpt is not None:
        engine.load(ckpt)
        print(f"== resumed from {ckpt} at step {engine.step}")
    logger = MetricsLogger(run_dir, total_steps=cfg.train.steps, start_step=engine.step,
                           tensorboard=cfg.log.tensorboard, progress=cfg.log.progress)
    try:
        before = None
        if engine.step == 0:
            before = engine.evaluate()
            logger.log(0, before, kind="eval")
            print(f"== eval before training: {_short(before)}", flush=True)
        if args.profile:
            from .profiling import profile_steps
            profile_steps(engine, args.profile, run_dir / "trace.json", logger)
        engine.train(logger=logger)
        after = engine.evaluate()
        logger.log(engine.step, after, kind="eval")
        path = engine.save()
    finally:
        logger.close()
    summary = {"steps": engine.step, "before": before, "after": after, "checkpoint": str(path)}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"== eval after {engine.step} steps: {_short(after)}")
    if before is not None:
        print(f"== accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}, format rate "
              f"{before['format_rate']:.3f} -> {after['format_rate']:.3f} ({after['examples']} held-out prompts)")
    if cfg.log.plot:
        from .plot import plot_run
        print("== plots:", ", ".join(str(p) for p in plot_run(run_dir)))
    print(f"== checkpoint {path}")
    return 0


def _short(m: dict) -> str:
    keys = ("accuracy", "format_rate", "format_soft_rate", "completion_len/mean")
    return ", ".join(f"{k} {m[k]:.3f}" for k in keys if k in m)


def cmd_eval(args) -> int:
    from .engine import GRPOEngine

    cfg = resolve_config(args.preset, files=args.config, overrides=args.overrides)
    engine = GRPOEngine(cfg)
    if args.checkpoint:
        from .checkpoint import load_model_weights
        load_model_weights(args.checkpoint, engine.policy)
        engine.sampler_is_current = False
    m = engine.evaluate(limit=args.limit)
    print(json.dumps(m, indent=2))
    return 0


def cmd_plot(args) -> int:
    from .plot import plot_run
    for p in plot_run(args.run_dir):
        print(p)
    return 0


def cmd_profile(args) -> int:
    """`grpo profile`: W warm-up + N profiled steps, the trace and tables in --out (grpo/profiling.py)."""
    from .profiling import format_report, run_profile

    if args.steps < 1 or args.warmup < 0:
        raise ConfigError(f"--steps must be >= 1 and --warmup >= 0, got {args.steps} and {args.warmup}")
    cfg = resolve_config(args.preset, files=args.config,
                         overrides=list(args.overrides) + [f"train.steps={args.warmup + args.steps}"])
    out = Path(args.out or f"runs/profile-{cfg.preset}")
    print(f"== grpo profile: preset {cfg.preset}, {args.warmup} warm-up + {args.steps} profiled step(s) -> {out}",
          flush=True)
    res = run_profile(cfg, out, steps=args.steps, warmup=args.warmup, row_limit=args.rows)
    print(res["table"])
    print(format_report(res))
    print(f"== trace {res['trace']} (open in https://ui.perfetto.dev); tables {out}/top_kernels.txt, "
          f"top_kernels.json, phases.json; step metrics {out}/metrics.jsonl")
    return 0


def cmd_bench(rest: list) -> int:
    """`grpo bench ...` = `python -m bench ...` in the repository root. grpo/ never imports bench/ (it is
    not part of the package), so this runs it as a separate process."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    if not (root / "bench" / "__main__.py").exists():
        print(f"grpo bench: no bench/ folder next to the grpo package (looked in {root}); the benchmarks live in "
              f"the repository, not in the installed package: run `grpo bench` from an editable install of a "
              f"checkout (pip install -e .), or `python -m bench` in the checkout", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, "-m", "bench", *rest], cwd=str(root))


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # every argument belongs to python -m bench, --help included
        return cmd_bench(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return {"train": cmd_train, "eval": cmd_eval, "plot": cmd_plot, "profile": cmd_profile}[args.cmd](args)
    except ConfigError as e:
        print(f"grpo: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
