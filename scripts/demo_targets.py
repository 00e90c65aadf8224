"""Print the demo model's held-out scores against issue 12's targets (reached or not).

  python scripts/demo_targets.py demo_out/eval/report.json [--markdown]
"""

import json
import sys

# (label, task, metric, target in %): what a working demo model reaches on the
# synthetic test split, a person never seen in training.
TARGETS = [("Det. Acc.", "det", "accuracy", 90), ("Cls. Acc.", "cls", "accuracy", 90),
           ("I-Loc. mIoU", "i-loc", "mIoU", 40), ("R-Loc. mIoU", "r-loc", "mIoU", 40),
           ("B-Loc. mIoU", "b-loc", "mIoU", 40), ("I-AGE mIoU", "i-age", "mIoU", 30),
           ("R-AGE mIoU", "r-age", "mIoU", 30), ("B-AGE mIoU", "b-age", "mIoU", 30)]
TARGETS += [(f"{t.upper()} METEOR", t, "METEOR", 30)
            for t in ("i-toe", "r-toe", "b-toe", "i-age", "r-age", "b-age")]


def main() -> int:
  per_task = json.load(open(sys.argv[1]))["per_task"]
  markdown = "--markdown" in sys.argv
  if markdown:
    print("| metric | target | reached | |\n|---|---|---|---|")
  for label, task, metric, target in TARGETS:
    value = 100 * per_task.get(task, {}).get(metric, float("nan"))
    ok = value >= target
    if markdown:
      print(f"| {label} | {target} | {value:.1f} | {'met' if ok else 'below'} |")
    else:
      print(f"  {label:<14} {value:6.1f}  (target {target}) {'met' if ok else 'BELOW'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
