"""`fifa plan`: will a recipe fit its chips, and how fast can its step be? Nothing allocated.

The recipe's train step is compiled ahead of time from abstract parameters for its
mesh on N fake CPU devices (the shapes and shardings the chips would see), at the
largest length bucket and the recipe's global batch.  Per device it reports XLA's
memory analysis (arguments = parameters + optimizer state + batch, temporaries,
outputs not aliased to inputs), the model FLOPs of a step (`metrics.model_flops`:
XLA's own count sees one scanned layer), the collectives in the compiled program,
and a roofline bound: the step takes at least max(FLOPs / peak, bytes / bandwidth),
where bytes are one read of the arguments and one write and read of the
temporaries.  The plan fails (exit 1) when arguments + temporaries + outputs exceed
the chip's memory.  XLA:CPU's temporaries are an estimate of an accelerator's:
its fusion and scheduling differ, so leave some headroom.
"""

from __future__ import annotations

import dataclasses
import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from fifa_jax import config as config_lib, mesh as mesh_lib
from fifa_jax.train import metrics as metrics_lib
from fifa_jax.train import state as state_lib, step as step_lib


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  memory_gib: float  # HBM per device
  peak_tflops: float  # dense bf16
  hbm_tb_s: float


# Vendor datasheet figures per device (leads, not measurements).
CHIPS = {
    "h800": Chip("H800 SXM", 80 * 1e9 / 2**30, 989.0, 3.35),
    "h100": Chip("H100 SXM", 80 * 1e9 / 2**30, 989.0, 3.35),
    "h200": Chip("H200 SXM", 141 * 1e9 / 2**30, 989.0, 4.8),
    "v5e": Chip("TPU v5e", 16.0, 197.0, 0.819),
    "v5p": Chip("TPU v5p", 95.0, 459.0, 2.765),
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")


class PlanError(ValueError):
  """The recipe cannot be planned (bad mesh for the device count, say)."""


def abstract_batch(cfg: config_lib.Config, fcfg, mesh) -> dict:
  """ShapeDtypeStructs of one global batch at the largest bucket, sharded as training does."""
  b, t = cfg.train.batch_size, max(cfg.data.buckets)
  s = cfg.data.seg_capacity or 8 * b  # slots: the config's, else 8 [SEG]s a row
  hm = wm = fcfg.image_size
  shapes = {"input_ids": ((b, t), jnp.int32), "attention_mask": ((b, t), jnp.int32),
            "loss_mask": ((b, t), jnp.int32), "pixels": ((b, hm, wm, 3), jnp.float32),
            "boxes": ((b, 1, 4), jnp.float32), "det_label": ((b,), jnp.int32),
            "cls_label": ((b,), jnp.int32), "task": ((b,), jnp.int32),
            "masks": ((s, 2, hm, wm), jnp.uint8), "seg_rows": ((s,), jnp.int32),
            "seg_cols": ((s,), jnp.int32), "seg_valid": ((s,), jnp.bool_)}
  return {k: jax.ShapeDtypeStruct(shape, dtype, sharding=mesh_lib.batch_sharding(mesh, len(shape)))
          for k, (shape, dtype) in shapes.items()}


def plan(cfg: config_lib.Config, chip: Chip) -> dict:
  """The plan of `cfg` on the devices jax sees (see the module docstring)."""
  fcfg = config_lib.model_config(cfg)
  attention = fcfg.llama.attention_implementation
  if attention == "cudnn" and jax.devices()[0].platform == "cpu":
    # cuDNN's kernel cannot lower for CPU: plan with XLA's attention, whose temporaries
    # (the [B, H, T, T] scores) are larger than flash attention's, so the plan errs safe.
    fcfg = dataclasses.replace(fcfg, llama=dataclasses.replace(fcfg.llama, attention_implementation=None))
  try:
    mesh = mesh_lib.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  except ValueError as e:
    raise PlanError(f"mesh: {e}") from None
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if cfg.train.batch_size % shards:
    raise PlanError(f"train.batch_size {cfg.train.batch_size} does not split over data x fsdp = {shards}")
  setup = state_lib.make_setup(cfg, fcfg, mesh)
  fn = step_lib.make_train_step(setup, cfg.loss, cfg.train.grad_accum)
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = fn.lower(setup.abstract, abstract_batch(cfg, fcfg, mesh)).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  args, temp = int(mem.argument_size_in_bytes), int(mem.temp_size_in_bytes)
  out = int(mem.output_size_in_bytes) - int(mem.alias_size_in_bytes)
  n = jax.device_count()
  per = lambda tree: sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(tree)) / n  # noqa: E731
  hlo = compiled.as_text()
  collectives = {c: len(re.findall(rf"\b{c}(?:-start)?\(", hlo)) for c in COLLECTIVES}
  flops = metrics_lib.model_flops(fcfg.llama, cfg.train.batch_size, max(cfg.data.buckets),
                                  train_base=cfg.model.train_llm) / n
  total = args + temp + out
  t_flops = flops / (chip.peak_tflops * 1e12)
  t_bytes = (args + 2 * temp) / (chip.hbm_tb_s * 1e12)
  bound = max(t_flops, t_bytes)
  return {
      "name": cfg.name, "devices": n, "mesh": dict(mesh.shape), "chip": chip.name,
      "batch": cfg.train.batch_size, "seq": max(cfg.data.buckets), "remat": fcfg.llama.remat,
      "attention": attention if fcfg.llama.attention_implementation == attention else f"xla (for {attention})",
      "grad_accum": cfg.train.grad_accum,
      "params_gib": (per(setup.abstract["params"]) + per(setup.abstract["frozen"])
                     + per(setup.abstract["rest"])) / 2**30,
      "opt_gib": per(setup.abstract["opt_state"]) / 2**30,
      "args_gib": args / 2**30, "temp_gib": temp / 2**30, "out_gib": out / 2**30,
      "total_gib": total / 2**30, "chip_gib": chip.memory_gib, "fits": total <= chip.memory_gib * 2**30,
      "tflop_per_device": flops / 1e12, "collectives": collectives,
      "bound_s": bound, "bound_by": "FLOPs" if t_flops >= t_bytes else "memory",
      "mfu_at_bound": t_flops / bound if bound else None, "compile_s": compile_s,
  }


def format_plan(p: dict) -> str:
  coll = ", ".join(f"{k} {v}" for k, v in p["collectives"].items() if v) or "none"
  return "\n".join([
      f"{p['name']}: {p['devices']} x {p['chip']}, mesh {p['mesh']}, batch {p['batch']} x {p['seq']} "
      f"tokens, remat {p['remat']}, grad_accum {p['grad_accum']}, attention {p['attention']}",
      f"  per device: parameters {p['params_gib']:.2f} GiB, optimizer {p['opt_gib']:.2f} GiB; XLA: "
      f"arguments {p['args_gib']:.2f} + temporaries {p['temp_gib']:.2f} + outputs {p['out_gib']:.2f} "
      f"= {p['total_gib']:.2f} GiB of {p['chip_gib']:.1f} GiB -> {'fits' if p['fits'] else 'DOES NOT FIT'}",
      f"  model FLOPs per device and step: {p['tflop_per_device']:.2f} TFLOP; collectives: {coll}",
      f"  roofline: at least {p['bound_s'] * 1e3:.1f} ms per step ({p['bound_by']}-bound; MFU at that "
      f"bound {p['mfu_at_bound']:.0%}); compiled in {p['compile_s']:.1f} s"])
