"""The training input pipeline: ArrayRecord shards -> padded batches -> global arrays.

  per-task sources (mixing.py) -> mix by weight -> this host's slice
  -> Preprocess (one sample: decode, resize, normalise, tokenize, masks)
  -> Collate (pad to a length bucket; static shapes otherwise)
  -> grain iterator (worker processes optional; `get_state`/`set_state` for resume)
  -> `to_global` (jax.make_array_from_process_local_data onto the mesh)

With `workers > 0` the batches are the same as with none (checked: 4 batches and a
resume, 2 workers) but the iterator state has another form: keep `data.workers`
fixed across a resume.

Per-sample conventions (what the loss and the model expect):
* image: decoded (PNG/JPEG), RGB, resized to `image_size` squared (area when
  shrinking, bicubic when enlarging; faces are stored aligned, so no crop), then
  CLIP-normalised as FaRL was trained;
* tokens: the Vicuna v1.1 template; prompt ids (with BOS) then answer ids (ending
  in EOS); the loss mask is 1 on answer tokens only; the one `<image>` becomes
  L_I copies (`expand_image_tokens`); sequences longer than the largest bucket
  are cut at the end (their [SEG]s past the cut lose their masks);
* boxes [1, 4]: the B- task's box in resized-image pixels, zeros otherwise;
* det_label / cls_label: the record's, -1 when absent;
* masks [n, 2, H, W] uint8 at the input image's resolution (`target_size`), one
  per [SEG] left in the ids: the k-th is the k-th [SEG]'s atomic concept;
  channel 0 its Region Mask, channel 1 its Regional Artifact Mask.  Binary
  (nearest-neighbour resize): the loss upsamples the model's low-resolution
  mask logits to this size, as LISA/GLaMM compute theirs at the image's size.
  (Area-averaged targets at the mask size would be fractions below 0.5 for thin
  concepts, which a perfect model would then predict as empty.);
* seg_cols [n]: the position whose hidden state predicts each [SEG].

Collate packs every sample's [SEG]s into one flat list per batch (`seg_rows`,
`seg_cols`, `seg_valid`, `masks` [S, 2, Hm, Wm]) of `seg_capacity` slots, in
row-major order, which is how the model reads them (models.fifa.SegSlots).
The capacity comes from the data (`seg_capacity_for`); [SEG]s beyond it (a
batch of unusually many) are counted in `masks_dropped`, never silently lost.
With gradient accumulation the slots are grouped by micro-batch (rows
i, i+n, ... form micro-batch i), S/n slots each.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Iterator, Sequence

import cv2
import grain
import numpy as np

from fifa_jax import tokens
from fifa_jax.data import mixing, subset
from fifa_jax.data.records import MaskStore, QARecord, read_qa_records

CLIP_MEAN = np.asarray([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.asarray([0.26862954, 0.26130258, 0.27577711], np.float32)


@dataclasses.dataclass(frozen=True)
class Layout:
  """What the model fixes about a batch."""
  image_size: int
  target_size: tuple[int, int]  # mask targets' resolution (the input image's)
  num_image_tokens: int
  buckets: tuple[int, ...]
  tokenizer: str | None = None  # folder; None: the offline demo tokenizer
  seg_capacity: int = 64  # [SEG] slots per (local) batch, all rows together
  # With length-grouped batches, slots per bucket ((bucket, slots), ...); others: seg_capacity.
  seg_capacity_by_bucket: tuple[tuple[int, int], ...] = ()
  micro_batches: int = 1  # gradient accumulation: slots grouped per micro-batch
  augment: bool = False  # random crop/scale and colour jitter of each image (training only)

  def capacity(self, length: int) -> int:
    """[SEG] slots of a batch padded to `length` tokens."""
    return dict(self.seg_capacity_by_bucket).get(length, self.seg_capacity)

  @classmethod
  def for_model(cls, fcfg, buckets: Sequence[int], tokenizer: str | None, **kw) -> Layout:
    return cls(image_size=fcfg.image_size, target_size=(fcfg.image_size, fcfg.image_size),
               num_image_tokens=fcfg.num_image_tokens, buckets=tuple(buckets),
               tokenizer=tokenizer, **kw)


_TOKENIZER_LOCK = threading.Lock()


@functools.cache
def _load_tokenizer(path: str | None):
  return tokens.load_tokenizer(path)


def _tokenizer(path: str | None):
  # grain maps on threads; transformers' lazy imports are not thread-safe.
  with _TOKENIZER_LOCK:
    return _load_tokenizer(path)


def resize_image(rgb: np.ndarray, size: int) -> np.ndarray:
  h, w = rgb.shape[:2]
  interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_CUBIC
  return cv2.resize(rgb, (size, size), interpolation=interp)


def normalise(rgb: np.ndarray) -> np.ndarray:
  return (rgb.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """A binary mask at `size` (nearest neighbour: thin regions keep their pixels), uint8."""
  return cv2.resize(mask.astype(np.uint8), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def decode_image(data: bytes) -> np.ndarray:
  img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  if img is None:
    raise ValueError("image bytes could not be decoded")
  return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def token_ids(rec: QARecord, lay: Layout) -> tuple[np.ndarray, np.ndarray]:
  """A record's input ids (Vicuna v1.1 template, the `<image>` expanded to L_I copies,
  cut at the largest bucket) and its loss mask (1 on the answer and `</s>`)."""
  tok = _tokenizer(lay.tokenizer)
  prompt, target = tokens.VICUNA_V1_1.split(rec.prompt, rec.answer)
  p_ids = tok(prompt).input_ids
  t_ids = tok(target, add_special_tokens=False).input_ids
  p_ids = tokens.expand_image_tokens(p_ids, tokens.special_token_ids(tok)[tokens.IMAGE],
                                     lay.num_image_tokens)
  ids = np.asarray(p_ids + t_ids, np.int32)
  loss_mask = np.concatenate([np.zeros(len(p_ids), np.int32), np.ones(len(t_ids), np.int32)])
  max_len = lay.buckets[-1]
  return ids[:max_len], loss_mask[:max_len]


class Preprocess:
  """Raw QA-record bytes -> one sample of numpy arrays (picklable for grain workers)."""

  def __init__(self, layout: Layout, masks_folder: str):
    self.layout = layout
    self.masks_folder = masks_folder
    self._store: MaskStore | None = None

  def __getstate__(self):
    return {"layout": self.layout, "masks_folder": self.masks_folder, "_store": None}

  @property
  def store(self) -> MaskStore:
    if self._store is None:
      self._store = MaskStore(self.masks_folder)
    return self._store

  def __call__(self, raw: bytes, rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
    lay = self.layout
    tok = _tokenizer(lay.tokenizer)
    ids_of = tokens.special_token_ids(tok)
    rec = QARecord.from_bytes(raw)
    entry = self.store[rec.image_id]
    rgb = decode_image(entry.image)
    h, w = rgb.shape[:2]
    aug = Augment.draw(rng) if lay.augment and rng is not None else None
    small = resize_image(rgb, lay.image_size)
    pixels = normalise(aug.image(small) if aug else small)

    ids, loss_mask = token_ids(rec, lay)

    boxes = np.zeros((1, 4), np.float32)
    if rec.box is not None:
      sx, sy = lay.image_size / w, lay.image_size / h
      boxes[0] = np.asarray(rec.box, np.float32) * np.asarray([sx, sy, sx, sy], np.float32)
      if aug:
        boxes[0] = aug.box(boxes[0], lay.image_size)

    hm, wm = lay.target_size
    seg_at = np.flatnonzero(ids == ids_of[tokens.SEG])
    if len(seg_at) > len(rec.seg_concepts):
      raise ValueError(f"record {rec.record_id}: {len(seg_at)} [SEG]s but "
                       f"{len(rec.seg_concepts)} concepts")
    n = len(seg_at)  # a sequence cut at the largest bucket keeps the masks of its [SEG]s only
    masks = np.zeros((n, 2, hm, wm), np.uint8)
    artifact = entry.artifact_mask()
    for s in range(n):
      region = entry.region_mask(rec.seg_concepts[s])
      masks[s, 0] = resize_mask(region, (hm, wm))
      masks[s, 1] = resize_mask(region & artifact, (hm, wm))
      if aug:
        masks[s] = [aug.mask(m) for m in masks[s]]
    return {
        "input_ids": ids, "loss_mask": loss_mask, "pixels": pixels, "boxes": boxes,
        "det_label": np.int32(-1 if rec.det_label is None else rec.det_label),
        "cls_label": np.int32(-1 if rec.cls_label is None else rec.cls_label),
        "masks": masks, "seg_cols": (seg_at - 1).astype(np.int32),
        "task": np.int32(tokens.TASKS.index(rec.task)),
    }


@dataclasses.dataclass(frozen=True)
class Augment:
  """One draw of training augmentation: scale and shift (the same for the image,
  its masks and its box) and a colour jitter.  No flips: FICT's names say left and right."""
  scale: float
  shift: tuple[float, float]  # fraction of the side
  gain: tuple[float, float, float]
  contrast: float

  @classmethod
  def draw(cls, rng: np.random.Generator) -> Augment:
    return cls(scale=float(rng.uniform(0.9, 1.1)), shift=tuple(rng.uniform(-0.06, 0.06, 2)),
               gain=tuple(rng.uniform(0.85, 1.15) * rng.uniform(0.95, 1.05, 3)),
               contrast=float(rng.uniform(0.85, 1.15)))

  def matrix(self, size: int) -> np.ndarray:
    c = size / 2
    return np.asarray([[self.scale, 0, c - self.scale * c + self.shift[0] * size],
                       [0, self.scale, c - self.scale * c + self.shift[1] * size]], np.float32)

  def image(self, rgb: np.ndarray) -> np.ndarray:
    size = rgb.shape[0]
    out = cv2.warpAffine(rgb, self.matrix(size), (size, size), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101).astype(np.float32)
    mean = out.mean()
    out = (out - mean) * self.contrast + mean
    return np.clip(out * np.asarray(self.gain, np.float32), 0, 255).astype(np.uint8)

  def mask(self, m: np.ndarray) -> np.ndarray:
    return cv2.warpAffine(m, self.matrix(m.shape[0]), (m.shape[1], m.shape[0]),
                          flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)

  def box(self, b: np.ndarray, size: int) -> np.ndarray:
    m = self.matrix(size)
    x = b[[0, 2]] * m[0, 0] + m[0, 2]
    y = b[[1, 3]] * m[1, 1] + m[1, 2]
    return np.clip(np.asarray([x[0], y[0], x[1], y[1]], np.float32), 0, size)


def bucket_length(n: int, buckets: Sequence[int]) -> int:
  for b in buckets:
    if n <= b:
      return b
  return buckets[-1]


class Collate:
  """A list of samples -> one batch, token arrays right-padded to a length bucket."""

  def __init__(self, layout: Layout):
    self.layout = layout

  def __call__(self, samples: Sequence[dict]) -> dict[str, np.ndarray]:
    tok = _tokenizer(self.layout.tokenizer)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    length = bucket_length(max(len(s["input_ids"]) for s in samples), self.layout.buckets)
    b = len(samples)
    ids = np.full((b, length), pad, np.int32)
    attn = np.zeros((b, length), np.int32)
    lmask = np.zeros((b, length), np.int32)
    for i, s in enumerate(samples):
      n = len(s["input_ids"])
      ids[i, :n], attn[i, :n], lmask[i, :n] = s["input_ids"], 1, s["loss_mask"]
    out = {"input_ids": ids, "attention_mask": attn, "loss_mask": lmask}
    for k in ("pixels", "boxes", "det_label", "cls_label", "task"):
      out[k] = np.stack([s[k] for s in samples])
    out.update(pack_segs(samples, self.layout.capacity(length), self.layout.micro_batches,
                         self.layout.target_size))
    return out


def pack_segs(samples: Sequence[dict], capacity: int, micro_batches: int,
              target_size: tuple[int, int]) -> dict[str, np.ndarray]:
  """Every sample's [SEG]s (`seg_cols`, `masks`) -> one flat list of `capacity` slots.

  Row-major within each micro-batch group (rows g, g+n, ... for group g of n);
  `masks_dropped` [B] counts, per row, the [SEG]s that found no free slot.
  """
  n = micro_batches
  if capacity % n:
    raise ValueError(f"seg_capacity {capacity} does not split into {n} micro-batches")
  per = capacity // n
  rows = np.zeros(capacity, np.int32)
  cols = np.zeros(capacity, np.int32)
  valid = np.zeros(capacity, bool)
  masks = np.zeros((capacity, 2, *target_size), np.uint8)
  dropped = np.zeros(len(samples), np.int32)
  for g in range(n):
    k = g * per
    for r in range(g, len(samples), n):
      m, c = samples[r]["masks"], samples[r]["seg_cols"]
      take = min(len(c), g * per + per - k)
      rows[k:k + take], cols[k:k + take], valid[k:k + take] = r, c[:take], True
      masks[k:k + take] = m[:take]
      dropped[r] = len(c) - take
      k += take
  return {"seg_rows": rows, "seg_cols": cols, "seg_valid": valid, "masks": masks,
          "masks_dropped": dropped}


def pad_to_length(batch: dict[str, np.ndarray], length: int, pad_id: int,
                  capacity: int | None = None, micro_batches: int = 1) -> dict[str, np.ndarray]:
  """Right-pad the token arrays further, and with `capacity` the [SEG] slots too, each
  micro-batch's group at its end (hosts agreeing on one bucket)."""
  out = dict(batch)
  extra = length - batch["input_ids"].shape[1]
  if extra > 0:
    for k, v in (("input_ids", pad_id), ("attention_mask", 0), ("loss_mask", 0)):
      out[k] = np.pad(batch[k], ((0, 0), (0, extra)), constant_values=v)
  have = batch["seg_rows"].shape[0] if "seg_rows" in batch else 0
  if capacity is not None and capacity > have:
    n = micro_batches
    for k in ("seg_rows", "seg_cols", "seg_valid", "masks"):
      v = batch[k].reshape(n, have // n, *batch[k].shape[1:])
      widths = [(0, 0), (0, (capacity - have) // n)] + [(0, 0)] * (v.ndim - 2)
      out[k] = np.pad(v, widths).reshape(capacity, *batch[k].shape[1:])
  return out


@dataclasses.dataclass
class PipelineConfig:
  root: str
  qa_glob: str
  masks: str
  tasks: dict[str, float]
  split: str
  seed: int
  local_batch: int
  workers: int = 0
  worker_buffer: int = 2
  shuffle: bool = True
  group_by_length: int = 0  # batches per window sorted by length (0: batches as mixed)


def lengths_and_segs(recs: Sequence[QARecord], lay: Layout) -> tuple[np.ndarray, np.ndarray]:
  """Per record, the tokens it takes in a batch (before padding) and the [SEG]s left in
  them: what `token_ids` gives, from one batched tokenizer call."""
  if not recs:
    return np.zeros(0, np.int64), np.zeros(0, np.int64)
  tok = _tokenizer(lay.tokenizer)
  seg = tokens.special_token_ids(tok)[tokens.SEG]
  split = [tokens.VICUNA_V1_1.split(r.prompt, r.answer) for r in recs]
  prompts = tok([p for p, _ in split]).input_ids
  answers = tok([a for _, a in split], add_special_tokens=False).input_ids
  lengths, segs = [], []
  for p, a in zip(prompts, answers):
    room = lay.buckets[-1] - (len(p) + lay.num_image_tokens - 1)  # <image> -> L_I copies
    lengths.append(min(len(p) + lay.num_image_tokens - 1 + len(a), lay.buckets[-1]))
    segs.append(sum(1 for t in a[:max(room, 0)] if t == seg))
  return np.asarray(lengths, np.int64), np.asarray(segs, np.int64)


class LengthGrouped(grain.MapDataset):
  """The mixed stream reordered so that a batch holds records of about one length.

  Windows of `window` batches of the stream are sorted by token length and cut into
  batches, whose order within the window is then shuffled: every record stays in its
  window (the task mixture and epochs are unchanged), but a batch of short records
  (Det., Cls., most R-/B- answers) pads to a short bucket instead of the longest
  record's, as HF Trainer's `group_by_length` and tf.data's bucketing do.  A pure
  function of the index, so resumes and host slices behave as without it.
  """

  def __init__(self, samples: grain.MapDataset, raw: grain.MapDataset, layout: Layout,
               batch: int, window: int, seed: int):
    super().__init__([samples, raw])
    self._samples, self._raw = samples, raw
    self._layout, self._batch, self._window, self._seed = layout, batch, window, seed
    self._order = functools.lru_cache(maxsize=4)(self._window_order)

  def __len__(self) -> int:
    return len(self._samples)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    size = self._batch * self._window
    w, k = divmod(index, size)
    if (w + 1) * size > len(self):  # a finite stream's last, partial window: as it comes
      return self._samples[index]
    return self._samples[w * size + int(self._order(w)[k])]

  def _window_order(self, w: int) -> np.ndarray:
    """Window `w`'s positions, shortest first, in batches of `batch` shuffled as wholes."""
    size = self._batch * self._window
    recs = [QARecord.from_bytes(self._raw[w * size + i]) for i in range(size)]
    lengths, _ = lengths_and_segs(recs, self._layout)
    by_length = np.argsort(lengths, kind="stable").reshape(self._window, self._batch)
    rng = np.random.default_rng((self._seed, w))
    return by_length[rng.permutation(self._window)].reshape(-1)

  def __getstate__(self):  # grain's worker processes get a copy without the cache
    state = dict(self.__dict__)
    del state["_order"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._order = functools.lru_cache(maxsize=4)(self._window_order)

  def __str__(self) -> str:
    return f"LengthGrouped(batch={self._batch}, window={self._window})"


def make_dataset(pc: PipelineConfig, layout: Layout, process_index: int = 0,
                 process_count: int = 1) -> grain.IterDataset:
  sources = mixing.task_sources(pc.qa_glob, pc.root, pc.split, pc.tasks)
  stream = mixing.mixed_stream(sources, pc.tasks, pc.seed, shuffle=pc.shuffle)
  stream = mixing.host_slice(stream, process_index, process_count)
  masks = pc.masks.format(root=pc.root, split=pc.split)
  pre = Preprocess(layout, masks)
  # Augmentation draws from a seed per position in the stream: resumes repeat it exactly.
  samples = stream.random_map(pre, seed=pc.seed) if layout.augment else stream.map(pre)
  if pc.group_by_length > 0:
    samples = LengthGrouped(samples, stream, layout, pc.local_batch, pc.group_by_length, pc.seed)
  ds = samples.batch(pc.local_batch, batch_fn=Collate(layout))
  # Threads for reading/decoding in each process; order stays deterministic.
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
  if pc.workers > 0:
    _absl_flags_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=pc.workers,
                                                     per_worker_buffer_size=pc.worker_buffer))
  return it


def _absl_flags_parsed() -> None:
  """grain's worker processes read absl flags; a CLI that is not absl's must mark them parsed."""
  # lazy: absl is grain's dependency, needed only when workers start
  from absl import flags
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def iterate(pc: PipelineConfig, layout: Layout, process_index: int = 0, process_count: int = 1,
            state: dict | None = None) -> Iterator[dict[str, np.ndarray]]:
  """A grain iterator (has get_state/set_state), optionally restored to `state`."""
  it = iter(make_dataset(pc, layout, process_index, process_count))
  if state is not None:
    it.set_state(state)
  return it


def seg_counts(pc: PipelineConfig) -> dict[str, np.ndarray]:
  """[SEG]s per record, per task with a positive weight, from the split's shards."""
  out = {}
  for task, w in pc.tasks.items():
    if w > 0 and tokens.task_has_masks(task):
      files = mixing.task_files(pc.qa_glob, pc.root, pc.split, task)
      out[task] = np.asarray([tokens.count_segs(r.answer) for f in files for r in read_qa_records(f)],
                             np.int64)
  return out


def seg_capacity_for(counts: dict[str, np.ndarray], weights: dict[str, float], batch: int,
                     multiple: int = 8, sigmas: float = 4.0) -> int:
  """[SEG] slots for a batch of `batch` records mixed by `weights`, from the data.

  The batch's total is a sum of `batch` draws from the task mixture: its mean
  plus `sigmas` standard deviations (so an overflow, counted in `masks_dropped`,
  is rare), at least the largest single record, at most every record at the
  maximum; rounded up to `multiple` (devices x micro-batches).
  """
  total = sum(w for w in weights.values() if w > 0)
  mean = second = 0.0
  biggest = 0
  for task, w in weights.items():
    if w <= 0:
      continue
    c = counts.get(task)
    p = w / total
    if c is not None and len(c):
      mean += p * c.mean()
      second += p * (c.astype(np.float64) ** 2).mean()
      biggest = max(biggest, int(c.max()))
  std = max(second - mean * mean, 0.0) ** 0.5
  need = batch * mean + sigmas * std * batch ** 0.5
  need = min(max(need, biggest, 1), batch * max(biggest, 1))
  return int(-(-int(np.ceil(need)) // multiple) * multiple)


def seg_capacity_by_bucket(pc: PipelineConfig, lay: Layout, multiple: int = 8,
                           per_task: int = 4000) -> tuple[tuple[int, int], ...]:
  """[SEG] slots per length bucket for length-grouped batches, from the data.

  A grouped batch of bucket b holds records of about that length, so its slots are
  `seg_capacity_for` over the records (up to `per_task` of each task, spread over the
  split) that fall in b, each task weighted by its mixing weight times its share of
  records in b.  Long answers carry the most [SEG]s; short batches get few slots and
  the mask decoder's cost follows.
  """
  stats = {}
  for task, w in pc.tasks.items():
    if w > 0:
      files = mixing.task_files(pc.qa_glob, pc.root, pc.split, task)
      recs = subset.spread([r for f in files for r in read_qa_records(f)], per_task)
      lengths, segs = lengths_and_segs(recs, lay)
      stats[task] = (np.asarray([bucket_length(n, lay.buckets) for n in lengths]), segs)
  out = []
  for b in lay.buckets:
    counts = {t: segs[at == b] for t, (at, segs) in stats.items()}
    weights = {t: pc.tasks[t] * float((at == b).mean()) if len(at) else 0.0
               for t, (at, _) in stats.items()}
    if sum(weights.values()) > 0:
      out.append((b, seg_capacity_for(counts, weights, pc.local_batch, multiple)))
    else:
      out.append((b, multiple))  # no record this long
  return tuple(out)
