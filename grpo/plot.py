"""`grpo plot RUN_DIR`: PNG curves from metrics.jsonl (reward, accuracy, length, KL, tokens/s)."""
from __future__ import annotations

from pathlib import Path

from .metrics import read_metrics

PANELS = [  # (title, [(metric, kind)])
    ("reward", [("reward/total_mean", "train")]),
    ("accuracy / format (train samples; eval held-out)", [("accuracy", "train"), ("format_rate", "train"),
                                                         ("accuracy", "eval"), ("format_rate", "eval")]),
    ("completion length (tokens)", [("completion_len/mean", "train"), ("completion_len/max", "train")]),
    ("KL / clip fraction", [("kl", "train"), ("clip_frac_low", "train"), ("clip_frac_high", "train")]),
    ("tokens/s", [("tokens_per_s/overall", "train"), ("tokens_per_s/generation", "train"),
                  ("tokens_per_s/train", "train")]),
    ("loss", [("loss", "train")]),
]


def plot_run(run_dir) -> list[Path]:
    """Writes run_dir/plots/curves.png (all panels) and returns the written paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir, kind=None)
    out_dir = Path(run_dir) / "plots"
    out_dir.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (title, series) in zip(axes.flat, PANELS):
        drawn = False
        for metric, kind in series:
            pts = [(r["step"], r[metric]) for r in rows if r.get("kind") == kind and isinstance(r.get(metric), (int, float))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o" if kind == "eval" else None, linestyle="--" if kind == "eval" else "-",
                        label=f"{metric} ({kind})")
                drawn = True
        ax.set_title(title)
        ax.set_xlabel("step")
        if drawn:
            ax.legend(fontsize=7)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    path = out_dir / "curves.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]
