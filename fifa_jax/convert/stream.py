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
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from fifa_jax.checkpoint import WEIGHTS, CheckpointError, init_missing  # noqa: F401 (re-exported)

# What conversion moves: parameters (LoRA included) and saved buffers, not RNG state.
# ConversionError: a checkpoint that does not fit the model; the message names the keys.
ConversionError = CheckpointError


# -- permutations ---------------------------------------------------------------

LINEAR = (1, 0)  # torch [out, in] <-> kernel [in, out]
CONV = (2, 3, 1, 0)  # torch Conv2d [O, I, kh, kw] -> [kh, kw, I, O]
DECONV = (2, 3, 0, 1)  # torch ConvTranspose2d [I, O, kh, kw] -> [kh, kw, I, O]


@dataclasses.dataclass(frozen=True)
class Entry:
  key: str  # PyTorch name
  path: tuple  # path in the nnx state
  perm: tuple[int, ...] | None = None  # jax = torch.transpose(perm)
  index: int | None = None  # the slice [index] of a stacked (scanned-layers) leaf

  def to_jax(self, a: np.ndarray) -> np.ndarray:
    return a if self.perm is None else np.transpose(a, self.perm)

  def to_torch(self, a: np.ndarray) -> np.ndarray:
    return a if self.perm is None else np.transpose(a, np.argsort(self.perm))

  def torch_shape(self, jax_shape: Sequence[int]) -> tuple[int, ...]:
    if self.index is not None:
      jax_shape = tuple(jax_shape)[1:]
    if self.perm is None:
      return tuple(jax_shape)
    return tuple(jax_shape[i] for i in np.argsort(self.perm))


def path_str(path: tuple) -> str:
  return ".".join(str(p) for p in path)


# -- dtypes ---------------------------------------------------------------------

_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
              "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32, "I16": np.int16,
              "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
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
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(n))
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
    obj = torch.load(path, mmap=True, **kw)
  except RuntimeError as e:
    if "mmap" not in str(e) and "zip" not in str(e):
      raise _pickle_error(path, e) from e
    obj = torch.load(path, **kw)  # legacy (non-zip) format cannot be mapped
  except Exception as e:  # noqa: BLE001  (torch raises UnpicklingError and friends)
    raise _pickle_error(path, e) from e
  if subkey is not None and isinstance(obj, Mapping) and subkey in obj:
    obj = obj[subkey]
  if not isinstance(obj, Mapping):
    raise ConversionError(f"{path}: expected a state dict, found {type(obj).__name__}")
  return obj


def _pickle_error(path: Path, e: Exception) -> ConversionError:
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


# -- load -----------------------------------------------------------------------

def check(entries: Sequence[Entry], source: Source, abstract: Mapping[tuple, Any], *,
          ignore: Callable[[str], bool] = lambda k: False) -> list[str]:
  """Every problem at once, before any data moves; returns the unused, ignored keys."""
  problems = []
  used = set()
  for e in entries:
    want = e.torch_shape(abstract[e.path].shape)
    if e.key not in source:
      problems.append(f"missing key {e.key!r} (for {path_str(e.path)}, shape {list(want)})")
      continue
    used.add(e.key)
    got = source.info[e.key].shape
    if tuple(got) != want:
      problems.append(f"mis-shaped key {e.key!r}: checkpoint {list(got)}, model expects "
                      f"{list(want)} (for {path_str(e.path)})")
  rest = [k for k in source.keys() if k not in used]
  unexpected = [k for k in rest if not ignore(k)]
  problems += [f"unexpected key {k!r} {list(source.info[k].shape)}" for k in unexpected]
  if problems:
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    raise ConversionError(f"{len(problems)} problem(s) between checkpoint and model:\n  "
                          + "\n  ".join(problems[:20]) + more)
  return rest


def load(make: Callable[[], nnx.Module], entries: Callable[[nnx.Module], Sequence[Entry]],
         source: Source, *, dtype: Any = None, ignore: Callable[[str], bool] = lambda k: False,
         progress: Callable[[int], None] | None = None) -> Loaded:
  """Build `make()` abstractly, then fill it from `source` one tensor at a time.

  `entries(abstract_model)` names what the checkpoint provides; every other leaf
  (task queries, fresh adapters, RNG state) gets `make()`'s own initialiser.
  `dtype` None keeps each leaf's dtype (the config's param_dtype).
  """
  model = nnx.eval_shape(make)
  ents = list(entries(model))
  flat = abstract_leaves(model)
  ignored = check(ents, source, flat, ignore=ignore)
  by_key = {e.key: e for e in ents}
  stacks = _Stacks(ents, flat, dtype)
  for group in source.groups:
    for key in group:
      e = by_key.get(key)
      if e is None:
        continue
      if e.index is not None:
        stacks.fill(e, source.read(key))
      else:
        var = flat[e.path]
        want = np_dtype(dtype if dtype is not None else var.get_value().dtype)
        var.set_value(to_device(e.to_jax(source.read(key)), want))
      if progress:
        progress(1)
  fresh = init_missing(model, make)
  return Loaded(model, ignored, [p for p in fresh if p in flat])


class _Stacks:
  """Host buffers for stacked leaves: slice i of each arrives as its own key; the
  leaf moves to the device once its last slice is in."""

  def __init__(self, entries: Sequence[Entry], flat: Mapping[tuple, Any], dtype: Any = None):
    self.flat, self.dtype = flat, dtype
    self.todo: dict[tuple, int] = {}
    for e in entries:
      if e.index is not None:
        self.todo[e.path] = self.todo.get(e.path, 0) + 1
    self.bufs: dict[tuple, np.ndarray] = {}

  def fill(self, e: Entry, a: np.ndarray) -> None:
    var = self.flat[e.path]
    if e.path not in self.bufs:
      want = np_dtype(self.dtype if self.dtype is not None else var.get_value().dtype)
      self.bufs[e.path] = aligned_empty(var.get_value().shape, want)
    np.copyto(self.bufs[e.path][e.index], e.to_jax(a), casting="unsafe")
    self.todo[e.path] -= 1
    if not self.todo[e.path]:
      var.set_value(jax.device_put(self.bufs.pop(e.path)))


def aligned_empty(shape: Sequence[int], dtype: Any, align: int = 64) -> np.ndarray:
  """np.empty on a 64-byte boundary: jax.device_put then adopts the buffer on CPU
  instead of copying it, so a converted tensor exists once."""
  dtype = np.dtype(dtype)
  n = int(np.prod(shape)) * dtype.itemsize
  raw = np.empty(n + align, np.uint8)
  off = (-raw.ctypes.data) % align
  return raw[off:off + n].view(dtype).reshape(shape)


def to_device(a: np.ndarray, dtype: Any) -> jax.Array:
  """One host copy at most (layout or dtype change), then no second one for jax."""
  dtype = np.dtype(dtype)
  if not (a.dtype == dtype and a.flags.c_contiguous and a.ctypes.data % 64 == 0):
    out = aligned_empty(a.shape, dtype)
    np.copyto(out, a, casting="unsafe")
    a = out
  return jax.device_put(a)


@dataclasses.dataclass
class Loaded:
  model: nnx.Module
  ignored: list[str]  # checkpoint keys not used (allowed by `ignore`)
  fresh: list[tuple]  # weight paths initialised fresh, not loaded


def assign(model: nnx.Module, entries: Sequence[Entry], source: Source, *,
           ignore: Callable[[str], bool] = lambda k: False) -> list[str]:
  """Copy `source` into an existing (concrete) model in place, with the same checks."""
  flat = abstract_leaves(model)
  ignored = check(entries, source, flat, ignore=ignore)
  stacks = _Stacks(entries, flat)
  for e in entries:
    if e.index is not None:
      stacks.fill(e, source.read(e.key))
      continue
    var = flat[e.path]
    var.set_value(jnp.asarray(np.ascontiguousarray(e.to_jax(source.read(e.key))),
                              var.get_value().dtype))
  return ignored


def abstract_leaves(model: nnx.Module, wrt: Any = WEIGHTS) -> dict[tuple, Any]:
  return dict(nnx.to_flat_state(nnx.state(model, wrt)))


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
    if t.dtype not in _ST_NAMES:
      raise ConversionError(f"{t.key}: dtype {t.dtype} has no safetensors name")
    header[t.key] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape),
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


def entries_for(model: nnx.Module, name: Callable[[tuple, Any], tuple[str, tuple | None] | None],
                wrt: Any = WEIGHTS) -> list[Entry]:
  """Entries from a naming rule `name(path, module) -> (key, perm)`, None to skip a leaf."""
  modules = dict(nnx.iter_graph(model))
  out = []
  for path, _ in nnx.to_flat_state(nnx.state(model, wrt)):
    owner = modules.get(path[:-1])
    named = name(path, owner)
    if named is not None:
      out.append(Entry(named[0], path, named[1]))
  return out


def torch_like(path: tuple, owner: Any) -> tuple[str, tuple | None]:
  """The default PyTorch name of a leaf: dots, `weight` for kernels/scales/embeddings.

  nnx.Linear kernel -> `.weight` transposed; nnx.Conv -> Conv2d layout; Deconv ->
  ConvTranspose2d layout; our LayerNorm wrapper's `norm.scale/bias` -> `.weight/.bias`;
  nnx.Embed `embedding` -> `.weight`; anything else keeps its name.
  """
  from fifa_jax.models.layers import Deconv  # noqa: PLC0415

  *parents, leaf = path
  perm = None
  if isinstance(owner, nnx.LayerNorm) and parents and parents[-1] == "norm":
    parents = parents[:-1]  # layers.LayerNorm wraps nnx.LayerNorm as `.norm`
    leaf = "weight" if leaf == "scale" else leaf
  elif isinstance(owner, nnx.Embed) and leaf == "embedding":
    leaf = "weight"
  elif leaf == "kernel":
    if isinstance(owner, Deconv):
      perm = DECONV
    elif isinstance(owner, nnx.Conv):
      perm = CONV
    elif isinstance(owner, nnx.Linear):
      perm = LINEAR
    else:
      raise ConversionError(f"no PyTorch layout known for the kernel at {path_str(path)}")
    leaf = "weight"
  return path_str((*parents, leaf)), perm


def prefixed(entries: Iterable[Entry], prefix: str, path_prefix: tuple = ()) -> list[Entry]:
  return [dataclasses.replace(e, key=prefix + e.key, path=path_prefix + e.path) for e in entries]


@contextlib.contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
  """A tqdm progress callback (to stderr), or a no-op."""
  if not enabled:
    yield lambda n: None
    return
  from tqdm.auto import tqdm  # noqa: PLC0415

  bar = tqdm(total=total, desc=desc, unit="tensor", leave=False, dynamic_ncols=True)
  try:
    yield bar.update
  finally:
    bar.close()
