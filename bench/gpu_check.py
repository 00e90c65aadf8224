"""The paper-size step and generation on one GPU, against transformers + peft (issue 17).

One section per process, so that each one's peak memory is its own and a crash or an
out-of-memory in one leaves the others' figures:

  python bench/gpu_check.py fifa_train --out DIR   # whole FiFa-MLLM train step, recipe shapes
  python bench/gpu_check.py llm_train  --out DIR   # fifa-jax's LLM LoRA step alone
  python bench/gpu_check.py generate   --out DIR   # fifa-jax generation, KV cache, greedy
  python bench/gpu_check.py torch      --out DIR   # transformers' generate + the peft step
  python bench/gpu_check.py report     --out DIR   # the markdown table for bench/RESULTS.md

`bench/gpu_check.sh` runs them all in one call of a lent GPU.  `--smoke` runs every
section with tiny shapes on the CPU (what CI-less checking before a lease needs).

Shapes (the paper recipe, configs/gpu_4x_h800.yaml): per-device batch 10 (40 over 4
GPUs), 512 tokens (the second of the recipe's length buckets: 196 image tokens + text),
FaRL ViT-B/16, Vicuna-7B widths with 32 scanned layers, LoRA r128 on q/v, SAM decoder,
bf16 compute, fp32 parameters, rematerialised layers.  Generation: batch 32, a prompt of
BOS + 196 image tokens + 16 text tokens, 256 new tokens, greedy, no early stop.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_train  # noqa: E402  (same folder)

RECIPE = "configs/gpu_4x_h800.yaml"
PAPER = dict(batch=10, seq=512, gen_batch=32, gen_text=16, gen_new=256, steps=5)
SMOKE = dict(batch=2, seq=128, gen_batch=2, gen_text=8, gen_new=8, steps=2)
RECIPE_STEPS, RECIPE_BATCH = 12_500, 40


def _vicuna(smoke: bool, **over):
  from fifa_jax.models.llama import LlamaConfig
  from fifa_jax.models.lora import LoraConfig

  lora = LoraConfig(rank=8 if smoke else 128, alpha=16.0 if smoke else 256.0, dropout=0.0,
                    target_modules=("q_proj", "v_proj"))
  if smoke:
    return LlamaConfig(**bench_train.MID, dtype="bfloat16", lora=lora, **over)
  return LlamaConfig.vicuna_7b(lora=lora, **over)


def _peak_gib() -> float | None:
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  return round(stats["peak_bytes_in_use"] / 2**30, 2) if "peak_bytes_in_use" in stats else None


def _env() -> dict:
  import jax
  import flax
  dev = jax.devices()[0]
  return {"date": str(datetime.date.today()), "device": dev.device_kind, "platform": dev.platform,
          "jax": jax.__version__, "flax": flax.__version__}


def fifa_train(sh: dict, smoke: bool, remat: bool = True) -> dict:
  from fifa_jax.train import metrics as metrics_lib
  res = _env()
  info: dict = {}
  if smoke:
    args = ("tiny", {}, sh["batch"], sh["seq"], sh["steps"], remat, None, ())
  else:  # the recipe file, on one device: fsdp 1 and the recipe's per-device batch
    args = ("paper", {}, sh["batch"], sh["seq"], sh["steps"], remat, RECIPE, ("mesh.fsdp=1",))
  t, tok_s, flops, _ = bench_train.fifa_step(*args, info=info)
  fcfg = info["fcfg"]
  peak = metrics_lib.peak_tflops()
  b, s = sh["batch"], sh["seq"]
  model_flops = metrics_lib.model_flops(fcfg.llama, b, s)  # XLA's count sees one scanned layer
  res.update(remat=remat, batch=b, seq=s, s_per_step=t, tokens_per_s=tok_s, samples_per_s=b / t,
             xla_flops=flops, model_flops=model_flops, peak_tflops=peak,
             mfu_xla=flops / t / (peak * 1e12) if flops and peak else None,
             mfu_model=model_flops / t / (peak * 1e12) if peak else None,
             init_s=info["init_s"], compile_s=info["compile_s"],
             memory_analysis=info["memory_analysis"], peak_gib=_peak_gib(),
             llama_params=info["llama_params"])
  return res


def llm_train(sh: dict, smoke: bool) -> dict:
  res = _env()
  info: dict = {}
  for remat in (False, True):  # remat only where the plain step does not fit
    cfg = _vicuna(smoke, scan_layers=True, remat=remat,
                  attention_implementation=None if smoke else "cudnn")
    try:
      t, tok_s = bench_train.jax_llm_step(cfg, sh["batch"], sh["seq"], sh["steps"], info=info)
      break
    except Exception as e:  # noqa: BLE001 - an out-of-memory here means: try with remat
      if remat or "RESOURCE_EXHAUSTED" not in str(e):
        raise
      res["no_remat_error"] = str(e).splitlines()[0][:300]
  res.update(batch=sh["batch"], seq=sh["seq"], remat=remat, s_per_step=t, tokens_per_s=tok_s,
             peak_gib=_peak_gib(), **info)
  return res


def generate(sh: dict, smoke: bool, attention: str | None = "cudnn", trace: str | None = None,
             layout: bool = True) -> dict:
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from fifa_jax.models import fifa
  from fifa_jax.models.decoding import decoding_layout
  from fifa_jax.models.generate import GenerationConfig

  res = _env()
  if smoke:
    cfg = fifa.FiFaConfig.tiny()
    cfg = dataclasses.replace(cfg, llama=dataclasses.replace(cfg.llama, scan_layers=True))
  else:
    cfg = fifa.FiFaConfig.paper()
    cfg = dataclasses.replace(cfg, llama=dataclasses.replace(
        cfg.llama, scan_layers=True, attention_implementation=attention))
  t0 = time.perf_counter()
  model = nnx.jit(lambda: fifa.FiFaMLLM(cfg, rngs=nnx.Rngs(0)))()
  jax.block_until_ready(nnx.state(model))
  res["init_s"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  if layout:  # unrolled layers, adapters folded in, bf16 weights (models/decoding.py)
    model = decoding_layout(model, "bfloat16")
  else:  # the training layout with its weights cast to bf16
    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, jax.tree.map(
        lambda x: x.astype(jnp.bfloat16) if jnp.issubdtype(x.dtype, jnp.floating) else x, state))
  jax.block_until_ready(nnx.state(model))
  res.update(layout="decoding" if layout else "training", layout_s=time.perf_counter() - t0)
  b, n_img = sh["gen_batch"], cfg.num_image_tokens
  rng = np.random.default_rng(0)
  text = rng.integers(3, cfg.image_token_id, size=(b, sh["gen_text"]))
  ids = np.concatenate([np.full((b, 1), 1), np.full((b, n_img), cfg.image_token_id), text], axis=1)
  ids = jnp.asarray(ids, jnp.int32)
  pixels = jnp.asarray(rng.normal(size=(b, cfg.image_size, cfg.image_size, 3)), jnp.float32)
  gcfg = GenerationConfig(max_new_tokens=sh["gen_new"], eos_token_ids=())  # every row runs to the end

  def run():
    out = model.generate(ids, pixels, config=gcfg)
    jax.block_until_ready(out.tokens)
    return out

  t0 = time.perf_counter()
  out = run()
  res["first_call_s"] = time.perf_counter() - t0  # compile + one run
  times = []
  for _ in range(2):
    t0 = time.perf_counter()
    out = run()
    times.append(time.perf_counter() - t0)
  t = min(times)
  new = int(np.asarray(out.lengths).sum())
  if trace:
    res["trace_top"] = profile(run, trace)
  res.update(attention=attention, batch=b, prompt_len=int(ids.shape[1]), new_tokens=sh["gen_new"], s=t,
             generated=new, tokens_per_s=new / t, ms_per_step=t / sh["gen_new"] * 1e3,
             segs=int(np.asarray(out.seg_valid).sum()), peak_gib=_peak_gib())
  return res


def torch_ref(sh: dict, smoke: bool) -> dict:
  import torch
  import transformers
  import peft

  device = "cpu" if smoke else "cuda"
  res = {"date": str(datetime.date.today()), "torch": torch.__version__,
         "transformers": transformers.__version__, "peft": peft.__version__,
         "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
  cfg = _vicuna(smoke)
  t0 = time.perf_counter()
  model = bench_train.hf_llama(cfg, "bfloat16", device)
  res["init_s"] = time.perf_counter() - t0
  res["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
  # Generation: the same prompt length as fifa-jax's (BOS + image tokens + text).
  b, n_img = sh["gen_batch"], 4 if smoke else 196
  prompt = 1 + n_img + sh["gen_text"]
  ids = torch.from_numpy(np.random.default_rng(0).integers(3, cfg.vocab_size, (b, prompt))).to(device)
  kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)

  def gen(n):
    with torch.no_grad():
      out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
    if device == "cuda":
      torch.cuda.synchronize()
    return out

  gen(4)  # warm-up
  times = []
  for _ in range(2):
    t0 = time.perf_counter()
    out = gen(sh["gen_new"])
    times.append(time.perf_counter() - t0)
  t = min(times)
  new = (out.shape[1] - prompt) * b
  res["generate"] = dict(batch=b, prompt_len=prompt, new_tokens=sh["gen_new"], s=t, generated=new,
                         tokens_per_s=new / t, ms_per_step=t / sh["gen_new"] * 1e3)
  print("torch generate", res["generate"], flush=True)
  if device == "cuda":
    torch.cuda.reset_peak_memory_stats()
  t, tok_s, mem = bench_train.torch_llm_step(cfg, sh["batch"], sh["seq"], sh["steps"],
                                             dtype="bfloat16", device=device, model=model)
  res["llm_train"] = dict(batch=sh["batch"], seq=sh["seq"], s_per_step=t, tokens_per_s=tok_s,
                          peak_gib=mem, gradient_checkpointing=False)
  return res


def profile(fn, folder: str, top: int = 25) -> dict:
  """Device time by kernel name over one call of `fn` (from a perfetto trace)."""
  import glob
  import gzip
  import jax
  with jax.profiler.trace(folder, create_perfetto_trace=True):
    fn()
  path = sorted(glob.glob(f"{folder}/**/perfetto_trace.json.gz", recursive=True))[-1]
  events = json.loads(gzip.open(path).read())
  events = events["traceEvents"] if isinstance(events, dict) else events
  names = {e["pid"]: e["args"]["name"] for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  total: dict = {}
  for e in events:
    if e.get("ph") == "X" and "GPU" in names.get(e.get("pid"), "").upper():
      n = e["name"][:90]
      c = total.setdefault(n, [0.0, 0])
      c[0] += e.get("dur", 0) / 1e3
      c[1] += 1
  rows = sorted(total.items(), key=lambda kv: -kv[1][0])
  return {"processes": sorted(set(names.values())),
          "top": [{"kernel": n, "ms": round(ms, 2), "calls": k} for n, (ms, k) in rows[:top]]}


def generate_scanned(sh: dict, smoke: bool) -> dict:
  return generate(sh, smoke, layout=False)


def generate_xla(sh: dict, smoke: bool) -> dict:
  return generate(sh, smoke, attention=None)


def generate_profile(sh: dict, smoke: bool) -> dict:
  return generate(dict(sh, gen_new=32), smoke, trace="/tmp/gpu_check_trace")


def fifa_train_noremat(sh: dict, smoke: bool) -> dict:
  return fifa_train(sh, smoke, remat=False)


SECTIONS = {"fifa_train": fifa_train, "fifa_train_noremat": fifa_train_noremat,
            "generate_xla": generate_xla, "generate_scanned": generate_scanned, "generate_profile": generate_profile, "llm_train": llm_train, "generate": generate, "torch": torch_ref}


def _load(out: Path, name: str) -> dict:
  p = out / f"{name}.json"
  return json.loads(p.read_text()) if p.exists() else {}


def report(out: Path) -> str:
  """The table for bench/RESULTS.md from the sections' JSON (missing figures: '-')."""
  ft, lt, ge, tr = (_load(out, n) for n in ("fifa_train", "llm_train", "generate", "torch"))
  f = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
  tt, tg = tr.get("llm_train", {}), tr.get("generate", {})
  ratio = lambda a, b: f(a / b, ".2f") + "x" if a and b else "-"  # noqa: E731
  lines = [f"# {ft.get('date') or tr.get('date')}: {ft.get('device') or tr.get('device')}, "
           f"jax {ft.get('jax')} / flax {ft.get('flax')}, torch {tr.get('torch')} / transformers "
           f"{tr.get('transformers')} / peft {tr.get('peft')}", "",
           "| what | figure | target |", "|---|---|---|"]
  if ft:
    ma = ft.get("memory_analysis", {})
    lines += [
        f"| FiFa step ({ft['batch']}x{ft['seq']}): compile | {f(ft['compile_s'], '.1f')} s "
        f"(random init {f(ft['init_s'], '.1f')} s) | < 180 s |",
        f"| FiFa step: time | {f(ft['s_per_step'], '.3f')} s/step, {f(ft['tokens_per_s'], ',.0f')} "
        f"tokens/s, {f(ft['samples_per_s'], '.1f')} samples/s | |",
        f"| FiFa step: MFU, XLA's FLOPs ({f((ft['xla_flops'] or 0) / 1e12, '.1f')} TFLOP, "
        f"remat included) / time / {ft['peak_tflops']} TFLOP/s | {f(ft['mfu_xla'], '.1%')} | >= 45 % |",
        f"| FiFa step: MFU, LLM model FLOPs ({f(ft['model_flops'] / 1e12, '.1f')} TFLOP, no "
        f"recompute) | {f(ft['mfu_model'], '.1%')} | |",
        f"| FiFa step: peak memory | {f(ft['peak_gib'], '.1f')} GiB (XLA temp "
        f"{f(ma.get('temp_size_in_bytes', 0) / 2**30, '.1f')} GiB, arguments "
        f"{f(ma.get('argument_size_in_bytes', 0) / 2**30, '.1f')} GiB) | |"]
  if lt or tt:
    lines += [
        f"| LLM LoRA step alone, fifa-jax (remat {lt.get('remat')}) | "
        f"{f(lt.get('s_per_step'), '.3f')} s/step, {f(lt.get('tokens_per_s'), ',.0f')} tokens/s, "
        f"compile {f(lt.get('compile_s'), '.1f')} s, peak {f(lt.get('peak_gib'), '.1f')} GiB | |",
        f"| same step, transformers + peft (bf16, {tr.get('attn_implementation')} attention, no "
        f"checkpointing) | {f(tt.get('s_per_step'), '.3f')} s/step, "
        f"{f(tt.get('tokens_per_s'), ',.0f')} tokens/s, peak {f(tt.get('peak_gib'), '.1f')} GiB | |",
        f"| ratio (tokens/s) | **{ratio(lt.get('tokens_per_s'), tt.get('tokens_per_s'))}** | >= 1.3x |"]
  if ge or tg:
    lines += [
        f"| generation, fifa-jax (bf16 weights, batch {ge.get('batch')}, prompt "
        f"{ge.get('prompt_len')}, {ge.get('new_tokens')} new) | {f(ge.get('tokens_per_s'), ',.0f')} "
        f"tokens/s ({f(ge.get('ms_per_step'), '.1f')} ms/step; first call with compile "
        f"{f(ge.get('first_call_s'), '.1f')} s) | |",
        f"| generation, transformers' generate (bf16) | {f(tg.get('tokens_per_s'), ',.0f')} tokens/s "
        f"({f(tg.get('ms_per_step'), '.1f')} ms/step) | |",
        f"| ratio | **{ratio(ge.get('tokens_per_s'), tg.get('tokens_per_s'))}** | >= 2x |"]
  if ft.get("s_per_step"):
    per_global = ft["s_per_step"] * RECIPE_BATCH / ft["batch"]  # one chip: 4 steps of 10
    one = RECIPE_STEPS * per_global / 3600
    lines += ["", f"Paper recipe ({RECIPE_STEPS:,} steps at batch {RECIPE_BATCH}): "
              f"{one:.1f} h on one chip; on 4 chips data-parallel (no communication counted) "
              f"{one / 4:.1f} h, i.e. {one:.1f} chip-hours (goal: within 5)."]
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("section", choices=[*SECTIONS, "report"])
  p.add_argument("--out", default="gpu_check_out")
  p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
  a = p.parse_args(argv)
  out = Path(a.out)
  out.mkdir(parents=True, exist_ok=True)
  if a.section == "report":
    print(report(out))
    return 0
  sh = SMOKE if a.smoke else PAPER
  t0 = time.perf_counter()
  try:
    res = SECTIONS[a.section](sh, a.smoke)
    status = 0
  except Exception as e:  # noqa: BLE001 - record and let the next section run
    traceback.print_exc()
    res, status = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:400]}"}, 1
  res["wall_s"] = time.perf_counter() - t0
  (out / f"{a.section}.json").write_text(json.dumps(res, indent=1, default=str))
  print(a.section, json.dumps(res, default=str), flush=True)
  return status


if __name__ == "__main__":
  raise SystemExit(main())
