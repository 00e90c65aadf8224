"""Steps 3-5 explanations for `fifa data build`: one interface over the offline
template explainer and an OpenAI-compatible LLM (data_prep.explain).

Both take batches, so the LLM runs its requests concurrently:
  step3({job: Step3Job}) -> {job: {concept: description} | Exception}
  step4({job: {concept: description}}) -> {job: tagged summary text | Exception}
`explain_unit` runs both for a unit of images and parses each summary's `<i> phrase </i>`
tags (explain.parse_summary), rejecting a summary whose tags do not match its concepts.
"""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np

from data_prep import explain


@dataclasses.dataclass
class Step3Job:
  image_id: str
  image: bytes                       # the fake, encoded as given
  artifact: np.ndarray               # HxW bool whole-image artifact mask
  concepts: Sequence[str]            # artifact-existing Atomic Concepts
  stats: Mapping[str, tuple[float, int]]  # concept -> (coverage ratio, artifact pixels)


class Offline:
  """Deterministic templates (explain.OfflineExplainer): not an LLM's words."""

  def __init__(self):
    self.impl = explain.OfflineExplainer()
    self.name = self.impl.name

  def step3(self, jobs: Mapping[str, Step3Job]) -> dict:
    return {k: self.impl.describe(j.image_id, {c: j.stats[c] for c in j.concepts}) for k, j in jobs.items()}

  def step4(self, jobs: Mapping[str, Mapping[str, str]]) -> dict:
    return {k: self.impl.summarize(d) for k, d in jobs.items()}

  def report(self) -> str:
    return "offline template explainer (no requests)"


class LLM:
  """An OpenAI-compatible endpoint (FIFA_LLM_BASE_URL / FIFA_LLM_MODEL / FIFA_LLM_API_KEY),
  cached under `cache_dir` so a rerun or a resumed build costs nothing."""

  def __init__(self, cache_dir: str | os.PathLike, concurrency: int = 4, progress: bool = True, **kw):
    self.client = explain.ChatClient(cache_dir=cache_dir, concurrency=concurrency, **kw)
    self.name = f"llm:{self.client.model}"
    self.progress = progress

  def step3(self, jobs: Mapping[str, Step3Job]) -> dict:
    # lazy: OpenCV only for Step 3's crops
    import cv2
    msgs = {}
    for k, j in jobs.items():
      ok, mask_png = cv2.imencode(".png", j.artifact.astype(np.uint8) * 255)
      msgs[k] = explain.step3_messages(j.image, mask_png.tobytes(), list(j.concepts))
      msgs[k][0]["content"][1] = explain.image_part(j.image, _mime(j.image))
    out = {}
    for k, text in self.client.map(msgs, progress=self.progress).items():
      if isinstance(text, Exception):
        out[k] = text
        continue
      try:
        out[k] = explain.parse_step3(text, list(jobs[k].concepts))
      except explain.ExplainError as e:
        out[k] = e
    return out

  def step4(self, jobs: Mapping[str, Mapping[str, str]]) -> dict:
    # Parents with the same artifact-existing atomics give the same prompt: ask once.
    unique: dict[str, list[dict]] = {}
    key_of = {}
    for k, d in jobs.items():
      msgs = explain.step4_messages(d)
      key_of[k] = self.client.cache_key(msgs)
      unique.setdefault(key_of[k], msgs)
    res = self.client.map(unique, progress=self.progress)
    return {k: res[key_of[k]] for k in jobs}

  def report(self) -> str:
    return f"{self.name}: {self.client.usage.report()}"


def _mime(data: bytes) -> str:
  if data[:3] == b"\xff\xd8\xff":
    return "image/jpeg"
  if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
    return "image/webp"
  return "image/png"


def clean_summary(text: str) -> str:
  """Drop a leading 'Summary:' that models copy from Table 14's example."""
  t = text.strip()
  return t[len("summary:"):].strip() if t.lower().startswith("summary:") else t


def make(kind: str, cache_dir: str | os.PathLike, progress: bool = True):
  if kind == "offline":
    return Offline()
  if kind == "llm":
    return LLM(cache_dir, progress=progress)
  raise ValueError(f"unknown explainer {kind!r}; choose 'offline' or 'llm'")


def explain_unit(loaded: Sequence[tuple], explainer, failures: list) -> dict[str, dict]:
  """Steps 3-5 for a unit's images -> {image_id: {("parent", p) | ("bage", k): (answer,
  seg_concepts) or an Exception}}.  `loaded` holds (item, annotation, image bytes, plan).
  Step 3 runs for every fake with concepts, then Steps 4/5 per parent and per Step 5
  box; an image whose Step 3 failed is appended to `failures` and skipped."""
  s3_jobs = {it["image_id"]: Step3Job(it["image_id"], image, d["artifact"], plan.concepts, plan.stats)
             for it, d, image, plan in loaded if plan is not None and plan.concepts}
  desc = explainer.step3(s3_jobs) if s3_jobs else {}
  s4_jobs, s4_meta = {}, {}
  for it, d, image, plan in loaded:
    dd = desc.get(it["image_id"])
    if plan is None or not plan.concepts:
      continue
    if isinstance(dd, Exception):
      failures.append((it["image_id"], f"Step 3 failed: {dd}"))
      continue
    for p, cs in plan.parents.items():
      key = f"{it['image_id']}|parent|{p}"
      s4_jobs[key], s4_meta[key] = {c: dd[c] for c in cs}, (it["image_id"], ("parent", p), cs)
    for k, (_, cs) in enumerate(plan.bage):
      key = f"{it['image_id']}|bage|{k}"
      s4_jobs[key], s4_meta[key] = {c: dd[c] for c in cs}, (it["image_id"], ("bage", k), cs)
  texts = explainer.step4(s4_jobs) if s4_jobs else {}
  summaries: dict[str, dict] = defaultdict(dict)
  for key, text in texts.items():
    image_id, skey, cs = s4_meta[key]
    if isinstance(text, Exception):
      summaries[image_id][skey] = text
      continue
    try:
      summaries[image_id][skey] = explain.parse_summary(clean_summary(text), cs)
    except explain.ExplainError as e:
      summaries[image_id][skey] = explain.ExplainError(f"summary rejected: {e}")
  return summaries
