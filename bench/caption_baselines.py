"""What METEOR do answers that never look at the face reach?  Yardsticks for `fifa eval`.

  .venv/bin/python bench/caption_baselines.py DATA [--split test] [--max-per-task 16] [--seed 0]

DATA is a `fifa data build` folder.  For each TOE/AGE task, the records that `fifa eval
--max-per-task` would score (evenly spaced) are answered three ways, and scored as
`fifa eval` scores captions (markers stripped, pycocoevalcap's METEOR):
  prior    a random training answer of the same task (the language prior alone)
  prompt   a random training answer of the same task and the same region prompt
           (R- tasks): what reading the prompt adds; I- and B- tasks have no region
           prompt, so they draw from the prior again, which shows how much a
           16-record score moves by chance (4 points for B-AGE on the demo's data)
  numbers  the reference itself with its figures "(31%, 491 px)" replaced by one
           fixed guess: an answer right in every word but the numbers
A model's METEOR means something only above `prior`; `numbers` is close to its ceiling.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict

import numpy as np

from fifa_jax import tokens
from fifa_jax.eval import metrics
from fifa_jax.eval.bench import find_records, spread

FIGURES = re.compile(r"\(\d+%, \d+ px\)")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("data")
  ap.add_argument("--split", default="test")
  ap.add_argument("--max-per-task", type=int, default=16)
  ap.add_argument("--seed", type=int, default=0)
  args = ap.parse_args()
  rng = np.random.default_rng(args.seed)
  print("| task | prior | prompt | numbers |\n|---|---|---|---|")
  for task in ("i-toe", "r-toe", "b-toe", "i-age", "r-age", "b-age"):
    test = spread(find_records(args.data, args.split, task), args.max_per_task)
    train = find_records(args.data, "train", task)
    if not test or not train:
      continue
    by_region = defaultdict(list)
    for r in train:
      by_region[r.region].append(r)
    pick = lambda rs: tokens.strip_markers(rs[rng.integers(len(rs))].answer)
    answers = {"prior": [pick(train) for _ in test],
               "prompt": [pick(by_region.get(r.region) or train) for r in test],
               "numbers": [FIGURES.sub("(40%, 500 px)", tokens.strip_markers(r.answer)) for r in test]}
    refs = [[tokens.strip_markers(r.answer)] for r in test]
    cells = [f"{100 * metrics.caption_scores(a, refs)['METEOR']:.1f}" for a in answers.values()]
    print(f"| {tokens.TASK_NAMES[task]} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
