"""Paths a user gives that may be URLs: gs://, s3://, az://, hf:// (any fsspec protocol).

Most of what fifa-jax reads and writes goes through libraries that want local files
(ArrayRecord's reader, orbax's model folders, safetensors' pread, tokenizers), so a
URL is *staged*: a remote folder or file is copied once into a local cache and the
local copy is used (`stage_in`); an output meant for a URL is written to a local
folder and copied up when complete (`stage_out`), its completion marker last, so a
reader never sees a half-written folder as complete.  Training checkpoints are the
exception: orbax writes gs:// itself (train/checkpoint via fifa_jax.checkpoint).

The copies go through fsspec (`gcsfs` for gs://, `s3fs` for s3://: `pip install
"fifa-jax[gcs]"`).  The cache is `$FIFA_JAX_CACHE` (default ~/.cache/fifa_jax), one
folder per URL; a staged copy is reused while its `.staged` stamp says it is whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path


class PathError(ValueError):
  """A URL that cannot be read or written; the message names it."""


def is_url(path: str | os.PathLike | None) -> bool:
  return path is not None and "://" in str(path)


def cache_root() -> Path:
  return Path(os.environ.get("FIFA_JAX_CACHE", Path.home() / ".cache" / "fifa_jax"))


def _fs(url: str):
  import fsspec  # noqa: PLC0415  (only URLs need it)

  try:
    return fsspec.core.url_to_fs(url)
  except (ImportError, ValueError) as e:
    scheme = url.split("://", 1)[0]
    hint = {"gs": "gcsfs", "s3": "s3fs", "az": "adlfs"}.get(scheme)
    raise PathError(f"{url}: cannot open {scheme}:// ({e})"
                    + (f"; install {hint} (pip install \"fifa-jax[gcs]\")" if hint else "")) from None


def local_copy_path(url: str) -> Path:
  """Where `stage_in` keeps a URL's copy: readable, and unique per URL."""
  scheme, rest = url.split("://", 1)
  digest = hashlib.sha1(url.encode()).hexdigest()[:10]
  name = rest.rstrip("/").rsplit("/", 1)[-1] or "root"
  return cache_root() / "staged" / scheme / f"{name}-{digest}" / name


def stage_in(path: str | os.PathLike, what: str = "path") -> Path:
  """A local path for `path`: itself when local, else a local copy of the remote file or
  folder (fetched once; `what` names the setting in errors)."""
  if not is_url(path):
    return Path(path)
  url = str(path).rstrip("/")
  dest = local_copy_path(url)
  stamp = dest.parent / ".staged"
  if stamp.exists() and json.loads(stamp.read_text()).get("url") == url:
    return dest
  fs, root = _fs(url)
  try:
    if not fs.exists(root):
      raise PathError(f"{what}: {url} does not exist")
    shutil.rmtree(dest.parent, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if fs.isdir(root):
      fs.get(root.rstrip("/") + "/", str(dest) + "/", recursive=True)
    else:
      fs.get(root, str(dest))
  except PathError:
    raise
  except OSError as e:
    raise PathError(f"{what}: cannot copy {url} ({e})") from None
  stamp.write_text(json.dumps({"url": url}))  # last: the copy is whole
  return dest


def stage_in_pattern(pattern: str | os.PathLike, what: str = "path") -> str:
  """`stage_in` for a file, folder or glob: a URL glob (gs://b/faces/*.png, or a
  template such as gs://b/qa/{split}/{task}-*.array_record) stages the folder above its
  first wildcard or placeholder and returns the same pattern over the local copy."""
  pattern, wild = str(pattern), "*?[{"
  if not is_url(pattern) or not any(c in pattern for c in wild):
    return str(stage_in(pattern, what))
  head = pattern[:min(pattern.index(c) for c in wild if c in pattern)]
  folder = head.rsplit("/", 1)[0]
  return str(stage_in(folder, what)) + pattern[len(folder):]


def fetch_file(url: str, local: str | os.PathLike) -> bool:
  """Copy one remote file to `local` if it exists; False when it does not."""
  fs, root = _fs(url)
  try:
    if not fs.isfile(root):
      return False
    fs.get(root, str(local))
  except OSError as e:
    raise PathError(f"cannot copy {url} ({e})") from None
  return True


def stage_out(local: str | os.PathLike, url: str, last: tuple[str, ...] = ()) -> None:
  """Copy a local file or folder to `url`; the files named in `last` (a folder's
  completion marker, e.g. fifa_jax.json) go up after everything else."""
  local = Path(local)
  fs, root = _fs(url)
  root = root.rstrip("/")
  try:
    if local.is_file():
      fs.put(str(local), root)
      return
    files = sorted(p for p in local.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.relative_to(local).as_posix() in last)  # stable: markers last
    for f in files:
      target = f"{root}/{f.relative_to(local).as_posix()}"
      fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
      fs.put(str(f), target)
  except OSError as e:
    raise PathError(f"cannot copy {local} to {url} ({e})") from None


def is_nonempty(path: str | os.PathLike) -> bool:
  """A folder (local or remote) that exists and holds something."""
  if not is_url(path):
    p = Path(path)
    return p.exists() and (not p.is_dir() or any(p.iterdir()))
  fs, root = _fs(str(path))
  return fs.exists(root) and (not fs.isdir(root) or bool(fs.ls(root)))
