"""Ask FiFa-MLLM about faces: a batch of (image, task, region/box) queries in,
answers with one (Regional Artifact, Region) mask pair per generated [SEG] out.

Used by `fifa infer` (one image) and `fifa eval` (batches over the mesh).
Prompts are rendered exactly as training renders them (tokens.render_prompt,
the Vicuna v1.1 template, `<image>` expanded to L_I copies) and left-padded, so
the generated continuations of a batch line up.
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fifa_jax import fict, mesh as mesh_lib, tokens
from fifa_jax.data.pipeline import normalise, resize_image
from fifa_jax.models.generate import GenerationConfig
from fifa_jax.infer.load import Loaded


class QueryError(ValueError):
  """A query the model cannot be asked; the message names the bad input."""


MIN_SIDE = 16  # pixels: a face smaller than this carries nothing to ask about
MAX_PIXELS = 100_000_000  # an image larger than this (a 1-MB PNG can hold 400 MP) is refused unread


@dataclasses.dataclass
class Query:
  rgb: np.ndarray  # [H, W, 3] uint8
  task: str
  region: str | None = None  # a FICT concept, for R- tasks
  box: Sequence[float] | None = None  # (x1, y1, x2, y2) image pixels, for B- tasks
  variant: int = 0  # which paraphrase of the task's prompt
  prompt: str | None = None  # a question as written (evaluation uses the record's own)
  history: tuple[tuple[str, str], ...] = ()  # earlier (question, answer) turns of a chat

  def question(self) -> str:
    return self.prompt or tokens.render_prompt(self.task, region=self.region, variant=self.variant)

  def validate(self) -> None:
    h, w = self.rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
      raise QueryError(f"image of {w}x{h} pixels is too small to ask about (at least {MIN_SIDE} a side)")
    if self.task not in tokens.TASKS:
      raise QueryError(f"unknown task {self.task!r}; expected one of {', '.join(tokens.TASKS)}")
    level = tokens.task_level(self.task)
    if level == "region":
      if not self.region:
        raise QueryError(f"task {self.task} needs --region NAME (a FICT concept)")
      if self.region not in fict.CONCEPTS:
        near = fict.suggest(self.region)
        hint = f"; nearest FICT names: {', '.join(repr(n) for n in near)}" if near else ""
        raise QueryError(f"region {self.region!r} is not a FICT concept{hint}")
    elif self.region:
      raise QueryError(f"task {self.task} takes no region")
    h, w = self.rgb.shape[:2]
    if level == "box":
      if self.box is None or len(self.box) != 4:
        raise QueryError(f"task {self.task} needs --box x1,y1,x2,y2 (image pixels)")
      x1, y1, x2, y2 = self.box
      if not (0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h):
        raise QueryError(f"box {list(self.box)} does not lie inside the {w}x{h} image "
                         "with x1 < x2 and y1 < y2")
    elif self.box is not None:
      raise QueryError(f"task {self.task} takes no box")


@dataclasses.dataclass
class Prediction:
  text: str  # the answer, markers kept
  phrases: list[str]  # one per [SEG] that got a mask
  artifact_masks: list[np.ndarray]  # bool [H, W] each: the Regional Artifact Mask
  region_masks: list[np.ndarray]  # bool [H, W] each: the Region Mask (auxiliary output)
  mask_scores: list[float]  # mean artifact probability inside each predicted mask
  det_probs: list[float]  # the Det. head: [real, fake]
  cls_probs: list[float]  # the Cls. head over tokens.CLS_CLASSES


def read_image(path) -> np.ndarray:
  """RGB uint8 from a file; a clear error when it cannot be read."""
  if path is None or not Path(path).is_file():
    raise QueryError(f"image {str(path)!r} does not exist")
  return decode_image(np.fromfile(str(path), np.uint8).tobytes(), f"image {str(path)!r}")


def check_size(data: bytes, name: str = "the image", max_pixels: int = MAX_PIXELS,
               max_side: int | None = None) -> None:
  """Refuse an encoded image whose header says it is too large, before decoding it.
  Formats PIL does not know are left to OpenCV."""
  import PIL.Image  # lazy: only for the header; OpenCV decodes

  too_large = f"over the {max_pixels / 1e6:.0f} MP limit; downscale it first"
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
      with PIL.Image.open(io.BytesIO(data)) as im:
        w, h = im.size
  except PIL.Image.DecompressionBombError as e:  # PIL's own limit (358 MP) is above ours
    found = re.search(r"\((\d+) pixels\)", str(e))
    size = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "too large"
    raise QueryError(f"{name} is {size}, {too_large}") from None
  except (OSError, ValueError, SyntaxError):
    return
  if w * h > max_pixels:
    raise QueryError(f"{name} is {w}x{h} pixels ({w * h / 1e6:.0f} MP), {too_large}")
  if max_side is not None and max(w, h) > max_side:
    raise QueryError(f"{name} of {w}x{h} pixels exceeds the limit of {max_side} a side")


def decode_image(data: bytes, name: str = "the image", max_pixels: int = MAX_PIXELS) -> np.ndarray:
  """RGB uint8 from encoded bytes (any format OpenCV reads; 16-bit, grey and alpha become
  8-bit RGB, EXIF orientation applied); a clear error when they are not an image, or when
  the header says it is larger than `max_pixels` (checked before anything is decoded)."""
  img = None
  if data:
    check_size(data, name, max_pixels)
    log = cv2.utils.logging
    level = log.getLogLevel()
    log.setLogLevel(log.LOG_LEVEL_SILENT)  # our message below says it; OpenCV's would repeat it
    try:
      img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    finally:
      log.setLogLevel(level)
  if img is None:
    raise QueryError(f"{name} could not be read as an image")
  return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def encode(loaded: Loaded, queries: Sequence[Query]) -> dict[str, np.ndarray]:
  """Left-padded prompt ids, attention mask, pixels and boxes for a batch."""
  cfg, tok = loaded.config, loaded.tokenizer
  ids_list, boxes = [], np.zeros((len(queries), 1, 4), np.float32)
  pixels = np.zeros((len(queries), cfg.image_size, cfg.image_size, 3), np.float32)
  for i, q in enumerate(queries):
    q.validate()
    ids = tok(tokens.VICUNA_V1_1.prompt(q.question(), q.history)).input_ids
    ids_list.append(tokens.expand_image_tokens(ids, cfg.image_token_id, cfg.num_image_tokens))
    h, w = q.rgb.shape[:2]
    pixels[i] = normalise(resize_image(q.rgb, cfg.image_size))
    if q.box is not None:
      s = np.asarray([cfg.image_size / w, cfg.image_size / h] * 2, np.float32)
      boxes[i, 0] = np.asarray(q.box, np.float32) * s
  # Round up so batches of similar prompts share one compiled generation.
  length = -(-max(map(len, ids_list)) // 32) * 32
  pad = tok.pad_token_id if tok.pad_token_id is not None else 0
  input_ids = np.full((len(queries), length), pad, np.int32)
  mask = np.zeros((len(queries), length), np.int32)
  for i, ids in enumerate(ids_list):
    input_ids[i, length - len(ids):], mask[i, length - len(ids):] = ids, 1
  return {"input_ids": input_ids, "attention_mask": mask, "pixels": pixels, "boxes": boxes}


@nnx.jit
def _heads(model, pixels):
  image, _ = model.encode_image(pixels)
  det, cls = model.classify(image)
  return jax.nn.softmax(det, -1), jax.nn.softmax(cls, -1)


def generation_config(loaded: Loaded, max_new_tokens: int, do_sample: bool = False,
                      temperature: float = 1.0) -> GenerationConfig:
  tok = loaded.tokenizer
  return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
                          eos_token_ids=(tok.eos_token_id,),
                          pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else 0)


def place(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
  """A batch split over the mesh's data x fsdp axes (rows repeated at the end to fill it;
  predictions are read for the real rows only)."""
  rows = mesh.shape["data"] * mesh.shape["fsdp"]
  n = len(batch["input_ids"])
  extra = -n % rows
  out = {}
  for k, v in batch.items():
    v = np.concatenate([v, np.repeat(v[-1:], extra, 0)]) if extra else v
    out[k] = jax.device_put(v, mesh_lib.batch_sharding(mesh, v.ndim))
  return out


def predict(loaded: Loaded, queries: Sequence[Query], *, max_new_tokens: int = 128,
            batch: dict | None = None, rng: jax.Array | None = None,
            gen: GenerationConfig | None = None) -> list[Prediction]:
  """Answers for `queries` (one batch).  `batch` may carry arrays already placed on a mesh."""
  if batch is None:
    batch = encode(loaded, queries)
    if loaded.mesh is not None:
      batch = place(batch, loaded.mesh)
  gen = gen or generation_config(loaded, max_new_tokens)
  out = loaded.model.generate(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["pixels"]),
                              boxes=jnp.asarray(batch["boxes"]),
                              attention_mask=jnp.asarray(batch["attention_mask"]), config=gen, rng=rng)
  det, cls = _heads(loaded.model, jnp.asarray(batch["pixels"]))
  toks, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  logits, valid = np.asarray(out.mask_logits, np.float32), np.asarray(out.seg_valid)
  seg_rows = np.asarray(out.seg_rows)
  det, cls = np.asarray(det), np.asarray(cls)
  eos = set(gen.eos_token_ids)
  preds = []
  for i, q in enumerate(queries):
    ids = [int(t) for t in toks[i, :lengths[i]] if int(t) not in eos]
    text = loaded.tokenizer.decode(ids, skip_special_tokens=False).strip()
    phrases = tokens.grounded_phrases(text)
    h, w = q.rgb.shape[:2]
    art, reg, scores = [], [], []
    for s in np.flatnonzero(valid & (seg_rows == i)):  # this row's [SEG]s, in order
      # Masks at the image's resolution (bilinear logits, then the 0.5 threshold), as LISA.
      prob = _sigmoid(cv2.resize(logits[s, 1], (w, h), interpolation=cv2.INTER_LINEAR))
      region = _sigmoid(cv2.resize(logits[s, 0], (w, h), interpolation=cv2.INTER_LINEAR)) > 0.5
      m = prob > 0.5
      art.append(m)
      reg.append(region)
      scores.append(float(prob[m].mean()) if m.any() else 0.0)
    # A [SEG] without <p>phrase</p> still gets its mask; it is labelled by position.
    phrases = (phrases + [f"[SEG] {k + 1}" for k in range(len(phrases), len(art))])[:len(art)]
    preds.append(Prediction(text=text, phrases=phrases, artifact_masks=art, region_masks=reg,
                            mask_scores=scores, det_probs=det[i].tolist(), cls_probs=cls[i].tolist()))
  return preds


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 1.0 / (1.0 + np.exp(-x))
