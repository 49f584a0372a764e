"""Draws loss curves from runs' metrics.jsonl: one panel per metric, one line per run.
Usage: plot_metrics.py RUN [RUN ...] [--metric KEY ...] [--title T] [--out PNG]
Default metrics: the training loss and, when logged, val_loss. Other keys, e.g. val_loss.A, come from
[data] eval_sets. `chunkwise plot RUN` calls this with the defaults."""
import argparse, json, os, sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

ap = argparse.ArgumentParser()
ap.add_argument("runs", nargs="+", help="run folders holding metrics.jsonl")
ap.add_argument("--metric", action="append", help="metric key to plot (repeatable; default loss and val_loss)")
ap.add_argument("--title", default="")
ap.add_argument("--out", default=None, help="PNG to write (default: FIRST_RUN/loss.png)")
a = ap.parse_args()


def read(run):
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.exists(path):
        sys.exit(f"error: {path} not found (is {run} a run folder?)")
    series = {}
    for line in open(path):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                series.setdefault(k, []).append((r["step"], v))
    return series


data = {run: read(run) for run in a.runs}
metrics = a.metric or [m for m in ("loss", "val_loss") if any(m in s for s in data.values())]
fig, axes = plt.subplots(1, len(metrics), figsize=(6.5 * len(metrics), 4.2), squeeze=False)
for ax, m in zip(axes[0], metrics):
    for run, s in data.items():
        if m in s:
            xs, ys = zip(*s[m])
            style = dict(lw=1, alpha=0.8) if m == "loss" else dict(marker="o", ms=2.5, lw=1.2)
            ax.plot(xs, ys, label=os.path.basename(os.path.normpath(run)), **style)
    ax.set_xlabel("step"); ax.set_ylabel(f"{m} (nats/token)"); ax.grid(alpha=0.3); ax.legend(fontsize=8)
if a.title:
    fig.suptitle(a.title)
out = a.out or os.path.join(a.runs[0], "loss.png")
tmp = out + ".tmp.png"
fig.savefig(tmp, dpi=100, bbox_inches="tight")
os.replace(tmp, out)
print(out)
