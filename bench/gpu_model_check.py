"""Paper-size FiFa-MLLM on one GPU: does it build, run in bf16, take cuDNN's flash
attention, and generate with a KV cache?  Prints figures and writes JSON.

  python bench/gpu_model_check.py [--out results.json] [--batch 2] [--text 128] [--new 16]

Not a test (CI has no GPU); results go to bench/RESULTS.md by hand, with date and device.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fifa_jax.models.generate import GenerationConfig
from fifa_jax.models import fifa


def _timed(fn, *args, repeat=3):
  out = fn(*args)
  jax.block_until_ready(out)
  t0 = time.perf_counter()
  for _ in range(repeat):
    out = fn(*args)
  jax.block_until_ready(out)
  return out, (time.perf_counter() - t0) / repeat


def _uses_cudnn_attention(compiled_text: str) -> bool:
  return "__cudnn$fmha" in compiled_text or "cudnn$fmha" in compiled_text


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", default="gpu_model_check.json")
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--text", type=int, default=128, help="text tokens after the image tokens")
  ap.add_argument("--new", type=int, default=16, help="tokens to generate")
  ap.add_argument("--tiny", action="store_true", help="the tiny config (a CPU smoke run)")
  ap.add_argument("--llm-layers", type=int, default=0, help="override Vicuna-7B's 32 layers (0: keep)")
  args = ap.parse_args()
  dev = jax.devices()[0]
  res: dict = {"jax": jax.__version__, "device": dev.device_kind, "platform": dev.platform}
  print(res, flush=True)

  # 1. jax.nn.dot_product_attention with the default implementation (None).
  q = jnp.zeros((2, 512, 32, 128), jnp.bfloat16)
  f = jax.jit(lambda q: jax.nn.dot_product_attention(q, q, q, is_causal=True))
  res["sdpa_default_uses_cudnn"] = _uses_cudnn_attention(f.lower(q).compile().as_text())

  # 2. The paper configuration: FaRL ViT-B/16 + Vicuna-7B (+LoRA r128), bf16 compute, fp32 params.
  cfg = fifa.FiFaConfig.tiny() if args.tiny else fifa.FiFaConfig.paper()
  if args.llm_layers:
    cfg = dataclasses.replace(cfg, llama=dataclasses.replace(cfg.llama, num_hidden_layers=args.llm_layers))
  res["llm_layers"] = cfg.llama.num_hidden_layers
  t0 = time.perf_counter()
  model = nnx.jit(lambda: fifa.FiFaMLLM(cfg, rngs=nnx.Rngs(0)))()
  jax.block_until_ready(nnx.state(model))
  res["init_s"] = round(time.perf_counter() - t0, 1)
  res["params"] = fifa.param_counts(cfg)["total"]
  print(f"initialised {res['params']:,} parameters in {res['init_s']} s", flush=True)

  b, n_img = args.batch, cfg.num_image_tokens
  rng = np.random.default_rng(0)
  text = rng.integers(3, cfg.image_token_id, size=(b, args.text))
  text[:, -4] = cfg.seg_token_id
  ids = np.concatenate([np.full((b, 1), 1), np.full((b, n_img), cfg.image_token_id), text], axis=1)
  ids = jnp.asarray(ids, jnp.int32)
  pixels = jnp.asarray(rng.normal(size=(b, cfg.image_size, cfg.image_size, 3)), jnp.float32)
  mask = jnp.ones_like(ids)

  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda state, ids, pixels, mask: nnx.merge(graphdef, state)(
      ids, pixels, attention_mask=mask))
  hlo = forward.lower(state, ids, pixels, mask).compile().as_text()
  res["forward_uses_cudnn_attention"] = _uses_cudnn_attention(hlo)
  out, dt = _timed(forward, state, ids, pixels, mask)
  tokens = b * ids.shape[1]
  res.update(forward_s=round(dt, 4), forward_tokens=tokens, forward_tokens_per_s=round(tokens / dt),
             logits_finite=bool(jnp.isfinite(out.logits).all()),
             mask_logits_shape=list(out.mask_logits.shape))
  print(f"forward: {tokens} tokens in {dt * 1e3:.1f} ms ({tokens / dt:,.0f} tokens/s)", flush=True)

  # 3. Generation with the KV cache; one (Region, Artifact) mask pair per [SEG].
  prompt = ids[:, : 1 + n_img + 16]
  gcfg = GenerationConfig(max_new_tokens=args.new, eos_token_ids=(2,))
  gen, dt = _timed(lambda: model.generate(prompt, pixels, config=gcfg), repeat=2)
  res.update(generate_s=round(dt, 3), generate_new_tokens=args.new,
             generate_ms_per_token=round(dt / args.new * 1e3, 2),
             generate_mask_shape=list(gen.mask_logits.shape))
  stats = dev.memory_stats() or {}
  res["peak_gib"] = round(stats.get("peak_bytes_in_use", 0) / 2**30, 2)
  print(json.dumps(res, indent=1), flush=True)
  with open(args.out, "w") as fh:
    json.dump(res, fh, indent=1)


if __name__ == "__main__":
  main()
