"""Writing converted weights: safetensors shards planned from shapes, each tensor
written as it is produced (`export`, then `write_safetensors`)."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from fifa_jax.checkpoint import CheckpointError as ConversionError
from fifa_jax.convert.assign import Entry, abstract_leaves
from fifa_jax.convert.sources import SAFETENSORS_DTYPE_NAMES, np_dtype

# -- export ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class OutTensor:
  key: str
  shape: tuple[int, ...]
  dtype: np.dtype
  produce: Callable[[], np.ndarray]

  @property
  def nbytes(self) -> int:
    return int(np.prod(self.shape)) * self.dtype.itemsize


def export(model: nnx.Module, entries: Sequence[Entry], *, dtype: Any = None) -> list[OutTensor]:
  """Lazy PyTorch-layout tensors for `entries`; nothing is copied until written."""
  flat = abstract_leaves(model)
  out = []
  for e in entries:
    var = flat[e.path]
    dt = np_dtype(dtype if dtype is not None else var.get_value().dtype)

    def produce(var=var, e=e, dt=dt) -> np.ndarray:
      value = var.get_value() if e.index is None else var.get_value()[e.index]
      return np.ascontiguousarray(e.to_torch(np.asarray(value)), dt)

    out.append(OutTensor(e.key, e.torch_shape(var.get_value().shape), dt, produce))
  return out


def write_safetensors(out_dir: str | os.PathLike, tensors: Sequence[OutTensor], *,
                      name: str = "model", max_shard_bytes: int = 5 * 2 ** 30,
                      metadata: Mapping[str, str] | None = None,
                      progress: Callable[[int], None] | None = None) -> list[Path]:
  """`<name>.safetensors`, or `<name>-0000i-of-0000n.safetensors` + index past one shard."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  shards: list[list[OutTensor]] = [[]]
  size = 0
  for t in tensors:
    if shards[-1] and size + t.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(t)
    size += t.nbytes
  n = len(shards)
  names = ([f"{name}.safetensors"] if n == 1 else
           [f"{name}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)])
  meta = {"format": "pt", **(metadata or {})}
  for fname, shard in zip(names, shards):
    _write_one(out_dir / fname, shard, meta, progress)
  if n > 1:
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)},
             "weight_map": {t.key: f for f, s in zip(names, shards) for t in s}}
    (out_dir / f"{name}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
  return [out_dir / f for f in names]


def _write_one(path: Path, tensors: Sequence[OutTensor], metadata: Mapping[str, str],
               progress: Callable[[int], None] | None) -> None:
  header: dict[str, Any] = {"__metadata__": dict(metadata)}
  offset = 0
  for t in tensors:
    if t.dtype not in SAFETENSORS_DTYPE_NAMES:
      raise ConversionError(f"{t.key}: dtype {t.dtype} has no safetensors name")
    header[t.key] = {"dtype": SAFETENSORS_DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                     "data_offsets": [offset, offset + t.nbytes]}
    offset += t.nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
  tmp = path.with_name(path.name + ".tmp")
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for t in tensors:
      a = t.produce()
      if a.shape != t.shape or a.dtype != t.dtype:
        raise ConversionError(f"{t.key}: produced {a.shape} {a.dtype}, planned {t.shape} {t.dtype}")
      f.write(memoryview(a.reshape(-1).view(np.uint8)))
      del a
      if progress:
        progress(1)
  os.replace(tmp, path)  # a file that exists is whole
