"""Can the input pipeline keep an accelerator busy?  Samples per second per CPU core.

  .venv/bin/python bench/bench_pipeline.py [--data demo_out/data] [--workers 0 1 2] [--tokenizer DIR]

The training pipeline (fifa_jax/data/pipeline.py: grain, FiFa-11 records mixed by
Table 17, image decode, augmentation, tokenisation, bucket padding, every [SEG]'s two
mask targets, [SEG] packing) at the paper recipe's settings: 224-px images, 196 image
tokens, buckets 384-1024, batch 40, targets at the image's 224x224 (the paper's 56x56
logits are upsampled to them in the loss).  `--data` is a built dataset (default: the
demo's shards, real face crops; without them, toy shards of 256-px noise images, whose
PNGs decode slower than faces).

Per core: samples over the CPU seconds that the main process and grain's worker
processes spent (user + system, psutil), so the figure does not depend on how many
cores this machine has.  The target (issue 14): 40 samples/s per core; the paper's
step at 50% MFU on an H100 consumes about 30 samples/s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psutil

from fifa_jax import config as config_lib
from fifa_jax import tokens
from fifa_jax.data import pipeline, toy
from fifa_jax.models.fifa import FiFaConfig

BUCKETS = (384, 512, 768, 1024)


def cpu_seconds(proc: psutil.Process) -> float:
  total = 0.0
  for p in [proc, *proc.children(recursive=True)]:
    try:
      t = p.cpu_times()
      total += t.user + t.system
    except psutil.NoSuchProcess:
      pass
  return total


def measure(pc: pipeline.PipelineConfig, layout: pipeline.Layout, batches: int) -> dict:
  it = pipeline.iterate(pc, layout)
  for _ in range(3):  # workers start, the tokenizer loads, buffers fill
    next(it)
  proc = psutil.Process()
  cpu0, t0 = cpu_seconds(proc), time.perf_counter()
  n = 0
  for _ in range(batches):
    n += next(it)["input_ids"].shape[0]
  wall, cpu = time.perf_counter() - t0, cpu_seconds(proc) - cpu0
  del it
  return {"samples_per_s": n / wall, "cores_busy": cpu / wall, "per_core": n / cpu}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--data", type=Path, default=Path("demo_out/data"))
  p.add_argument("--split", default="train")
  p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--batch", type=int, default=40)
  p.add_argument("--batches", type=int, default=15)
  p.add_argument("--no-augment", dest="augment", action="store_false")
  p.add_argument("--tokenizer", help="a LLaMA/Vicuna tokenizer folder (default: the offline demo's)")
  a = p.parse_args(argv)

  root = a.data
  if not (root / "qa").is_dir():
    root = toy.write_toy_dataset(Path(tempfile.mkdtemp(prefix="fifa-bench-")) / "toy", n_images=48,
                                 size=256, splits=(a.split,))
    print(f"no dataset at {a.data}: toy shards of 256-px noise images in {root}")
  defaults = config_lib.DataConfig()
  pc = pipeline.PipelineConfig(root=str(root), qa_glob=defaults.qa_glob, masks=defaults.masks,
                               tasks=dict(config_lib.TABLE17_RATIOS), split=a.split, seed=0,
                               local_batch=a.batch)
  capacity = pipeline.seg_capacity_for(pipeline.seg_counts(pc), pc.tasks, a.batch)
  layout = pipeline.Layout.for_model(FiFaConfig.paper(), BUCKETS, a.tokenizer, seg_capacity=capacity,
                                     augment=a.augment)
  vocab = len(tokens.load_tokenizer(a.tokenizer))
  print(f"data {root} ({a.split}), batch {a.batch}, 224 px, {layout.num_image_tokens} image tokens, "
        f"buckets {list(BUCKETS)}, {capacity} [SEG] slots of two 224x224 targets, augment {a.augment}, "
        f"tokenizer: {a.tokenizer or 'the offline demo'} ({vocab} tokens)")
  print("| workers | samples/s | CPU cores busy | samples/s per core |")
  print("|---|---|---|---|")
  for w in a.workers:
    pc.workers = w
    r = measure(pc, layout, a.batches)
    print(f"| {w} | {r['samples_per_s']:.1f} | {r['cores_busy']:.2f} | {r['per_core']:.1f} |", flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
