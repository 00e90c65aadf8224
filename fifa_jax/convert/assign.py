"""Where each weight goes: `Entry(key, path, perm)` lists, and loading them into a model.

`load(make, entries, source)` checks every key and shape *before* reading data
(missing / unexpected / mis-shaped keys are named), then fills the `nnx.eval_shape`
skeleton leaf by leaf, so the model is never held twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fifa_jax.checkpoint import WEIGHTS, init_missing
from fifa_jax.checkpoint import CheckpointError as ConversionError
from fifa_jax.convert.sources import Source, aligned_empty, np_dtype

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
