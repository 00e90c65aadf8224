"""Learning curves from a run's metrics.jsonl: the loss of each part and of each task
(`fifa train`), or the cold start's loss and each reward (`fifa agent train`).

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

  all_rows = read_jsonl(metrics_path)
  rows = [r for r in all_rows if "train/loss" in r]
  if not rows and any("reward/total" in r or "sft/loss" in r for r in all_rows):
    return plot_agent(all_rows, out, title or str(metrics_path))
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
  return _save(fig, out, title or str(metrics_path))


def _save(fig, out: str | Path, title: str) -> Path:
  import matplotlib.pyplot as plt  # noqa: PLC0415  (lazy: as above; the backend is chosen)

  fig.suptitle(title)
  fig.tight_layout()
  out = Path(out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def plot_agent(rows: list[dict], out: str | Path, title: str) -> Path:
  """The learned aggregator's run: cold-start loss, then each reward per GRPO step."""
  import matplotlib  # lazy: matplotlib only when a curve is drawn
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # after choosing the headless backend

  fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
  sft = [r for r in rows if "sft/loss" in r]
  axes[0].plot([r["step"] for r in sft], [r["sft/loss"] for r in sft])
  axes[0].set_yscale("log")
  axes[0].set_title("cold start: cross-entropy on the reference answers")
  grpo = [r for r in rows if "reward/total" in r]
  names = sorted({k for r in grpo for k in r if k.startswith("reward/") and k != "reward/total"})
  for key in names:
    axes[1].plot([r["step"] for r in grpo], [r.get(key, float("nan")) for r in grpo],
                 label=key.split("/", 1)[1])
  ax2 = axes[1].twinx()
  ax2.plot([r["step"] for r in grpo], [r["reward/total"] for r in grpo], "k--", label="total (right)")
  ax2.set_ylabel("weighted total")
  axes[1].set_ylim(-0.02, 1.02)
  axes[1].set_title("GRPO: mean reward per sample")
  axes[1].legend(fontsize=7, loc="lower right")
  ax2.legend(fontsize=7, loc="upper left")
  for ax in axes:
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  return _save(fig, out, title)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("metrics", help="a run's metrics.jsonl")
  ap.add_argument("-o", "--out", required=True, help="output PNG")
  ap.add_argument("--title", default=None)
  a = ap.parse_args()
  print(plot(a.metrics, a.out, a.title))


if __name__ == "__main__":
  main()
