"""Learning curves from a run's metrics.jsonl: the loss of each part and of each task.

  python -m fifa_jax.train.plot RUN/metrics.jsonl -o curve.png

matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fifa_jax import tokens
from fifa_jax.train.metrics import read_jsonl

PARTS = (("text", "text CE"), ("mask_dice", "mask Dice"), ("mask_bce", "mask BCE"),
         ("det", "Det. CE"), ("cls", "Cls. CE"))


def plot(metrics_path: str | Path, out: str | Path, title: str | None = None) -> Path:
  # lazy: matplotlib only when a curve is drawn
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # after choosing the headless backend

  rows = [r for r in read_jsonl(metrics_path) if "train/loss" in r]
  if not rows:
    raise ValueError(f"{metrics_path}: no training metrics")
  steps = [r["step"] for r in rows]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  ax = axes[0]
  for key, label in PARTS:
    ax.plot(steps, [r.get(f"train/{key}", float("nan")) for r in rows], label=label)
  ax.set_yscale("log")
  ax.set_title("loss per part")
  for ax, kind in ((axes[1], "text"), (axes[2], "mask_dice")):
    for task in tokens.TASKS:
      ys = [r.get(f"train/{task}/{kind}", float("nan")) for r in rows]
      if any(y == y for y in ys):  # not all NaN
        ax.plot(steps, ys, label=tokens.TASK_NAMES[task])
    ax.set_yscale("log" if kind == "text" else "linear")
    ax.set_title(f"{'text CE' if kind == 'text' else 'mask Dice'} per task")
  for ax in axes:
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
  fig.suptitle(title or str(metrics_path))
  fig.tight_layout()
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("metrics", help="a run's metrics.jsonl")
  ap.add_argument("-o", "--out", required=True, help="output PNG")
  ap.add_argument("--title", default=None)
  a = ap.parse_args()
  print(plot(a.metrics, a.out, a.title))


if __name__ == "__main__":
  main()
