"""Train-step throughput: fifa-jax against transformers + peft, side by side in one run.

  .venv/bin/python bench/bench_train.py              # CPU: tiny + mid-size, and the LLM ratio
  .venv/bin/python bench/bench_train.py --gpu        # lent GPU: paper-size step, MFU, memory

CPU rows:
  llm-mid    the LLM alone (hidden 512, 4 layers, heads of 64, vocab 32000, LoRA r128 on
             all 7 linear layers, frozen base, AdamW), 4 x 256 tokens: fifa-jax's
             LlamaForCausalLM in one jitted step vs transformers' LlamaForCausalLM + peft
             doing the same step; the ratio of tokens/s is the headline;
  fifa-tiny  the whole FiFa-MLLM step (tiny preset, configs/tiny_cpu.yaml shapes);
  fifa-mid   the whole FiFa-MLLM step with the llm-mid LLM (ViT, decoders as tiny).
GPU rows (--gpu): the paper-size FiFa-MLLM step in bf16 (FaRL ViT-B/16 + Vicuna-7B with
scanned layers + LoRA r128 + SAM decoder) with its MFU from XLA's FLOP count and peak memory, and the
transformers + peft bf16 Vicuna-7B LoRA step on the same tokens.
Timings are medians over --steps steps after warm-up (compile excluded).
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fifa_jax.models.llama import LlamaConfig, LlamaForCausalLM
from fifa_jax.models.lora import TARGETS, LoraConfig
from fifa_jax.train.losses import text_loss

MID = dict(vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=4,
           num_attention_heads=8)


def median_time(fn, steps: int, warmup: int = 2) -> float:
  for _ in range(warmup):
    fn()
  ts = []
  for _ in range(steps):
    t = time.perf_counter()
    fn()
    ts.append(time.perf_counter() - t)
  return statistics.median(ts)


# ---------------------------------------------------------------------------
# fifa-jax LLM LoRA step


def jax_llm_step(cfg: LlamaConfig, batch: int, seq: int, steps: int, info: dict | None = None):
  """fifa-jax's LLM alone: LoRA step on a frozen base, every token a label (as labels=ids).
  `info` (if given) receives compile time, XLA's FLOPs and memory analysis."""
  from fifa_jax.train import metrics as metrics_lib

  model = nnx.jit(lambda: LlamaForCausalLM(cfg, rngs=nnx.Rngs(0)))()
  graphdef, lora, rest = nnx.split(model, nnx.LoRAParam, ...)
  # Plain arrays: merged inside the step, they become Variables of its own trace level,
  # which scanned layers (nnx.scan) require.
  lora, rest = nnx.to_pure_dict(lora), nnx.to_pure_dict(rest)
  del model
  tx = optax.adamw(1e-4)
  opt = tx.init(lora)
  ids = jnp.asarray(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq)), jnp.int32)

  def step(lora, opt, rest, ids):
    def loss_fn(lora):
      logits = nnx.merge(graphdef, lora, rest)(ids)
      return text_loss(logits, ids, jnp.ones_like(ids))
    loss, g = jax.value_and_grad(loss_fn)(lora)
    upd, opt = tx.update(g, opt, lora)
    return optax.apply_updates(lora, upd), opt, loss

  t0 = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=(0, 1)).lower(lora, opt, rest, ids).compile()
  if info is not None:
    info.update(compile_s=time.perf_counter() - t0, flops=metrics_lib.compiled_flops(compiled),
                memory_analysis=memory_analysis(compiled))
  state = {"lora": lora, "opt": opt}

  def run():
    state["lora"], state["opt"], loss = compiled(state["lora"], state["opt"], rest, ids)
    loss.block_until_ready()

  t = median_time(run, steps)
  return t, batch * seq / t


def hf_llama(cfg: LlamaConfig, dtype: str = "float32", device: str = "cpu"):
  """transformers' LlamaForCausalLM of `cfg`'s shapes with random weights, built straight
  on `device` in `dtype` (a 7B model built on the host first takes minutes)."""
  import torch
  from transformers import LlamaConfig as HFConfig, LlamaForCausalLM as HFLlama

  torch.manual_seed(0)
  hf = HFConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size,
                intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers,
                num_attention_heads=cfg.num_attention_heads,
                num_key_value_heads=cfg.num_key_value_heads, tie_word_embeddings=False)
  previous = torch.get_default_dtype()
  torch.set_default_dtype(getattr(torch, dtype))
  try:
    with torch.device(device):
      return HFLlama(hf).eval()
  finally:
    torch.set_default_dtype(previous)


def torch_llm_step(cfg: LlamaConfig, batch: int, seq: int, steps: int, dtype="float32", device="cpu",
                   model=None):
  import torch
  from peft import LoraConfig as PeftLora, get_peft_model

  model = hf_llama(cfg, dtype, device) if model is None else model
  lora = cfg.lora
  model = get_peft_model(model, PeftLora(r=lora.rank, lora_alpha=lora.alpha,
                                         lora_dropout=lora.dropout,
                                         target_modules=list(lora.target_modules)))
  model.train()
  opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
  ids = torch.from_numpy(np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, seq))).to(device)

  def run():
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device != "cpu":
      torch.cuda.synchronize()

  t = median_time(run, steps)
  mem = torch.cuda.max_memory_allocated() / 2**30 if device != "cpu" else None
  return t, batch * seq / t, mem


# ---------------------------------------------------------------------------
# The whole FiFa-MLLM step (fifa_jax.train.step)


def fifa_step(preset: str, llama: dict, batch: int, seq: int, steps: int, remat: bool = False,
              config: str | None = None, extra: tuple[str, ...] = (), info: dict | None = None):
  """The whole FiFa-MLLM train step on random data; `info` (if given) receives compile
  time, XLA's memory analysis and the parameter count."""
  from fifa_jax import config as config_lib, mesh as mesh_lib
  from fifa_jax.tokens import expand_image_tokens
  from fifa_jax.train import metrics as metrics_lib, optim, state as state_lib, step as step_lib

  over = [f"model.preset={preset}", f"train.batch_size={batch}", "train.steps=1000",
          f"model.remat={str(remat).lower()}"]
  if preset == "tiny":
    over += ["model.lora_rank=4", "model.lora_alpha=8", "model.lora_dropout=0.0"]
  cfg = config_lib.load(config, over + [f"model.llama.{k}={v}" for k, v in llama.items()] + list(extra))
  fcfg = config_lib.model_config(cfg)
  mesh = mesh_lib.make_mesh()
  setup = state_lib.make_setup(cfg, fcfg, mesh)
  t0 = time.perf_counter()
  state = state_lib.init_state(setup, 0, jit=True)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - t0
  rng = np.random.default_rng(0)
  body = list(rng.integers(3, 900, seq - fcfg.num_image_tokens - 1))
  row = expand_image_tokens([1, fcfg.image_token_id] + body, fcfg.image_token_id, fcfg.num_image_tokens)
  row[-4] = fcfg.seg_token_id
  hm = wm = fcfg.image_size  # targets at the image's resolution (the loss upsamples the masks)
  b = {"input_ids": np.tile(np.asarray(row, np.int32), (batch, 1)),
       "attention_mask": np.ones((batch, seq), np.int32), "loss_mask": np.ones((batch, seq), np.int32),
       "pixels": rng.normal(size=(batch, fcfg.image_size, fcfg.image_size, 3)).astype(np.float32),
       "boxes": np.tile(np.asarray([[[8.0, 8.0, 40.0, 40.0]]], np.float32), (batch, 1, 1)),
       "det_label": np.ones((batch,), np.int32), "cls_label": np.ones((batch,), np.int32),
       # One [SEG] per row (at seq - 4, predicted from seq - 5): a slot each.
       "masks": (rng.random((batch, 2, hm, wm)) > 0.5).astype(np.uint8),
       "seg_rows": np.arange(batch, dtype=np.int32), "seg_cols": np.full((batch,), seq - 5, np.int32),
       "seg_valid": np.ones((batch,), bool),
       "task": np.zeros((batch,), np.int32)}
  gb = step_lib.to_global(mesh, b)
  fn = step_lib.make_train_step(setup, cfg.loss, 1, optim.schedule(cfg.optim, 1000))
  t0 = time.perf_counter()
  with jax.set_mesh(mesh):
    compiled = fn.lower(state, gb).compile()
  compile_s = time.perf_counter() - t0
  flops = metrics_lib.compiled_flops(compiled)
  box = {"state": state}

  def run():
    box["state"], m = compiled(box["state"], gb)
    jax.block_until_ready(m["loss"])

  with jax.set_mesh(mesh):
    t = median_time(run, steps)
  stats = jax.devices()[0].memory_stats() or {}
  mem = stats.get("peak_bytes_in_use", 0) / 2**30 or None
  if info is not None:
    info.update(init_s=init_s, compile_s=compile_s, memory_analysis=memory_analysis(compiled),
                fcfg=fcfg, llama_params=_count(box["state"], "llm"))
  return t, batch * seq / t, flops, mem


def memory_analysis(compiled) -> dict:
  """XLA's per-device byte counts of a compiled program (empty where the backend has none)."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    return {}
  names = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
           "generated_code_size_in_bytes", "alias_size_in_bytes")
  return {n: int(getattr(m, n)) for n in names if hasattr(m, n)}


def _count(state, part: str) -> int:
  """Parameters whose path contains `part` (frozen and trained)."""
  total = 0
  for key in ("params", "frozen"):
    for path, leaf in jax.tree_util.tree_leaves_with_path(state[key]):
      if part in jax.tree_util.keystr(path):
        total += int(np.prod(leaf.shape))
  return total


def main(argv=None) -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--gpu", action="store_true")
  p.add_argument("--steps", type=int, default=5)
  a = p.parse_args(argv)
  print(f"# {datetime.date.today()} {jax.devices()[0].device_kind} x{jax.device_count()}, "
        f"jax {jax.__version__}")
  if not a.gpu:
    lcfg = LlamaConfig(**MID, lora=LoraConfig(rank=128, alpha=256.0, dropout=0.0, target_modules=TARGETS))
    tj, kj = jax_llm_step(lcfg, 4, 256, a.steps)
    tt, kt, _ = torch_llm_step(lcfg, 4, 256, a.steps)
    print(f"llm-mid   fifa-jax {tj:.3f} s/step {kj:7.1f} tok/s | transformers+peft {tt:.3f} s/step "
          f"{kt:7.1f} tok/s | ratio {kj / kt:.2f}x")
    for name, preset, llama, batch, seq in (("fifa-tiny", "tiny", {}, 8, 128),
                                            ("fifa-mid", "tiny", MID, 4, 256)):
      t, k, flops, _ = fifa_step(preset, llama, batch, seq, a.steps)
      print(f"{name:9s} fifa-jax {t:.3f} s/step {k:7.1f} tok/s ({batch}x{seq}), "
            f"{(flops or 0) / 1e9:.1f} GFLOP/step")
    return 0
  from fifa_jax.train import metrics as metrics_lib
  peak = metrics_lib.peak_tflops()
  batch, seq = 4, 512
  t, k, flops, mem = fifa_step("paper", {"attention_implementation": "cudnn", "scan_layers": True},
                               batch, seq, a.steps, remat=True)
  mfu = flops / t / (peak * 1e12) if flops and peak else float("nan")
  print(f"fifa-paper bf16 {batch}x{seq}: {t:.3f} s/step {k:.0f} tok/s, MFU {mfu:.1%}, "
        f"peak memory {mem or float('nan'):.1f} GiB")
  lcfg = LlamaConfig.vicuna_7b(lora=LoraConfig(rank=128, alpha=256.0, dropout=0.0))
  tt, kt, tmem = torch_llm_step(lcfg, batch, seq, a.steps, dtype="bfloat16", device="cuda")
  print(f"transformers+peft vicuna-7b bf16 {batch}x{seq} (q,v LoRA r128): {tt:.3f} s/step {kt:.0f} "
        f"tok/s, peak memory {tmem:.1f} GiB | ratio {k / kt:.2f}x")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
