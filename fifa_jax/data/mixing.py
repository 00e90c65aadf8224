"""FiFa-11 task mixing: one grain source per task, mixed by weight (Table 17 by default).

Every task source is shuffled (a new order each epoch) and repeated forever, then
`grain.MapDataset.mix` interleaves them deterministically in proportion to the
weights.  Mixing is per sample, so a batch of 40 under Table 17 carries each task
in expectation as 40 * ratio / 36.  The mixed stream is one global sequence;
hosts take interleaved slices of it (`stream[i::n]`), so the union of the hosts'
batch k is the same samples whatever the number of hosts.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping

import grain

from fifa_jax import tokens
from fifa_jax.data import records


def task_files(qa_glob: str, root: str, split: str, task: str) -> list[str]:
  return sorted(glob.glob(qa_glob.format(root=root, split=split, task=task)))


def task_sources(qa_glob: str, root: str, split: str,
                 weights: Mapping[str, float]) -> dict[str, grain.sources.ArrayRecordDataSource]:
  """One ArrayRecord source per task with a positive weight; a missing task is an error."""
  out = {}
  for task, w in weights.items():
    if task not in tokens.TASKS:
      raise ValueError(f"unknown task {task!r}; expected one of {tokens.TASKS}")
    if w <= 0:
      continue
    files = task_files(qa_glob, root, split, task)
    if not files:
      pattern = qa_glob.format(root=root, split=split, task=task)
      raise FileNotFoundError(f"task {task!r} has weight {w} but no shards match {pattern!r} "
                              "(set its weight to 0 or fix data.qa_glob)")
    records.check_shards(files)  # a shard cut short is named here, not deep inside grain
    out[task] = grain.sources.ArrayRecordDataSource(files)
  return out


def mixed_stream(sources: Mapping[str, object], weights: Mapping[str, float], seed: int,
                 shuffle: bool = True) -> grain.MapDataset:
  """An infinite MapDataset of raw records, tasks interleaved by `weights`."""
  parts, props = [], []
  for i, (task, src) in enumerate(sources.items()):
    ds = grain.MapDataset.source(src)
    if shuffle:
      ds = ds.shuffle(seed=(seed * 1_000_003 + i) % 2**32)
    parts.append(ds.repeat())
    props.append(float(weights[task]))
  if len(parts) == 1:
    return parts[0]
  return grain.MapDataset.mix(parts, props)


def host_slice(ds: grain.MapDataset, process_index: int, process_count: int) -> grain.MapDataset:
  return ds[process_index::process_count] if process_count > 1 else ds
