"""The data contract between data_prep and training: mask stores and QA records.

Two kinds of ArrayRecord shards, both msgpack-encoded maps (readable from any
language), each with a `format` tag:

(a) Mask store (`fifa-mask/1`), one entry per annotated image, keyed by image id:
      image_id, source, image (encoded bytes, PNG/JPEG as given), height, width,
      atomic (list of 112 RLE masks, in `fict.ATOMIC` order),
      artifact (RLE whole-image artifact mask, or nil for real images),
      landmarks (478x3 float32 bytes, pixels; optional), meta (map).
    Parent Region Masks are unions of their atomic descendants and Regional
    Artifact Masks are Region Mask AND artifact mask: both are derived when read
    (`MaskEntry.region_mask`, `MaskEntry.artifact_region_mask`), never stored.

(b) QA records (`fifa-qa/1`), one per question/answer pair:
      record_id, image_id, source, split, task, prompt, answer,
      region (FICT concept, R- tasks), box ([x1, y1, x2, y2] image pixels, B- tasks),
      seg_concepts (the atomic concept of each [SEG] in the answer, in order),
      det_label (0 real / 1 fake), cls_label (index into tokens.CLS_CLASSES),
      technique (DFFD subset name, e.g. "FaceAPP"; see TECHNIQUE_CATEGORY),
      explainer (who wrote a TOE/AGE explanation: "offline-template" for the
      deterministic template explainer, "llm:<model>" for an LLM; nil otherwise).
    Records name masks by image id and concept, so a mask is stored once however
    many records use it.

RLE: a mask is flattened row-major (C order) and stored as run lengths that
alternate background/foreground, starting with background (the first run may be
0): {"size": [h, w], "counts": uint32 little-endian bytes}.

Shards are written to a temporary name and renamed when complete, so a shard
that exists is whole.  The mask store keeps `index.json` (image id -> shard,
position) beside its shards.

Only numpy and msgpack are needed to encode and decode (data_prep's environment
has no jax); array_record is imported when shards are read or written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from fifa_jax import fict, tokens

MASK_FORMAT = "fifa-mask/1"
QA_FORMAT = "fifa-qa/1"
SPLITS = ("train", "dev", "test")

# DFFD subsets (Table 16) -> Cls. category.  "synthetic" is fifa-jax's own
# offline forgeries (data_prep synth), an attribute-style local manipulation.
TECHNIQUE_CATEGORY = {
    "FFHQ": "real", "CelebA": "real", "Youtube": "real",
    "Deepfakes": "identity swapping", "FaceSwap": "identity swapping",
    "Face2Face": "expression swapping", "NeuralTextures": "expression swapping",
    "FaceAPP": "attribute manipulation", "StarGAN": "attribute manipulation",
    "PGGAN": "entire face synthesis", "StyleGAN": "entire face synthesis",
    "synthetic": "attribute manipulation", "real": "real",
    # DD-VQA's FF++ subsets beyond DFFD's (data adapters)
    "FaceShifter": "identity swapping", "Original": "real",
}


class RecordError(ValueError):
  """A malformed mask-store entry or QA record; the message names the field."""

  def __init__(self, field: str, problem: str, record_id: str | None = None):
    where = f"record {record_id!r}: " if record_id else ""
    super().__init__(f"{where}field {field!r}: {problem}")
    self.field = field


# ---------------------------------------------------------------------------
# RLE


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
  """Run-length encode a 2-D boolean mask (row-major, background first)."""
  mask = np.asarray(mask)
  if mask.ndim != 2:
    raise RecordError("mask", f"expected a 2-D array, got shape {mask.shape}")
  flat = mask.astype(bool, copy=False).ravel()
  change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
  bounds = np.concatenate([[0], change, [flat.size]])
  counts = np.diff(bounds)
  if flat.size and flat[0]:
    counts = np.concatenate([[0], counts])
  return {"size": [int(mask.shape[0]), int(mask.shape[1])],
          "counts": counts.astype("<u4").tobytes()}


def rle_decode(rle: Mapping[str, Any]) -> np.ndarray:
  h, w = (int(x) for x in rle["size"])
  counts = np.frombuffer(rle["counts"], dtype="<u4").astype(np.int64)
  if counts.sum() != h * w:
    raise RecordError("counts", f"runs sum to {counts.sum()}, expected {h}x{w}={h * w}")
  values = np.arange(counts.size) % 2 == 1
  return np.repeat(values, counts).reshape(h, w)


def rle_area(rle: Mapping[str, Any]) -> int:
  return int(np.frombuffer(rle["counts"], dtype="<u4")[1::2].sum())


# ---------------------------------------------------------------------------
# (a) mask store entries


@dataclasses.dataclass
class MaskEntry:
  image_id: str
  image: bytes
  height: int
  width: int
  atomic: list[dict[str, Any]]  # 112 RLE masks, fict.ATOMIC order
  artifact: dict[str, Any] | None = None
  source: str = ""
  landmarks: np.ndarray | None = None  # [478, 3] float32, pixels
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  @classmethod
  def from_masks(cls, image_id: str, image: bytes, atomic_masks: Mapping[str, np.ndarray] | np.ndarray,
                 artifact_mask: np.ndarray | None = None, **kw) -> "MaskEntry":
    """From dense masks: a [112, H, W] array or a {atomic name: HxW} mapping."""
    if isinstance(atomic_masks, Mapping):
      unknown = sorted(set(atomic_masks) - set(fict.ATOMIC))
      if unknown:
        raise RecordError("atomic", f"not Atomic Concepts: {unknown[:5]}")
      missing = [a for a in fict.ATOMIC if a not in atomic_masks]
      if missing:
        raise RecordError("atomic", f"{len(missing)} atomic masks missing, e.g. {missing[:3]}")
      stack = [np.asarray(atomic_masks[a]) for a in fict.ATOMIC]
    else:
      stack = list(np.asarray(atomic_masks))
    if len(stack) != fict.NUM_ATOMIC:
      raise RecordError("atomic", f"expected {fict.NUM_ATOMIC} masks, got {len(stack)}")
    h, w = stack[0].shape
    entry = cls(image_id=image_id, image=image, height=h, width=w,
                atomic=[rle_encode(m) for m in stack],
                artifact=None if artifact_mask is None else rle_encode(artifact_mask), **kw)
    entry.validate()
    return entry

  def validate(self) -> None:
    rid = self.image_id if isinstance(self.image_id, str) else None
    if not isinstance(self.image_id, str) or not self.image_id:
      raise RecordError("image_id", "must be a non-empty string")
    if not isinstance(self.image, (bytes, bytearray)) or not self.image:
      raise RecordError("image", "must be non-empty encoded image bytes", rid)
    for name in ("height", "width"):
      v = getattr(self, name)
      if not isinstance(v, int) or v <= 0:
        raise RecordError(name, f"must be a positive int, got {v!r}", rid)
    if not isinstance(self.atomic, list) or len(self.atomic) != fict.NUM_ATOMIC:
      n = len(self.atomic) if isinstance(self.atomic, list) else type(self.atomic).__name__
      raise RecordError("atomic", f"expected {fict.NUM_ATOMIC} RLE masks, got {n}", rid)
    for i, rle in enumerate(self.atomic):
      _check_rle(rle, self.height, self.width, f"atomic[{i}] ({fict.ATOMIC[i]})", rid)
    if self.artifact is not None:
      _check_rle(self.artifact, self.height, self.width, "artifact", rid)
    if self.landmarks is not None:
      lm = np.asarray(self.landmarks)
      if lm.ndim != 2 or lm.shape[1] != 3:
        raise RecordError("landmarks", f"expected [N, 3], got {lm.shape}", rid)

  # Reading -----------------------------------------------------------------

  def atomic_mask(self, concept: str) -> np.ndarray:
    return rle_decode(self.atomic[fict.atomic_index(concept)])

  def region_mask(self, concept: str) -> np.ndarray:
    """Region Mask of any FICT concept: the union of its atomic descendants."""
    out = np.zeros((self.height, self.width), bool)
    for a in fict.atomic_descendants(concept):
      out |= rle_decode(self.atomic[fict.atomic_index(a)])
    return out

  def artifact_mask(self) -> np.ndarray:
    if self.artifact is None:
      return np.zeros((self.height, self.width), bool)
    return rle_decode(self.artifact)

  def artifact_region_mask(self, concept: str) -> np.ndarray:
    """Regional Artifact Mask: Region Mask AND the whole-image artifact mask."""
    return self.region_mask(concept) & self.artifact_mask()

  def atomic_stack(self) -> np.ndarray:
    return np.stack([rle_decode(r) for r in self.atomic])

  # Bytes ---------------------------------------------------------------------

  def to_bytes(self) -> bytes:
    self.validate()
    lm = None if self.landmarks is None else np.asarray(self.landmarks, "<f4")
    return msgpack.packb({
        "format": MASK_FORMAT, "image_id": self.image_id, "source": self.source,
        "image": bytes(self.image), "height": self.height, "width": self.width,
        "atomic": self.atomic, "artifact": self.artifact,
        "landmarks": None if lm is None else {"shape": list(lm.shape), "data": lm.tobytes()},
        "meta": self.meta,
    }, use_bin_type=True)

  @classmethod
  def from_bytes(cls, data: bytes) -> "MaskEntry":
    d = _unpack(data, MASK_FORMAT)
    lm = d.get("landmarks")
    if lm is not None:
      lm = np.frombuffer(lm["data"], "<f4").reshape(lm["shape"])
    try:
      entry = cls(image_id=d["image_id"], image=d["image"], height=d["height"], width=d["width"],
                  atomic=d["atomic"], artifact=d.get("artifact"), source=d.get("source", ""),
                  landmarks=lm, meta=d.get("meta") or {})
    except KeyError as e:
      raise RecordError(e.args[0], "missing") from None
    entry.validate()
    return entry


def _check_rle(rle: Any, h: int, w: int, field: str, rid: str | None) -> None:
  if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
    raise RecordError(field, "expected an RLE map with 'size' and 'counts'", rid)
  if list(rle["size"]) != [h, w]:
    raise RecordError(field, f"size {list(rle['size'])} differs from the image's [{h}, {w}]", rid)
  counts = rle["counts"]
  if not isinstance(counts, (bytes, bytearray)) or len(counts) % 4:
    raise RecordError(field, "counts must be uint32 little-endian bytes", rid)
  total = int(np.frombuffer(counts, "<u4").astype(np.int64).sum())
  if total != h * w:
    raise RecordError(field, f"runs sum to {total}, expected {h * w}", rid)


def _unpack(data: bytes, fmt: str) -> dict[str, Any]:
  try:
    d = msgpack.unpackb(data, raw=False)
  except Exception as e:  # noqa: BLE001 - any decode failure is a bad record
    raise RecordError("format", f"not a msgpack record ({e})") from None
  if not isinstance(d, dict) or d.get("format") != fmt:
    got = d.get("format") if isinstance(d, dict) else type(d).__name__
    raise RecordError("format", f"expected {fmt!r}, got {got!r}")
  return d


# ---------------------------------------------------------------------------
# (b) QA records


@dataclasses.dataclass
class QARecord:
  record_id: str
  image_id: str
  source: str
  split: str
  task: str
  prompt: str
  answer: str
  region: str | None = None
  box: list[float] | None = None
  seg_concepts: list[str] = dataclasses.field(default_factory=list)
  det_label: int | None = None
  cls_label: int | None = None
  technique: str | None = None
  explainer: str | None = None  # added compatibly: records without it read as None

  def validate(self) -> None:
    rid = self.record_id if isinstance(self.record_id, str) else None
    for name in ("record_id", "image_id", "source", "prompt"):
      v = getattr(self, name)
      if not isinstance(v, str) or not v:
        raise RecordError(name, f"must be a non-empty string, got {v!r}", rid)
    if not isinstance(self.answer, str) or not self.answer.strip():
      raise RecordError("answer", "must be a non-empty string", rid)
    if self.split not in SPLITS:
      raise RecordError("split", f"{self.split!r} is not one of {SPLITS}", rid)
    if self.task not in tokens.TASKS:
      raise RecordError("task", f"{self.task!r} is not one of {tokens.TASKS}", rid)
    if self.prompt.count(tokens.IMAGE) != 1:
      raise RecordError("prompt", f"must hold {tokens.IMAGE} exactly once", rid)
    for t in (tokens.IMAGE, tokens.BBOX):
      if t in self.answer:
        raise RecordError("answer", f"must not contain {t}", rid)
    level, kind = tokens.task_level(self.task), tokens.task_kind(self.task)
    # Region: R- tasks name a FICT concept; others must not.
    if level == "region":
      if self.region not in fict.CONCEPTS:
        near = fict.suggest(self.region) if isinstance(self.region, str) else []
        raise RecordError("region", f"{self.region!r} is not a FICT concept"
                          + (f" (did you mean {near[0]!r}?)" if near else ""), rid)
    elif self.region is not None:
      raise RecordError("region", f"task {self.task} takes no region", rid)
    # Box: B- tasks carry a box and a <bbox> token.
    has_bbox = tokens.BBOX in self.prompt
    if level == "box":
      b = self.box
      if (not isinstance(b, (list, tuple)) or len(b) != 4
          or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in b)):
        raise RecordError("box", f"expected [x1, y1, x2, y2] finite numbers, got {b!r}", rid)
      if not (b[0] < b[2] and b[1] < b[3]) or min(b) < 0:
        raise RecordError("box", f"{list(b)} is not a box with 0 <= x1 < x2 and 0 <= y1 < y2", rid)
      if self.prompt.count(tokens.BBOX) != 1:
        raise RecordError("prompt", f"task {self.task} needs {tokens.BBOX} exactly once", rid)
    else:
      if self.box is not None:
        raise RecordError("box", f"task {self.task} takes no box", rid)
      if has_bbox:
        raise RecordError("prompt", f"task {self.task} must not contain {tokens.BBOX}", rid)
    # [SEG]s: one atomic concept each, only for Loc./AGE.
    n_seg = tokens.count_segs(self.answer)
    if not isinstance(self.seg_concepts, (list, tuple)):
      raise RecordError("seg_concepts", "must be a list", rid)
    if kind in ("loc", "age"):
      if n_seg == 0:
        raise RecordError("answer", f"a {self.task} answer needs at least one {tokens.SEG}", rid)
      if len(tokens.grounded_phrases(self.answer)) != n_seg:
        raise RecordError("answer", f"every {tokens.SEG} must follow "
                          f"{tokens.P_OPEN}phrase{tokens.P_CLOSE}", rid)
    elif n_seg or tokens.P_OPEN in self.answer or tokens.P_CLOSE in self.answer:
      raise RecordError("answer", f"a {self.task} answer has no grounded phrases", rid)
    if len(self.seg_concepts) != n_seg:
      raise RecordError("seg_concepts", f"{len(self.seg_concepts)} concepts for {n_seg} "
                        f"{tokens.SEG} tokens", rid)
    for c in self.seg_concepts:
      if c not in fict.CONCEPTS or not fict.is_atomic(c):
        raise RecordError("seg_concepts", f"{c!r} is not an Atomic Concept", rid)
    # Labels.
    if kind == "det" and self.det_label not in (0, 1):
      raise RecordError("det_label", f"a det record needs 0 (real) or 1 (fake), got {self.det_label!r}", rid)
    if kind == "cls" and not (isinstance(self.cls_label, int)
                              and 0 <= self.cls_label < len(tokens.CLS_CLASSES)):
      raise RecordError("cls_label", f"a cls record needs 0..{len(tokens.CLS_CLASSES) - 1}, "
                        f"got {self.cls_label!r}", rid)
    if self.explainer is not None and (not isinstance(self.explainer, str) or not self.explainer):
      raise RecordError("explainer", f"must be a non-empty string or None, got {self.explainer!r}", rid)
    if self.technique is not None and self.technique not in TECHNIQUE_CATEGORY:
      raise RecordError("technique", f"{self.technique!r} is not one of {sorted(TECHNIQUE_CATEGORY)}", rid)
    if kind == "cls" and self.technique is not None:
      want = tokens.CLS_CLASSES.index(TECHNIQUE_CATEGORY[self.technique])
      if want != self.cls_label:
        raise RecordError("cls_label", f"{self.cls_label} disagrees with technique "
                          f"{self.technique!r} ({want})", rid)

  def to_bytes(self) -> bytes:
    self.validate()
    d = dataclasses.asdict(self)
    d["box"] = None if self.box is None else [float(v) for v in self.box]
    d["format"] = QA_FORMAT
    return msgpack.packb(d, use_bin_type=True)

  @classmethod
  def from_bytes(cls, data: bytes) -> "QARecord":
    d = _unpack(data, QA_FORMAT)
    d.pop("format")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise RecordError(unknown[0], "unknown field", d.get("record_id"))
    try:
      rec = cls(**d)
    except TypeError as e:
      raise RecordError("record", str(e), d.get("record_id")) from None
    rec.validate()
    return rec


# ---------------------------------------------------------------------------
# ArrayRecord shards


def write_shard(path: str | os.PathLike, payloads: Iterable[bytes]) -> int:
  """Write byte records to one ArrayRecord file atomically; returns the count."""
  # lazy: the records' encoders run in data_prep's environment too, which reads no shards
  from array_record.python.array_record_module import ArrayRecordWriter

  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
  n = 0
  writer = ArrayRecordWriter(str(tmp), "group_size:1")  # group_size 1: fast random access
  try:
    for payload in payloads:
      writer.write(payload)
      n += 1
  except BaseException:
    writer.close()
    tmp.unlink(missing_ok=True)
    raise
  writer.close()
  os.replace(tmp, path)
  return n


class ShardError(ValueError):
  """A shard that cannot be read (cut short, or not a shard); the message names it."""


def open_shard(path: str | os.PathLike):
  """An ArrayRecordReader of `path`; a missing file or a broken shard is one clear error."""
  # lazy: as in write_shard
  from array_record.python.array_record_module import ArrayRecordReader

  if not Path(path).is_file():
    raise FileNotFoundError(f"shard {str(path)!r} does not exist")
  reader = ArrayRecordReader(str(path))
  if not reader.ok():  # the reader defers its error (its size and footer checks) to close()
    try:
      reader.close()
      why = "not ok"
    except RuntimeError as e:
      why = str(e)
    raise ShardError(f"shard {str(path)!r} cannot be read ({why}): it was cut short or is not "
                     "an ArrayRecord shard; rebuild it (`fifa data build` resumes)")
  return reader


def check_shards(paths: Iterable[str | os.PathLike]) -> None:
  """Open and close each shard (reads only its footer), so a broken one is named up front."""
  for p in paths:
    open_shard(p).close()


def read_shard(path: str | os.PathLike) -> list[bytes]:
  reader = open_shard(path)
  try:
    return reader.read_all()
  finally:
    reader.close()


def write_qa_records(path: str | os.PathLike, records: Iterable[QARecord]) -> int:
  return write_shard(path, (r.to_bytes() for r in records))


def read_qa_records(path: str | os.PathLike) -> Iterator[QARecord]:
  for data in read_shard(path):
    yield QARecord.from_bytes(data)


def qa_shards(out: str | os.PathLike, split: str, task: str | None = None) -> list[Path]:
  """The QA shards of one split (and task) of a build, in order."""
  if split not in SPLITS:
    raise ValueError(f"split {split!r} is not one of {SPLITS}")
  tasks = [task] if task else tokens.TASKS
  return [p for t in tasks for p in sorted((Path(out) / "qa" / split).glob(f"{t}-{split}-*.array_record"))]


def iter_records(out: str | os.PathLike, splits: Iterable[str] = SPLITS):
  for s in splits:
    for p in qa_shards(out, s):
      yield from read_qa_records(p)


class MaskStore:
  """A folder of mask-store shards plus `index.json` (image id -> shard, position).

  `MaskStore.write(folder, entries)` writes it; `MaskStore(folder)[image_id]`
  reads one entry (random access; readers opened lazily, one per shard).
  """

  INDEX = "index.json"

  def __init__(self, folder: str | os.PathLike):
    self.folder = Path(folder)
    index_path = self.folder / self.INDEX
    if not index_path.is_file():
      raise FileNotFoundError(f"{str(self.folder)!r} is not a mask store (no {self.INDEX})")
    meta = json.loads(index_path.read_text())
    if meta.get("format") != MASK_FORMAT:
      raise RecordError("format", f"{index_path}: expected {MASK_FORMAT!r}, got {meta.get('format')!r}")
    self.shards: list[str] = meta["shards"]
    self.index: dict[str, tuple[int, int]] = {k: tuple(v) for k, v in meta["index"].items()}
    self._readers: dict[int, Any] = {}

  @classmethod
  def write(cls, folder: str | os.PathLike, entries: Iterable[MaskEntry],
            entries_per_shard: int = 500, prefix: str = "masks") -> "MaskStore":
    """Stream `entries` into shards of `entries_per_shard`; the index is written last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    index: dict[str, list[int]] = {}
    chunk: list[bytes] = []

    def flush():
      names.append(f"{prefix}-{len(names):05d}.array_record")
      write_shard(folder / names[-1], chunk)
      chunk.clear()

    for e in entries:
      if e.image_id in index:
        raise RecordError("image_id", f"{e.image_id!r} appears twice in one store")
      index[e.image_id] = [len(names), len(chunk)]
      chunk.append(e.to_bytes())
      if len(chunk) == entries_per_shard:
        flush()
    if chunk or not names:
      flush()
    tmp = folder / f".{cls.INDEX}.tmp"
    tmp.write_text(json.dumps({"format": MASK_FORMAT, "shards": names, "index": index}))
    os.replace(tmp, folder / cls.INDEX)  # the index last: a store with one is whole
    return cls(folder)

  @classmethod
  def write_index(cls, folder: str | os.PathLike, shards: Sequence[tuple[str, Sequence[str]]]) -> "MaskStore":
    """Index shards written separately (e.g. one per resumable build unit).

    `shards`: (shard file name in `folder`, image ids in record order) each.
    """
    folder = Path(folder)
    index: dict[str, list[int]] = {}
    for i, (name, ids) in enumerate(shards):
      if not (folder / name).is_file():
        raise FileNotFoundError(f"mask-store shard {str(folder / name)!r} does not exist")
      for pos, image_id in enumerate(ids):
        if image_id in index:
          raise RecordError("image_id", f"{image_id!r} appears twice in one store")
        index[image_id] = [i, pos]
    tmp = folder / f".{cls.INDEX}.tmp"
    tmp.write_text(json.dumps({"format": MASK_FORMAT, "shards": [n for n, _ in shards], "index": index}))
    os.replace(tmp, folder / cls.INDEX)
    return cls(folder)

  def __len__(self) -> int:
    return len(self.index)

  def __contains__(self, image_id: str) -> bool:
    return image_id in self.index

  def ids(self) -> list[str]:
    return list(self.index)

  def __getitem__(self, image_id: str) -> MaskEntry:
    try:
      shard, pos = self.index[image_id]
    except KeyError:
      raise KeyError(f"image {image_id!r} is not in mask store {str(self.folder)!r}") from None
    reader = self._readers.get(shard)
    if reader is None:
      reader = self._readers[shard] = open_shard(self.folder / self.shards[shard])
    return MaskEntry.from_bytes(reader.read([pos])[0])

  def close(self) -> None:
    for r in self._readers.values():
      r.close()
    self._readers.clear()

  def __getstate__(self):  # picklable for grain workers: readers reopen lazily
    d = dict(self.__dict__)
    d["_readers"] = {}
    return d


def make_qa_record(*, record_id: str, image_id: str, source: str, split: str, task: str,
                   prompt: str, answer: str, **kw) -> QARecord:
  """Build and validate a record (a RecordError names the bad field)."""
  rec = QARecord(record_id=record_id, image_id=image_id, source=source, split=split,
                 task=task, prompt=prompt, answer=answer, **kw)
  rec.validate()
  return rec


def cls_label_of(technique: str) -> int:
  return tokens.CLS_CLASSES.index(TECHNIQUE_CATEGORY[technique])


__all__: Sequence[str] = (
    "MASK_FORMAT", "QA_FORMAT", "SPLITS", "TECHNIQUE_CATEGORY", "RecordError", "ShardError",
    "open_shard", "check_shards",
    "rle_encode", "rle_decode", "rle_area", "MaskEntry", "QARecord", "MaskStore",
    "write_shard", "read_shard", "write_qa_records", "read_qa_records",
    "make_qa_record", "cls_label_of",
)
