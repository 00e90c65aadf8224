"""The one streaming engine every converter uses.

A converter only says *where* each weight lives: a list of `Entry(key, path, perm)`
(PyTorch key, path in the nnx state, axis permutation torch -> jax).  This module
reads and writes tensors one at a time:

- `open_source(path)` lists keys, shapes and dtypes of safetensors (one file or
  sharded with an index; read with pread, never mmap, so a tensor that was read
  stops counting as soon as it is placed) or torch .bin/.pth (mmap, shard by shard);
- `load(abstract_model, entries, source)` checks every key and shape *before*
  reading data (missing / unexpected / mis-shaped keys are named), then fills the
  `nnx.eval_shape` skeleton leaf by leaf: the model is never held twice;
- `write_safetensors(...)` plans shards from shapes, then writes each tensor as it
  is produced.

The three live in sources.py, assign.py and writer.py; this module gathers their
names, which every converter uses as `stream.<name>`.
"""

from __future__ import annotations

# What conversion moves: parameters (LoRA included) and saved buffers, not RNG state.
# ConversionError: a checkpoint that does not fit the model; the message names the keys.
from fifa_jax.checkpoint import WEIGHTS, init_missing  # noqa: F401
from fifa_jax.checkpoint import CheckpointError as ConversionError  # noqa: F401
from fifa_jax.convert.assign import *  # noqa: F401,F403
from fifa_jax.convert.sources import *  # noqa: F401,F403
from fifa_jax.convert.writer import *  # noqa: F401,F403
