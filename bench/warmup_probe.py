"""How far does the image-side warm-up get on its own?  A few-minute check.

  .venv/bin/python bench/warmup_probe.py --config configs/demo_cpu.yaml --set data.root=DATA [--set warmup.steps=800 ...]

Runs only `fifa_jax/train/warmup.py` (no LLM, no main run) from the config's random
initialisation and prints what it reached on the dev split: Det. accuracy, the
whole-image artifact mask IoU, and the Regional Artifact / Region Mask mIoU of the
concepts each fake's artifacts touch (what Loc. records ask for).  It isolates the
stand-in for FaRL/SAM weights in a loop that takes a fraction of `make demo`'s.
"""

from __future__ import annotations

import argparse

from fifa_jax import config as config_lib, mesh as mesh_lib, tokens
from fifa_jax.train import state as state_lib, warmup


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--config", required=True)
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
  args = ap.parse_args()
  cfg = config_lib.load(args.config, args.set)
  tok = tokens.load_tokenizer(cfg.model.tokenizer)
  fcfg = config_lib.model_config(cfg, tok)
  mesh = mesh_lib.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  setup = state_lib.make_setup(cfg, fcfg, mesh)
  state = state_lib.init_state(setup, cfg.train.seed, jit=True)
  masks = cfg.data.masks.format(root=cfg.data.root, split=cfg.data.split)
  warmup.run(cfg, setup, state, masks)


if __name__ == "__main__":
  main()
