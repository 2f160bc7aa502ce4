"""What `python -m bench` shows after the suites ran: the rows they appended in this run, read back from
the CSVs (bench/common.py COLUMNS), as a printed table, a markdown summary and PNG plots.

Only headline metrics go into the table (times, rates, ratios, peak memory, skips and errors; the
cross-provider max |diff| checks and the load rows stay in the CSVs). A rate in GB/s gets a "% ceil" column
against this run's measured copy rate (the memcpy row), a FLOP/s rate against the matmul row of the same
shape; rows that carry their own pct_of_* metric are folded into that column, and a kernel case's time
and time-ratio rows into its rate row ("ms" and "x ours" columns: time / our backend's time).
"""
from __future__ import annotations

import csv
import io
import os
import re

HEADLINE = re.compile(r"^(time|bandwidth|throughput|payload_bandwidth|speedup|tokens_per_s.*|time/.*|"
                      r"completion_tokens_per_s.*|step_time.*|generation_time|peak_memory.*|peak_extra_memory|"
                      r"time_ratio_vs_.*|.*_ratio|skipped|error)$")
SKIP_METRICS = re.compile(r"^time/(reward)$|^tokens_per_s/(reward|weight_sync)$")  # microseconds: noise in a table


def read_rows(path: str, offset: int = 0) -> list:
    """Rows of a bench CSV written after byte `offset` (its size before the run; the header is read from
    the top of the file, so a file this run created is read whole)."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        header = f.readline()
        f.seek(max(offset, len(header)))
        body = f.read()
    return list(csv.DictReader(io.StringIO((header + body).decode())))


def num(x) -> float:
    """A CSV cell as a float (NaN when empty or "nan")."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def ceilings(rows: list) -> dict:
    """{"copy": GB/s p50 of the first memcpy row, ("matmul", shape): FLOP/s p50 per shape}."""
    out = {}
    for r in rows:
        if r["op"] == "memcpy" and r["metric"] == "bandwidth" and "copy" not in out:
            out["copy"] = num(r["p50"])
        if r["op"] == "matmul" and r["metric"] == "throughput":
            out[("matmul", r["shape"])] = num(r["p50"])
    return out


def pct_of_ceiling(r: dict, ceil: dict) -> float:
    """The row's p50 as % of the ceiling that bounds it (NaN when there is none)."""
    if r["op"] in ("memcpy", "matmul"):
        return float("nan")
    if r["unit"] == "GB/s" and "copy" in ceil and r["metric"] != "payload_bandwidth":
        return 100 * num(r["p50"]) / ceil["copy"]
    if r["unit"].endswith("FLOP/s") and ("matmul", r["shape"]) in ceil:
        return 100 * num(r["p50"]) / ceil[("matmul", r["shape"])]
    return float("nan")


def headline(rows: list) -> list:
    """The rows worth a table line, each with "pct" (% of its ceiling), "ms" (the case's time) and "ratio"
    (its time / our backend's, per-round median) keys; a kernel case's time and ratio rows are folded into
    its rate row (bandwidth or throughput), so one provider of one case is one line."""
    ceil = ceilings(rows)
    key = lambda r: (r["suite"], r["op"], r["provider"], r["dtype"], r["shape"])  # noqa: E731
    rated = {key(r) for r in rows if r["metric"] in ("bandwidth", "throughput")}
    folded = {}
    for r in rows:
        if key(r) in rated and r["metric"] == "time":
            folded.setdefault(key(r), {})["ms"] = num(r["p50"]) * (1e-3 if r["unit"] == "us" else 1.0)
        elif key(r) in rated and r["metric"].startswith("time_ratio_vs_"):
            folded.setdefault(key(r), {})["ratio"] = num(r["p50"])
    out = []
    for r in rows:
        extra = dict(pct=float("nan"), ms=float("nan"), ratio=float("nan"))
        if key(r) in rated and (r["metric"] == "time" or r["metric"].startswith("time_ratio_vs_")):
            continue
        if r["op"] in ("memcpy", "matmul") and r["metric"] in ("bandwidth", "throughput"):
            out.append(dict(r, **extra))
        elif HEADLINE.match(r["metric"]) and not SKIP_METRICS.match(r["metric"]) and r["provider"] != "machine":
            extra.update(folded.get(key(r), {}), pct=pct_of_ceiling(r, ceil))
            out.append(dict(r, **extra))
    return out


def fmt(x: float) -> str:
    """Four significant digits, or "-" for NaN."""
    return "-" if x != x else f"{x:.4g}"


def table_lines(rows: list) -> list:
    """Plain-text lines, one per headline row."""
    lines = [f"{'suite':12s} {'op':22s} {'provider':10s} {'dtype':8s} {'metric':30s} {'p50':>9s} {'p20-p80':>19s} "
             f"{'unit':>7s} {'%ceil':>6s} {'ms':>8s} {'x ours':>6s}  shape"]
    for r in headline(rows):
        if r["metric"] == "skipped" or r["metric"] == "error":
            lines.append(f"{r['suite']:12s} {r['op']:22s} {r['provider']:10s} {r['dtype']:8s} {r['metric']:30s} "
                         f"{r['unit']}  {r['shape']}")
            continue
        band = f"{fmt(num(r['p20']))}-{fmt(num(r['p80']))}"
        lines.append(f"{r['suite']:12s} {r['op']:22s} {r['provider']:10s} {r['dtype']:8s} {r['metric']:30s} "
                     f"{fmt(num(r['p50'])):>9s} {band:>19s} {r['unit']:>7s} {fmt(r['pct']):>6s} {fmt(r['ms']):>8s} "
                     f"{fmt(r['ratio']):>6s}  {r['shape']}")
    return lines


def markdown(rows: list, runs: list, quick: bool, plots: list) -> str:
    """The summary page: machine, versions, suites (status, wall time), one table per suite, plots."""
    first = rows[0] if rows else {}
    md = [f"# grpo bench {'--quick ' if quick else ''}summary", "",
          f"- machine: {first.get('device', '?')}, {first.get('threads', '?')} threads",
          f"- versions: {first.get('versions', '?')}", f"- git revision: {first.get('git_rev', '?')}",
          f"- run started: {first.get('timestamp', '?')} (UTC)", "",
          "| suite | status | wall s | rows |", "|---|---|---:|---:|"]
    for run in runs:
        md.append(f"| {run['suite']} | {run['status']} | {run['seconds']:.0f} | {run['rows']} |")
    loads = [num(r["p50"]) for r in rows if r["metric"] == "background_cpu_load" and num(r["p50"]) == num(r["p50"])]
    if loads:
        md += ["", f"Other processes' CPU load during the timed parts: median {sorted(loads)[len(loads) // 2]:.0f}%, "
                   f"max {max(loads):.0f}% (per case/step rows `background_cpu_load` in the CSVs)."]
    head = headline(rows)  # ceilings from all rows: the advantages rows use the loss suite's memcpy row
    for suite in dict.fromkeys(r["suite"] for r in rows):
        sel = [r for r in head if r["suite"] == suite]
        md += ["", f"## {suite}", "",
               "| op | provider | backend | dtype | shape | metric | p50 | p20–p80 | unit | % ceil | ms | x ours |",
               "|---|---|---|---|---|---|---:|---:|---|---:|---:|---:|"]
        for r in sel:
            md.append(f"| {r['op']} | {r['provider']} | {r['backend']} | {r['dtype']} | {r['shape']} | {r['metric']} | "
                      f"{fmt(num(r['p50']))} | {fmt(num(r['p20']))}–{fmt(num(r['p80']))} | {r['unit']} | "
                      f"{fmt(r['pct'])} | {fmt(r['ms'])} | {fmt(r['ratio'])} |")
    if plots:
        md += ["", "## plots", ""] + [f"![{os.path.basename(p)}]({p})" for p in plots]  # paths relative to the page
    return "\n".join(md) + "\n"


def _shape_value(shape: str, key: str) -> float:
    m = re.search(rf"(?:^|,){key}=(\d+)", shape)
    return float(m.group(1)) if m else float("nan")


def plot_kernels(rows: list, path: str):
    """GB/s (p50, p20-p80 bars) vs V per provider, one panel per (op, dtype), the copy ceiling drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ceil = ceilings(rows).get("copy")
    bw = [r for r in rows if r["metric"] == "bandwidth" and r["op"] in ("grpo_loss", "token_logprobs",
                                                                          "token_logprobs_entropy")]
    panels = sorted({(r["op"], r["dtype"]) for r in bw})
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (op, dt) in zip(axes[0], panels):
        for prov in sorted({r["provider"] for r in bw if (r["op"], r["dtype"]) == (op, dt)}):
            pts = sorted((_shape_value(r["shape"], "V"), num(r["p20"]), num(r["p50"]), num(r["p80"]))
                         for r in bw if (r["op"], r["dtype"], r["provider"]) == (op, dt, prov))
            xs = [p[0] for p in pts]
            ax.errorbar(xs, [p[2] for p in pts], yerr=[[p[2] - p[1] for p in pts], [p[3] - p[2] for p in pts]],
                        marker="o", capsize=3, label=prov)
        if ceil:
            ax.axhline(ceil, color="k", ls="--", lw=1, label=f"memcpy {ceil:.1f} GB/s")
        ax.set_xscale("log")
        ax.set_title(f"{op} {dt}", fontsize=9)
        ax.set_xlabel("V (vocabulary)")
        ax.set_ylabel("effective GB/s (p50)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_bars(rows: list, path: str, title: str, pick) -> str | None:
    """A horizontal bar chart of p50 with p20-p80 whiskers of the rows `pick(row)` labels (None: skip)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = [(pick(r), r) for r in rows]
    items = [(label, r) for label, r in items if label]
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(items) + 1.2))
    ys = range(len(items))
    p50 = [num(r["p50"]) for _, r in items]
    err = [[p - num(r["p20"]) for p, (_, r) in zip(p50, items)], [num(r["p80"]) - p for p, (_, r) in zip(p50, items)]]
    ax.barh(list(ys), p50, xerr=err, capsize=3, color="tab:blue")
    ax.set_yticks(list(ys))
    ax.set_yticklabels([label for label, _ in items], fontsize=8)
    ax.set_xlabel(items[0][1]["unit"])
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(rows: list, folder: str) -> list:
    """Every plot the rows allow; returns the files written."""
    os.makedirs(folder, exist_ok=True)
    out = [plot_kernels(rows, os.path.join(folder, "kernels_bandwidth.png"))]
    out.append(plot_bars(rows, os.path.join(folder, "peer_tokens_per_s.png"),
                         "peer: completion tokens/s per side (p50, p20-p80)",
                         lambda r: (f"{r['provider']} {r['shape'].split(',')[0]}"
                                    if r["suite"] == "peer" and r["metric"] == "completion_tokens_per_s" else None)))
    out.append(plot_bars(rows, os.path.join(folder, "step_phases.png"), "step: seconds per phase (p50, p20-p80)",
                         lambda r: (f"{r['metric'][5:]} {r['shape'].split(',')[0]}"
                                    if r["suite"] == "step" and r["metric"].startswith("time/") else None)))
    out.append(plot_bars(rows, os.path.join(folder, "sampler_generation.png"),
                         "sampler: generation tokens/s (p50, p20-p80)",
                         lambda r: (f"{r['provider']} {r['shape'].split(',')[0]}"
                                    if r["suite"] == "sampler" and r["metric"] == "tokens_per_s" else None)))
    return [p for p in out if p]
