"""Draws a run's loss curves (training loss per step, validation loss per evaluation) from metrics.jsonl.
Usage: plot_metrics.py RUN_DIR [--out PNG]   (what `chunkwise plot RUN` calls)"""
import argparse, json, os, sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

ap = argparse.ArgumentParser()
ap.add_argument("runs", nargs="+", help="run folders holding metrics.jsonl")
ap.add_argument("--out", default=None, help="PNG to write (default: FIRST_RUN/loss.png)")
a = ap.parse_args()
fig, ax = plt.subplots(figsize=(8, 4.5))
for run in a.runs:
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.exists(path):
        sys.exit(f"error: {path} not found (is {run} a run folder?)")
    train, val = [], []
    for line in open(path):
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.get("loss") is not None:
            train.append((r["step"], r["loss"]))
        if "val_loss" in r:
            val.append((r["step"], r["val_loss"]))
    name = os.path.basename(os.path.normpath(run))
    if train:
        ax.plot(*zip(*train), lw=1, alpha=0.8, label=f"{name} train")
    if val:
        ax.plot(*zip(*val), "o-", label=f"{name} val")
ax.set_xlabel("step"); ax.set_ylabel("loss (nats/token)"); ax.grid(alpha=0.3); ax.legend()
out = a.out or os.path.join(a.runs[0], "loss.png")
tmp = out + ".tmp.png"
fig.savefig(tmp, dpi=110, bbox_inches="tight")
os.replace(tmp, out)
print(out)
