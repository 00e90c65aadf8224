"""Metrics: per-task losses, throughput, MFU, learning rate -> JSONL + TensorBoard.

Only process 0 writes (`MetricsWriter` is a no-op elsewhere).  JSONL is always
written (`WORKDIR/metrics.jsonl`, one object per log step, appended across
resumes); TensorBoard event files go to `WORKDIR/tb/` through tensorboardX (no
TensorFlow needed).

MFU = (model FLOPs of the step per device, `model_flops`) / (step time) / (the
device's peak FLOP/s: `bench.peak_tflops`, or the table below by device kind).
On CPU there is no peak, so no MFU is reported.  Model FLOPs, not XLA's cost
analysis: that counts a scanned loop's body once (3.1 TFLOP for the paper step's
141, measured on an H200) and counts rematerialised work as useful.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

from fifa_jax import paths, tokens

# Dense bf16 peak TFLOP/s per device (vendor figures).
PEAK_TFLOPS = {
    "H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0,
    "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v5": 459.0, "TPU v4": 275.0,
    "TPU v6 lite": 918.0, "TPU v6e": 918.0,
}


def peak_tflops(configured: float | None = None) -> float | None:
  if configured:
    return configured
  kind = jax.devices()[0].device_kind
  for name, tf in sorted(PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):
    if name.lower() in kind.lower():
      return tf
  return None


def model_flops(llama, batch: int, seq: int, *, train_base: bool = False) -> float:
  """FLOPs one training step of the LLM must do over `batch` rows of `seq` tokens
  (the PaLM convention: no recompute).  Per token and matmul weight: 2 forward and 2
  for the input gradient, plus 2 for the weight gradient when the base is trained (a
  LoRA adapter's are negligible); attention scores and values add 4 S^2 d per layer
  forward, 3 times that with the backward.  The LLM is about 98 % of FiFa-MLLM's
  compute at the paper's shapes; the face encoder and decoders are left out."""
  h, hd = llama.hidden_size, llama.head_dim
  q = llama.num_attention_heads * hd
  kv = llama.num_key_value_heads * hd
  per_layer = h * (2 * q + 2 * kv) + 3 * h * llama.intermediate_size
  matmul = llama.num_hidden_layers * per_layer + h * llama.vocab_size  # + lm_head
  per_token = (6 if train_base else 4) * matmul
  attention = 3 * 4 * seq * seq * q * llama.num_hidden_layers
  return float(batch * (seq * per_token + attention))


def compiled_flops(compiled) -> float | None:
  """FLOPs of one call of a compiled (per-device) program, or None if XLA does not say.
  A while loop's body (scanned layers) is counted once, whatever its trip count."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  if not cost or "flops" not in cost:
    return None
  return float(cost["flops"])


class Accumulator:
  """Sums the step metrics on the host between two log steps."""

  def __init__(self):
    self.reset()

  def reset(self):
    self.scalars: dict[str, float] = {}
    self.per_task: dict[str, np.ndarray] = {}
    self.steps = 0
    self.skipped = 0
    self.t0 = time.perf_counter()

  def add(self, m: dict) -> None:
    m = jax.device_get(m)
    self.steps += 1
    self.skipped += int(not bool(m["finite"]))
    for k, v in m.items():
      if k == "per_task":
        for name, arr in v.items():
          self.per_task[name] = self.per_task.get(name, 0) + np.asarray(arr, np.float64)
      elif k not in ("finite", "nonfinite"):  # flags, not quantities to average
        self.scalars[k] = self.scalars.get(k, 0.0) + float(v)

  def summary(self, prefix: str = "train") -> dict[str, float]:
    n = max(self.steps, 1)
    out = {f"{prefix}/{k}": v / n for k, v in self.scalars.items() if k not in ("lr",)}
    if "lr" in self.scalars:
      out["lr"] = self.scalars["lr"] / n
    pt = self.per_task
    if pt:
      for i, task in enumerate(tokens.TASKS):
        if pt["samples"][i] == 0:
          continue
        if pt["text_count"][i] > 0:
          out[f"{prefix}/{task}/text"] = pt["text_sum"][i] / pt["text_count"][i]
        if pt["mask_count"][i] > 0:
          out[f"{prefix}/{task}/mask_bce"] = pt["mask_bce_sum"][i] / pt["mask_count"][i]
          out[f"{prefix}/{task}/mask_dice"] = pt["mask_dice_sum"][i] / pt["mask_count"][i]
        out[f"{prefix}/{task}/samples"] = pt["samples"][i]
    if self.skipped:
      out[f"{prefix}/skipped_steps"] = float(self.skipped)
    return out

  def throughput(self, flops_per_device: float | None, peak: float | None) -> dict[str, float]:
    dt = time.perf_counter() - self.t0
    pt = self.per_task
    samples = float(pt["samples"].sum()) if pt else 0.0
    toks = float(pt["tokens"].sum()) if pt else 0.0
    out = {"perf/step_time_s": dt / max(self.steps, 1), "perf/samples_per_s": samples / dt,
           "perf/tokens_per_s": toks / dt}
    if flops_per_device and peak:
      out["perf/mfu"] = flops_per_device * self.steps / dt / (peak * 1e12)
    return out


class MetricsWriter:
  """JSONL + TensorBoard, process 0 only.

  `mirror`: a URL (a gs:// workdir) the folder is copied to while the run goes, at
  most every `mirror_every_s` seconds and when it closes, so TensorBoard and
  `fifa_jax.train.plot` can follow a pod job from anywhere.  A run resumed on another
  machine first takes the mirror's metrics.jsonl, so the copy up never shortens it.
  """

  def __init__(self, workdir: str | Path, tensorboard: bool = True, *, mirror: str | None = None,
               mirror_every_s: float = 60.0):
    self.active = jax.process_index() == 0
    self.tb = None
    self.mirror, self.every_s, self.synced = mirror, mirror_every_s, time.monotonic()
    if not self.active:
      return
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    self.dir = workdir
    if mirror and not (workdir / "metrics.jsonl").exists():
      paths.fetch_file(f"{mirror.rstrip('/')}/metrics.jsonl", workdir / "metrics.jsonl")
    self.jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)
    if tensorboard:
      # lazy: tensorboardX only when TensorBoard files are written
      from tensorboardX import SummaryWriter
      self.tb = SummaryWriter(str(workdir / "tb"))

  def write(self, step: int, values: dict[str, float]) -> None:
    if not self.active:
      return
    self.jsonl.write(json.dumps({"step": step, "time": time.time(),
                                 **{k: float(v) for k, v in values.items()}}) + "\n")
    if self.tb is not None:
      for k, v in values.items():
        self.tb.add_scalar(k, float(v), step)
    if self.mirror and time.monotonic() - self.synced >= self.every_s:
      self.sync()

  def sync(self) -> None:
    """Copy the folder to the mirror now; a failed copy is reported, never fatal."""
    if not (self.active and self.mirror):
      return
    if self.tb is not None:
      self.tb.flush()
    try:
      paths.stage_out(self.dir, self.mirror)
    except paths.PathError as e:
      print(f"metrics: {e}; the run goes on, the next copy will retry", file=sys.stderr, flush=True)
    self.synced = time.monotonic()

  def close(self) -> None:
    if not self.active:
      return
    self.jsonl.close()
    if self.tb is not None:
      self.tb.close()
    self.sync()


def read_jsonl(path: str | Path) -> list[dict]:
  return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
