"""`fifa data stats DIR`: per-task, per-split record counts of a build, laid out as
Table 2 of the paper (Task, Data Source, Training, Dev., Test), with a Total row.

Counts come from the QA shards themselves (not from build.json), so the table says
what a reader of the shards will get.  `check=True` also verifies, for every Loc.
and AGE record, that its [SEG] count equals its mask count and that each mask is
non-empty in the mask store.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from fifa_jax import tokens
from fifa_jax.data import records

SPLIT_HEADERS = {"train": "Training", "dev": "Dev.", "test": "Test"}


def count(out: str | os.PathLike) -> tuple[dict, dict]:
  """({split: Counter(task)}, {task: Counter(source)}) over a build's QA shards."""
  out = Path(out)
  if not (out / "qa").is_dir():
    raise FileNotFoundError(f"{out}: not a build folder (no qa/; run `fifa data build`)")
  per_split: dict[str, Counter] = {s: Counter() for s in records.SPLITS}
  sources: dict[str, Counter] = defaultdict(Counter)
  for split in records.SPLITS:
    for shard in records.qa_shards(out, split):
      for rec in records.read_qa_records(shard):
        per_split[split][rec.task] += 1
        sources[rec.task][rec.source] += 1
  return per_split, sources


def check_masks(out: str | os.PathLike) -> dict:
  """SEG/mask agreement of every Loc./AGE record: {checked, bad: [(record_id, reason)]}."""
  store = records.MaskStore(Path(out) / "masks")
  checked, bad, cache = 0, [], {}
  for rec in records.iter_records(out):
    if not tokens.task_has_masks(rec.task):
      continue
    checked += 1
    n_seg = tokens.count_segs(rec.answer)
    if n_seg != len(rec.seg_concepts):
      bad.append((rec.record_id, f"{n_seg} [SEG] for {len(rec.seg_concepts)} masks"))
      continue
    if rec.image_id not in cache:
      if len(cache) >= 64:  # shards are per task: an image's records recur across them
        cache.pop(next(iter(cache)))
      cache[rec.image_id] = store[rec.image_id]
    entry = cache[rec.image_id]
    empty = [c for c in rec.seg_concepts if not entry.artifact_region_mask(c).any()]
    if empty:
      bad.append((rec.record_id, f"empty Regional Artifact Mask for {empty[:3]}"))
  store.close()
  return {"checked": checked, "bad": bad}


def seg_counts(out: str | os.PathLike, split: str = "train") -> dict[str, list[int]]:
  """[SEG]s per record, per Loc./AGE task of one split (the data's own distribution)."""
  counts: dict[str, list[int]] = defaultdict(list)
  for shard in records.qa_shards(out, split):
    for rec in records.read_qa_records(shard):
      if tokens.task_has_masks(rec.task):
        counts[rec.task].append(tokens.count_segs(rec.answer))
  return counts


def seg_table(counts: dict[str, list[int]]) -> list[list[str]]:
  """Rows: header, one per Loc./AGE task: records, min, median, mean, p99, max [SEG]s."""
  rows = [["Task", "records", "min", "median", "mean", "p99", "max"]]
  for t in tokens.TASKS:
    c = np.asarray(counts.get(t, []))
    if c.size:
      rows.append([tokens.TASK_NAMES[t], str(c.size), str(c.min()), f"{np.median(c):g}",
                   f"{c.mean():.1f}", f"{np.percentile(c, 99):g}", str(c.max())])
  return rows


def table(per_split: dict, sources: dict) -> list[list[str]]:
  """Rows: header, one per task, Total."""
  rows = [["Task", "Data Source", *SPLIT_HEADERS.values()]]
  for t in tokens.TASKS:
    src = "/".join(sorted(sources.get(t, {}))) or "-"
    rows.append([tokens.TASK_NAMES[t], src, *(str(per_split[s][t]) for s in records.SPLITS)])
  rows.append(["Total", "", *(str(sum(per_split[s].values())) for s in records.SPLITS)])
  return rows


def render(rows: list[list[str]]) -> str:
  """A plain-text table (for logs and tests); the CLI prints it with rich."""
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = []
  for k, r in enumerate(rows):
    cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))]
    lines.append("  ".join(cells).rstrip())
    if k == 0 or k == len(rows) - 2:
      lines.append("  ".join("-" * w for w in widths))
  return "\n".join(lines)
