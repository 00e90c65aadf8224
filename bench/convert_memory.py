"""Peak host memory of LLaMA conversion on a checkpoint with the 7B key layout.

    .venv/bin/python bench/convert_memory.py [--hidden 512] [--intermediate 1376] [--vocab 32000] [--json]

Writes a sharded HF safetensors folder with Vicuna-7B's names and layer count
(32 layers, every projection, norms, embed_tokens, lm_head; vocab 32000) but
shrunken widths, then, each in a fresh process: `load_hf` (HF -> fifa-jax) and,
with the model loaded, `save_hf` (fifa-jax -> HF).  Reports the peak RSS
(VmHWM) above the RSS measured just before the conversion, next to
the checkpoint size.  A full second copy of the weights would show as a peak of
about 2x the checkpoint; streaming keeps it near 1x (the model itself) plus one
tensor.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_bytes() -> int:
  """This process image's peak RSS (VmHWM).  Not getrusage's ru_maxrss: Linux carries
  that across fork + exec, so a child of a big parent would report the parent's size."""
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmHWM:"):
        return int(line.split()[1]) * 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_checkpoint(folder: Path, hidden: int, intermediate: int, vocab: int, layers: int = 32,
                     shard_bytes: int = 64 * 2 ** 20) -> int:
  """Random fp32 weights, written tensor by tensor (never all in memory)."""
  import numpy as np

  from fifa_jax.convert import llama, stream
  from fifa_jax.models.llama import LlamaConfig

  cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
                    num_hidden_layers=layers, num_attention_heads=max(1, hidden // 128))
  shapes = {"model.embed_tokens.weight": (vocab, hidden)}
  for i in range(layers):
    p = f"model.layers.{i}."
    for n in "qkvo":
      shapes[p + f"self_attn.{n}_proj.weight"] = (hidden, hidden)
    shapes[p + "mlp.gate_proj.weight"] = shapes[p + "mlp.up_proj.weight"] = (intermediate, hidden)
    shapes[p + "mlp.down_proj.weight"] = (hidden, intermediate)
    shapes[p + "input_layernorm.weight"] = shapes[p + "post_attention_layernorm.weight"] = (hidden,)
  shapes["model.norm.weight"] = (hidden,)
  shapes["lm_head.weight"] = (vocab, hidden)
  rng = np.random.default_rng(0)
  f32 = np.dtype("float32")
  tensors = [stream.OutTensor(k, s, f32, lambda s=s: (0.02 * rng.standard_normal(s)).astype(f32))
             for k, s in shapes.items()]
  stream.write_safetensors(folder, tensors, max_shard_bytes=shard_bytes)
  (folder / "config.json").write_text(json.dumps(llama.hf_config_dict(cfg, "float32")))
  return sum(t.nbytes for t in tensors)


def measure(src: Path, out: Path) -> dict:
  """In this (fresh) process: peak above baseline for load_hf, then for save_hf."""
  import jax
  import jax.numpy as jnp

  from fifa_jax.convert import llama

  jax.block_until_ready(jnp.zeros(8) + 1)  # the runtime's start-up is not conversion
  base = rss_bytes()
  t0 = time.perf_counter()
  _, model = llama.load_hf(src)
  load_s = time.perf_counter() - t0
  load_peak = peak_bytes() - base
  after_load = rss_bytes()
  t0 = time.perf_counter()
  llama.save_hf(model, out, max_shard_bytes=64 * 2 ** 20)
  save_s = time.perf_counter() - t0
  return {"load_peak_over_baseline": load_peak, "rss_after_load": after_load - base,
          "save_peak_over_loaded": peak_bytes() - after_load, "load_s": load_s, "save_s": save_s}


def run(hidden: int, intermediate: int, vocab: int, layers: int = 32) -> dict:
  with tempfile.TemporaryDirectory() as tmp:
    src, out = Path(tmp) / "hf", Path(tmp) / "back"
    size = write_checkpoint(src, hidden, intermediate, vocab, layers)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)  # one device, as a conversion runs
    r = subprocess.run([sys.executable, __file__, "--measure", str(src), str(out)],
                       capture_output=True, text=True, env=env, check=False)
    if r.returncode:
      raise RuntimeError(r.stderr[-2000:])
    res = json.loads(r.stdout.strip().splitlines()[-1])
    shards = len(list(src.glob("*.safetensors")))
  return {"checkpoint_bytes": size, "shards": shards, "layers": layers, "hidden": hidden,
          "intermediate": intermediate, "vocab": vocab, **res}


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--hidden", type=int, default=512)
  ap.add_argument("--intermediate", type=int, default=1376)
  ap.add_argument("--vocab", type=int, default=32000)
  ap.add_argument("--json", action="store_true")
  ap.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)
  a = ap.parse_args()
  if a.measure:
    print(json.dumps(measure(Path(a.measure[0]), Path(a.measure[1]))))
    return
  r = run(a.hidden, a.intermediate, a.vocab)
  if a.json:
    print(json.dumps(r))
    return
  mib = lambda b: f"{b / 2 ** 20:,.0f} MiB"  # noqa: E731
  size = r["checkpoint_bytes"]
  print(f"7B key layout: {r['layers']} layers, hidden {r['hidden']}, intermediate "
        f"{r['intermediate']}, vocab {r['vocab']}, fp32, {r['shards']} shards: {mib(size)}")
  print(f"load_hf: peak {mib(r['load_peak_over_baseline'])} above baseline "
        f"({r['load_peak_over_baseline'] / size:.2f}x the checkpoint; the loaded model itself is "
        f"{r['rss_after_load'] / size:.2f}x), {r['load_s']:.1f} s")
  print(f"save_hf: peak {mib(r['save_peak_over_loaded'])} above the loaded state "
        f"({r['save_peak_over_loaded'] / size:.2f}x), {r['save_s']:.1f} s")


if __name__ == "__main__":
  main()
