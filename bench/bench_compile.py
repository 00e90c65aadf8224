"""Compile time of the LLM train step (forward + backward w.r.t. LoRA, remat on) against depth,
with the decoder layers unrolled and scanned (`LlamaConfig.scan_layers`).

  .venv/bin/python bench/bench_compile.py                     # hidden 512, 4/16/32 layers
  .venv/bin/python bench/bench_compile.py --vicuna --layers 32  # Vicuna-7B widths, bf16

Nothing is allocated: the step is lowered and compiled from abstract shapes.
"""

from __future__ import annotations

import argparse
import datetime
import time

import jax
import jax.numpy as jnp
from flax import nnx

from fifa_jax.models.llama import LlamaConfig, LlamaForCausalLM
from fifa_jax.models.lora import LoraConfig


def compile_seconds(cfg: LlamaConfig, batch: int, seq: int) -> float:
  abstract = nnx.eval_shape(lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)))
  graphdef, lora, rest = nnx.split(abstract, nnx.LoRAParam, ...)
  lora, rest = nnx.to_pure_dict(lora), nnx.to_pure_dict(rest)

  def loss(lora, rest, ids):
    return nnx.merge(graphdef, lora, rest).forward(ids).logits.mean()

  ids = jax.ShapeDtypeStruct((batch, seq), jnp.int32)
  t = time.perf_counter()
  jax.jit(jax.grad(loss)).lower(lora, rest, ids).compile()
  return time.perf_counter() - t


def main(argv=None) -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--vicuna", action="store_true", help="Vicuna-7B widths in bf16 (else hidden 512)")
  p.add_argument("--layers", type=int, nargs="+", default=[4, 16, 32])
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq", type=int, default=256)
  a = p.parse_args(argv)
  print(f"# {datetime.date.today()} {jax.devices()[0].device_kind}, jax {jax.__version__}")
  lora = LoraConfig(rank=128 if a.vicuna else 16, dropout=0.0)
  for layers in a.layers:
    for scan in (False, True):
      if a.vicuna:
        cfg = LlamaConfig.vicuna_7b(num_hidden_layers=layers, lora=lora, scan_layers=scan, remat=True)
      else:
        cfg = LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1376,
                          num_hidden_layers=layers, num_attention_heads=8, lora=lora,
                          scan_layers=scan, remat=True)
      s = compile_seconds(cfg, a.batch, a.seq)
      print(f"layers {layers:2d} {'scanned ' if scan else 'unrolled'}: lower + compile {s:6.1f} s",
            flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
