"""Ask FiFa from Python, in the style of transformers' pipelines:

    from fifa_jax import FiFa
    model = FiFa.load("demo_out/train")               # a workdir, a step or a model folder
    answer = model.ask("face.png", task="i-age")       # one of the 11 FiFa-11 tasks
    answer = model.ask(rgb, task="r-loc", region="nose")
    answer = model.ask(pil_image, task="b-toe", box=(10, 20, 90, 110))
    answer = model.ask("face.png", "Is anything odd about the eyes?")   # any question
    answers = model.ask_many([("a.png", "det"), ("b.png", "i-loc")])    # batched
    answer = model.ask("photo.jpg", task="det", faces="largest")     # a photo: its largest face
    answers = model.ask_faces("group.jpg", task="i-age")             # every face of a photo
    answer.text, answer.is_fake, answer.grounded[0].concept, answer.grounded[0].mask
    answer.overlay()              # RGB array: each grounded phrase coloured like its mask
    answer.save_overlay("o.png"); answer.to_json()

FiFa was trained on face crops.  `faces="largest"` and `ask_faces` find the faces of a
photo first (the annotator's detector, `infer/faces.py`), ask about each one cropped as
the training faces are, and put the masks and box back on the photo (`Answer.face`
says where the face is).  The default, `faces="none"`, asks about the image as given.

The model is loaded in the decoding layout (`models/decoding.py`).  Images are paths,
arrays (HxW grey, HxWx3 RGB or HxWx4 RGBA, uint8) or PIL images.  Queries go through
`infer.predict`, the code path `fifa infer` and `fifa eval` use.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fifa_jax import tokens
from fifa_jax.infer import faces as faces_lib
from fifa_jax.infer import load as load_lib
from fifa_jax.infer import overlay, predict
from fifa_jax.infer import run as run_lib

QueryError = predict.QueryError
FaceError = faces_lib.FaceError


@dataclasses.dataclass
class Grounded:
  """One `<p>phrase</p>[SEG]` of an answer with its masks."""
  phrase: str
  concept: str | None  # the FICT concept the phrase names, if one is close enough
  mask: np.ndarray  # bool [H, W]: the Regional Artifact Mask, at the image's size
  region_mask: np.ndarray  # bool [H, W]: the Region Mask (auxiliary output)
  score: float  # mean artifact probability inside `mask`


@dataclasses.dataclass
class Answer:
  image: np.ndarray  # the RGB image asked about
  task: str | None  # None for a free question
  question: str
  text: str  # markers kept: "... <p>nose</p> [SEG] ..."
  grounded: list[Grounded]
  det_probs: dict[str, float]  # the Det. head: {"real": p, "fake": p}
  cls_probs: dict[str, float]  # the Cls. head over tokens.CLS_CLASSES
  region: str | None = None
  box: tuple[float, ...] | None = None
  source: str = ""
  face: faces_lib.Face | None = None  # where in the photo the face asked about is (faces= modes)

  @property
  def plain_text(self) -> str:
    """The answer without `<p>`, `</p>` and `[SEG]`."""
    return tokens.strip_markers(self.text)

  @property
  def is_fake(self) -> bool:
    """The Det. head's verdict."""
    return self.det_probs["fake"] > self.det_probs["real"]

  def overlay(self) -> np.ndarray:
    """The image with each grounded phrase's mask in its own colour, and a legend."""
    return run_lib.picture(self.image, self.task, self.region, [g.mask for g in self.grounded],
                           [g.phrase for g in self.grounded], self.text, self.box,
                           self.face.crop if self.face else None)

  def save_overlay(self, path: str | os.PathLike) -> Path:
    overlay.save_png(path, self.overlay())
    return Path(path)

  def to_json(self, image_name: str = "") -> dict[str, Any]:
    """The `answer.json` schema of `fifa infer` (masks as RLE)."""
    h, w = self.image.shape[:2]
    return {
        "task": self.task, "region": self.region, "box": list(self.box) if self.box else None,
        "prompt": self.question, "answer": self.text, "answer_plain": self.plain_text,
        "grounded": [{"phrase": g.phrase, "concept": g.concept, "score": g.score,
                      "area": int(g.mask.sum()), "mask_rle": run_lib.rle_json(g.mask)}
                     for g in self.grounded],
        "det_probs": self.det_probs, "cls_probs": self.cls_probs,
        "checkpoint": self.source, "image": image_name, "size": [h, w],
        **({"face": self.face.to_json()} if self.face else {})}


class FiFa:
  """A trained FiFa-MLLM, ready to be asked about faces."""

  def __init__(self, loaded: load_lib.Loaded, max_new_tokens: int = 128):
    self.loaded = loaded
    self.max_new_tokens = max_new_tokens
    self._face_finder: faces_lib.FaceFinder | None = None

  @classmethod
  def load(cls, path: str | os.PathLike, *, tokenizer: str | None = None,
           dtype: str | None = None, max_new_tokens: int = 128) -> FiFa:
    """From a training workdir, `WORKDIR/checkpoints/<step>` or a `fifa convert model`
    folder.  `dtype`: the weights' dtype (default: the model's compute dtype)."""
    return cls(load_lib.load(path, tokenizer, param_dtype=dtype), max_new_tokens)

  @property
  def config(self):
    return self.loaded.config

  @property
  def face_finder(self) -> faces_lib.FaceFinder:
    """The face detector (a helper process, started on first use)."""
    if self._face_finder is None:
      self._face_finder = faces_lib.FaceFinder()
    return self._face_finder

  def close(self) -> None:
    """End the face finder's helper process, if one was started."""
    if self._face_finder is not None:
      self._face_finder.close()
      self._face_finder = None

  def ask(self, image, question: str | None = None, *, task: str | None = None,
          region: str | None = None, box: Sequence[float] | None = None,
          max_new_tokens: int | None = None, faces: str = "none") -> Answer:
    """One answer: give `task` (one of tokens.TASKS, with `region` for R- tasks and
    `box` for B- tasks) or a free `question` (a task name also works positionally).
    `faces="largest"`: `image` is a photo; its largest face is found and asked about."""
    query = dict(image=image, question=question, task=task, region=region, box=box)
    if faces_lib.check_mode(faces) == "none":
      return self.ask_many([query], max_new_tokens=max_new_tokens)[0]
    return self._ask_photo(query, faces, max_new_tokens)[0]

  def ask_faces(self, image, question: str | None = None, *, task: str | None = None,
                region: str | None = None, box: Sequence[float] | None = None,
                max_new_tokens: int | None = None) -> list[Answer]:
    """One answer per face of a photo, largest first (with a `box`: the faces it lies on).
    FaceError when there is no face, or none large enough."""
    query = dict(image=image, question=question, task=task, region=region, box=box)
    return self._ask_photo(query, "all", max_new_tokens)

  def _ask_photo(self, query: dict, mode: str, max_new_tokens: int | None) -> list[Answer]:
    photo, pairs = self.face_queries(query, mode)
    parsed = [p for _, p in pairs]
    answers = []
    for start in range(0, len(parsed), 8):
      answers += self.answer(parsed[start:start + 8], max_new_tokens)
    return [on_photo(a, f, photo) for a, (f, _) in zip(answers, pairs)]

  def face_queries(self, query: dict, mode: str) -> tuple[np.ndarray, list[tuple[faces_lib.Face, tuple]]]:
    """(the photo, [(a face, its parsed query about the face's crop)]) for `ask`'s arguments;
    `mode` "largest" or "all".  The server answers these and moves them back with `on_photo`."""
    checked, _ = parse_query(query)  # the question, region and box, on the whole photo first
    photo, box = checked.rgb, checked.box
    found = faces_lib.choose(self.face_finder.find(photo), mode, box=box)
    return photo, [(f, parse_query(dict(query, image=faces_lib.crop_face(photo, f),
                                        box=faces_lib.box_to_crop(box, f) if box is not None else None)))
                   for f in found]

  def ask_many(self, queries: Iterable[dict | tuple], *, batch_size: int = 8,
               max_new_tokens: int | None = None) -> list[Answer]:
    """Answers for many queries, `batch_size` per generation.  Each query is a dict of
    `ask`'s arguments or a tuple (image, task_or_question[, region_or_box])."""
    parsed = [parse_query(q) for q in queries]  # every query checked before any generation
    answers = []
    for start in range(0, len(parsed), batch_size):
      answers += self.answer(parsed[start:start + batch_size], max_new_tokens)
    return answers

  def answer(self, parsed: Sequence[tuple[predict.Query, bool]],
             max_new_tokens: int | None = None) -> list[Answer]:
    """One generation for queries from `parse_query` (the server batches through this)."""
    preds = predict.predict(self.loaded, [q for q, _ in parsed],
                            max_new_tokens=max_new_tokens or self.max_new_tokens)
    return [self._answer(q, free, p) for (q, free), p in zip(parsed, preds)]

  def chat(self, image) -> Chat:
    """Questions in turn about one image; each answer sees the turns before it."""
    return Chat(self, image)

  def _answer(self, q: predict.Query, free: bool, p: predict.Prediction) -> Answer:
    grounded = [Grounded(phrase, run_lib.nearest_concept(phrase), m, r, s)
                for phrase, m, r, s in zip(p.phrases, p.artifact_masks, p.region_masks, p.mask_scores)]
    return Answer(image=q.rgb, task=None if free else q.task, question=q.question(), text=p.text,
                  grounded=grounded, det_probs=dict(zip(tokens.DET_CLASSES, p.det_probs)),
                  cls_probs=dict(zip(tokens.CLS_CLASSES, p.cls_probs)), region=q.region,
                  box=tuple(q.box) if q.box is not None else None, source=self.loaded.source)


class Chat:
  """A conversation about one image (the Vicuna v1.1 multi-turn template; the image
  goes with the first turn).  `ask` takes what `FiFa.ask` takes, less the image."""

  def __init__(self, model: FiFa, image):
    self.model, self.rgb = model, to_rgb(image)
    self.history: list[tuple[str, str]] = []  # (question, answer) as the model saw them

  def ask(self, question: str | None = None, *, task: str | None = None, region: str | None = None,
          box: Sequence[float] | None = None, max_new_tokens: int | None = None) -> Answer:
    q, free = parse_query(dict(image=self.rgb, question=question, task=task, region=region, box=box))
    text = q.question()
    if self.history:
      text = text.replace(f"{tokens.IMAGE}\n", "", 1)
    q = dataclasses.replace(q, prompt=text, history=tuple(self.history))
    answer = self.model.answer([(q, free)], max_new_tokens)[0]
    self.history.append((text, answer.text))
    return answer


def on_photo(answer: Answer, face: faces_lib.Face, photo: np.ndarray) -> Answer:
  """An answer about a face crop, moved onto the photo it was cropped from."""
  hw = photo.shape[:2]
  grounded = [dataclasses.replace(g, mask=faces_lib.paste_mask(g.mask, face, hw),
                                  region_mask=faces_lib.paste_mask(g.region_mask, face, hw))
              for g in answer.grounded]
  box = faces_lib.box_to_photo(answer.box, face) if answer.box is not None else None
  return dataclasses.replace(answer, image=photo, grounded=grounded, box=box, face=face)


def to_rgb(image) -> np.ndarray:
  """RGB uint8 [H, W, 3] from a path, encoded bytes, an array (grey, RGB, RGBA) or a PIL image."""
  if isinstance(image, (str, os.PathLike)):
    return predict.read_image(image)
  if isinstance(image, (bytes, bytearray, memoryview)):
    return predict.decode_image(bytes(image))
  if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image, without importing PIL
    image = np.asarray(image.convert("RGB"))
  a = np.asarray(image)
  if a.ndim == 2:
    a = np.repeat(a[..., None], 3, axis=-1)
  if a.ndim != 3 or a.shape[-1] not in (3, 4) or a.dtype != np.uint8:
    raise QueryError(f"image array of shape {a.shape} and dtype {a.dtype}: expected uint8 "
                     "[H, W] grey, [H, W, 3] RGB or [H, W, 4] RGBA")
  return np.ascontiguousarray(a[..., :3])


def parse_query(q: dict | tuple) -> tuple[predict.Query, bool]:
  """(a validated Query, is it a free question) from `ask`'s arguments."""
  if isinstance(q, tuple):
    image, what, *rest = q
    extra = rest[0] if rest else None
    q = dict(image=image, question=what,
             region=extra if isinstance(extra, str) else None,
             box=extra if extra is not None and not isinstance(extra, str) else None)
  q = dict(q)
  unknown = set(q) - {"image", "question", "task", "region", "box"}
  if unknown:
    raise QueryError(f"unknown query fields {sorted(unknown)}; expected image, task or question, "
                     "region, box")
  task, question, box = q.get("task"), q.get("question"), q.get("box")
  if question is not None and question.lower() in tokens.TASKS and task is None:
    task, question = question.lower(), None  # ask(img, "det")
  if (task is None) == (question is None):
    raise QueryError("give a task (one of " + ", ".join(tokens.TASKS) + ") or a question, not both")
  rgb = to_rgb(q["image"])
  box = tuple(float(v) for v in box) if box is not None else None
  if task is not None:
    query = predict.Query(rgb, task.lower(), region=q.get("region"), box=box)
    query.validate()
    return query, False
  if not question.strip():
    raise QueryError("the question is empty")
  if q.get("region"):
    raise QueryError("region goes with the R- tasks (task='r-loc', 'r-toe' or 'r-age'), "
                     "not with a free question")
  prompt = question if tokens.IMAGE in question else f"{tokens.IMAGE}\n{question}"
  if box is not None and tokens.BBOX not in prompt:
    prompt += f" {tokens.BBOX}"  # where the box's token goes
  # The task only decides what validate() demands (a box for <bbox>, no region).
  pseudo = "b-toe" if box is not None else "i-toe"
  query = predict.Query(rgb, pseudo, box=box, prompt=prompt)
  query.validate()
  return query, True
