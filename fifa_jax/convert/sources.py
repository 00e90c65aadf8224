"""Where converted weights come from: tensors listed and read one at a time.

`open_source(path)` lists the keys, shapes and dtypes of safetensors (one file, or
sharded with an index; read with pread, never mmap, so a tensor that was read stops
counting as soon as it is placed) or of torch .bin/.pth files (mmap, shard by shard).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from fifa_jax.checkpoint import CheckpointError as ConversionError

# -- dtypes ---------------------------------------------------------------------

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
              "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
SAFETENSORS_DTYPE_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
_TORCH_DTYPES = {"torch.bfloat16": "bfloat16", "torch.float16": "float16",
                 "torch.float32": "float32", "torch.float64": "float64",
                 "torch.int64": "int64", "torch.int32": "int32", "torch.uint8": "uint8",
                 "torch.bool": "bool", "torch.int8": "int8", "torch.int16": "int16"}


def np_dtype(x: Any) -> np.dtype:
  """'bfloat16' / jnp / torch dtypes -> a numpy dtype (ml_dtypes for bf16)."""
  name = _TORCH_DTYPES.get(str(x), x)
  return np.dtype(ml_dtypes.bfloat16) if str(name) == "bfloat16" else np.dtype(name)


def torch_to_numpy(t: Any) -> np.ndarray:
  """A torch tensor as numpy, bits kept (bf16 through an int16 view)."""
  import torch  # noqa: PLC0415  (only .bin/.pth sources need torch)

  t = t.detach().cpu()
  if t.dtype == torch.bfloat16:
    return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return t.numpy()


# -- sources --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class TensorInfo:
  shape: tuple[int, ...]
  dtype: np.dtype


class Source:
  """Read-only name -> tensor store; `info` is known before any data is read."""

  def __init__(self, info: dict[str, TensorInfo], read: Callable[[str], np.ndarray],
               groups: Sequence[Sequence[str]] | None = None, nbytes: int | None = None,
               close: Callable[[], None] | None = None, metadata: Mapping[str, str] | None = None):
    self.info = info
    self.metadata = dict(metadata or {})  # safetensors __metadata__ (first file)
    self._read = read
    # Keys that share a file: load() finishes one group before opening the next.
    self.groups = [list(g) for g in groups] if groups else [list(info)]
    self.nbytes = nbytes if nbytes is not None else sum(
        int(np.prod(i.shape)) * i.dtype.itemsize for i in info.values())
    self._close = close

  def __contains__(self, key: str) -> bool:
    return key in self.info

  def keys(self) -> list[str]:
    return list(self.info)

  def read(self, key: str) -> np.ndarray:
    if key not in self.info:
      raise ConversionError(f"no tensor {key!r} in the checkpoint")
    return self._read(key)

  def close(self) -> None:
    if self._close:
      self._close()

  def __enter__(self) -> Source:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def rename(self, fn: Callable[[str], str | None]) -> Source:
    """A view with keys renamed by `fn` (None drops the key)."""
    new = {}
    for k in self.info:
      n = fn(k)
      if n is None:
        continue
      if n in new:
        raise ConversionError(f"{k!r} and {new[n]!r} both map to {n!r}")
      new[n] = k
    home = {k: i for i, g in enumerate(self.groups) for k in g}
    groups: list[list[str]] = [[] for _ in self.groups]
    for n, k in new.items():
      groups[home[k]].append(n)
    return Source({n: self.info[k] for n, k in new.items()}, lambda n: self._read(new[n]),
                  [g for g in groups if g], close=self._close, metadata=self.metadata)


def _safetensors_header(path: Path) -> tuple[dict, int]:
  """The header and where the data start; a ConversionError naming the file when it is
  not a whole safetensors file (too short, a bad header, data cut off)."""
  size = path.stat().st_size
  with open(path, "rb") as f:
    first = f.read(8)
    if len(first) < 8:
      raise ConversionError(f"{path}: not a safetensors file ({size} bytes, no header)")
    (n,) = struct.unpack("<Q", first)
    if n > size - 8:
      raise ConversionError(f"{path}: not a safetensors file, or cut off (its header claims "
                            f"{n} bytes, the file has {size})")
    try:
      header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise ConversionError(f"{path}: not a safetensors file (bad header: {e})") from None
  if not isinstance(header, dict):
    raise ConversionError(f"{path}: not a safetensors file (the header is not a mapping)")
  end = max((m["data_offsets"][1] for k, m in header.items()
             if k != "__metadata__" and isinstance(m, dict) and "data_offsets" in m), default=0)
  if 8 + n + end > size:
    raise ConversionError(f"{path}: cut off: its header promises {8 + n + end} bytes, the file has {size}")
  return header, 8 + n


def safetensors_source(files: Sequence[Path]) -> Source:
  info, where, metadata = {}, {}, {}
  groups = []
  handles: dict[Path, Any] = {}
  for path in files:
    header, start = _safetensors_header(path)
    metadata = metadata or header.get("__metadata__") or {}
    group = []
    for key, meta in header.items():
      if key == "__metadata__":
        continue
      if meta["dtype"] not in _ST_DTYPES:
        raise ConversionError(f"{path.name}: {key!r} has unsupported dtype {meta['dtype']}")
      if key in info:
        raise ConversionError(f"{key!r} appears in two shards")
      info[key] = TensorInfo(tuple(meta["shape"]), np.dtype(_ST_DTYPES[meta["dtype"]]))
      begin, end = meta["data_offsets"]
      where[key] = (path, start + begin, end - begin)
      group.append(key)
    groups.append(group)

  def read(key: str) -> np.ndarray:
    path, offset, size = where[key]
    if path not in handles:
      handles[path] = open(path, "rb")  # noqa: SIM115  (closed by Source.close)
    out = aligned_empty(info[key].shape, info[key].dtype)
    buf = memoryview(out.reshape(-1).view(np.uint8))
    got = os.preadv(handles[path].fileno(), [buf], offset) if size else 0
    if got != size:
      raise ConversionError(f"{path.name}: {key!r} is truncated ({got} of {size} bytes)")
    return out

  def close() -> None:
    for h in handles.values():
      h.close()
    handles.clear()

  return Source(info, read, groups, close=close, metadata=metadata)


def torch_source(files: Sequence[Path], *, subkey: str | None = None,
                 allow_pickle: bool = False) -> Source:
  """torch .bin/.pth files (mmap'd), one at a time; `subkey` e.g. 'state_dict'."""
  info, home = {}, {}
  groups = []
  for path in files:
    sd = _torch_load(path, subkey, allow_pickle)
    group = []
    for key, t in sd.items():
      if not hasattr(t, "shape"):
        continue  # an epoch counter or similar
      if key in info:
        raise ConversionError(f"{key!r} appears in two shards")
      info[key] = TensorInfo(tuple(t.shape), np_dtype(t.dtype))
      home[key] = path
      group.append(key)
    groups.append(group)
    del sd
  cache: dict[str, Any] = {"path": None, "sd": None}

  def read(key: str) -> np.ndarray:
    path = home[key]
    if cache["path"] != path:  # drop the previous shard's mapping before the next
      cache["sd"] = None
      cache["sd"], cache["path"] = _torch_load(path, subkey, allow_pickle), path
    return _owned_copy(torch_to_numpy(cache["sd"][key]))  # off the mapping

  def close() -> None:
    cache["sd"] = cache["path"] = None

  return Source(info, read, groups, nbytes=sum(p.stat().st_size for p in files), close=close)


def _torch_load(path: Path, subkey: str | None, allow_pickle: bool) -> Mapping[str, Any]:
  import torch  # noqa: PLC0415

  kw = dict(map_location="cpu", weights_only=not allow_pickle)
  try:
    try:
      obj = torch.load(path, mmap=True, **kw)
    except RuntimeError as e:
      if "mmap" not in str(e) and "zip" not in str(e):
        raise
      obj = torch.load(path, **kw)  # legacy (non-zip) format cannot be mapped
  except Exception as e:  # noqa: BLE001  (torch raises UnpicklingError and friends)
    raise _pickle_error(path, e) from e
  if subkey is not None and isinstance(obj, Mapping) and subkey in obj:
    obj = obj[subkey]
  if not isinstance(obj, Mapping):
    raise ConversionError(f"{path}: expected a state dict, found {type(obj).__name__}")
  return obj


def _pickle_error(path: Path, e: Exception) -> ConversionError:
  if "central directory" in str(e) or "PytorchStreamReader" in str(e):  # a zip cut short
    return ConversionError(f"{path}: not a whole PyTorch checkpoint (its zip archive is cut short "
                           "or damaged); copy or download it again")
  return ConversionError(
      f"{path}: torch.load(weights_only=True) refused it ({type(e).__name__}: {str(e)[:200]}); "
      "if you trust the file, pass allow_pickle=True (CLI: --allow-pickle)")


def dict_source(state_dict: Mapping[str, Any]) -> Source:
  """An in-memory state dict (torch tensors or arrays)."""
  arrays = {}
  for k, v in state_dict.items():
    arrays[k] = torch_to_numpy(v) if hasattr(v, "detach") else np.asarray(v)
  info = {k: TensorInfo(tuple(a.shape), a.dtype) for k, a in arrays.items()}
  # a copy: jax may adopt the buffer, and the caller's tensors must stay theirs
  return Source(info, lambda k: _owned_copy(arrays[k]))


def _owned_copy(a: np.ndarray) -> np.ndarray:
  out = aligned_empty(a.shape, a.dtype)
  np.copyto(out, a)
  return out


def chain(*sources: Source) -> Source:
  """Several sources as one (a base model and its adapter); keys must not repeat."""
  info, owner = {}, {}
  for src in sources:
    for k, i in src.info.items():
      if k in info:
        raise ConversionError(f"{k!r} is in two of the checkpoints")
      info[k], owner[k] = i, src
  return Source(info, lambda k: owner[k].read(k), [g for s in sources for g in s.groups],
                nbytes=sum(s.nbytes for s in sources))


WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors",
                "adapter_model.bin")


def open_source(path: str | os.PathLike, *, subkey: str | None = None,
                allow_pickle: bool = False) -> Source:
  """A safetensors / .bin / .pth file, or an HF directory (sharded with an index, or not)."""
  path = Path(path)
  if not path.exists():
    raise ConversionError(f"{path} does not exist")
  if path.is_dir():
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
      if (path / index).exists():
        files = sorted(set(json.loads((path / index).read_text())["weight_map"].values()))
        missing = [f for f in files if not (path / f).exists()]
        if missing:
          raise ConversionError(f"{path / index} names shards that are absent: {missing}")
        return open_source_files([path / f for f in files], subkey, allow_pickle)
    for name in WEIGHT_FILES:
      if (path / name).exists():
        return open_source_files([path / name], subkey, allow_pickle)
    raise ConversionError(f"{path}: no model.safetensors, pytorch_model.bin or index found")
  return open_source_files([path], subkey, allow_pickle)


def open_source_files(files: Sequence[Path], subkey: str | None = None,
                      allow_pickle: bool = False) -> Source:
  if all(f.suffix == ".safetensors" for f in files):
    return safetensors_source(files)
  if any(f.suffix == ".safetensors" for f in files):
    raise ConversionError(f"mixed safetensors and torch shards: {[f.name for f in files]}")
  return torch_source(files, subkey=subkey, allow_pickle=allow_pickle)


def aligned_empty(shape: Sequence[int], dtype: Any, align: int = 64) -> np.ndarray:
  """np.empty on a 64-byte boundary: jax.device_put then adopts the buffer on CPU
  instead of copying it, so a converted tensor exists once."""
  dtype = np.dtype(dtype)
  n = int(np.prod(shape)) * dtype.itemsize
  raw = np.empty(n + align, np.uint8)
  off = (-raw.ctypes.data) % align
  return raw[off:off + n].view(dtype).reshape(shape)
