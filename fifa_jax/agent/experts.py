"""Forensic experts: each turns images into Reports (reports.py).

  FaceExpert         FiFa-MLLM (a trained fifa-jax model): the faces are found, and each is
                     asked Det. and I-AGE; the image's p_fake is its most suspicious face's
                     Det. head, with the explanations, artifact masks and their boxes on
                     the whole image.  No face: it abstains, saying so.
  CommandExpert      a program in its own environment (FakeShield, M2F2-Det: PyTorch
                     LLaVA forks with their own pins): it is given a JSONL manifest and
                     writes reports (docs/agent.md, "command experts").
  PrecomputedExpert  reports written elsewhere, read from JSONL.
  SemanticExpert     proposers, adjudicator and counterfactual verification (semantic.py).

Every expert has `name` and `report_many([(image id, path), ...]) -> [Report]`.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fifa_jax import api
from fifa_jax.agent.reports import Report, ReportError, abstain, mask_box, mask_json, read_reports
from fifa_jax.agent.semantic import SemanticExpert
from fifa_jax.infer import faces as faces_lib
from fifa_jax.infer import predict

Item = tuple[str, str]  # (image id, path to the image)


def each_image(items: Sequence[Item], name: str, report) -> list[Report]:
  """`report(image id, rgb)` for each item; an unreadable image is an abstention."""
  out = []
  for image, path in items:
    try:
      rgb = api.to_rgb(path)
    except predict.QueryError as e:
      out.append(abstain(image, name, f"unreadable image: {e}"))
      continue
    out.append(report(image, rgb))
  return out


class FaceExpert:
  """FiFa-MLLM as an expert.  `faces`: "all" (every face of a photo; the default),
  "largest", or "none" (the image is already a face crop, as the datasets' are)."""

  name = "face"

  def __init__(self, model: api.FiFa, faces: str = "all", name: str = "face",
               max_new_tokens: int | None = None):
    self.model, self.faces, self.name = model, faces_lib.check_mode(faces), name
    self.max_new_tokens = max_new_tokens

  def report(self, image: str, rgb: np.ndarray) -> Report:
    if self.faces == "none":
      found = [None]
      parsed = [[api.parse_query(dict(image=rgb, task=t)) for t in ("det", "i-age")]]
    else:
      try:
        photo, pairs = self.model.face_queries(dict(image=rgb, task="i-age"), self.faces)
      except faces_lib.FaceError as e:
        return abstain(image, self.name, f"no face: {e}")
      found = [f for f, _ in pairs]
      parsed = [[api.parse_query(dict(image=q[0].rgb, task="det")), q] for _, q in pairs]
    answers = self.model.answer([q for pair in parsed for q in pair], self.max_new_tokens)
    per_face = []
    for k, face in enumerate(found):
      det, age = answers[2 * k], answers[2 * k + 1]
      if face is not None:
        det, age = api.on_photo(det, face, rgb), api.on_photo(age, face, rgb)
      per_face.append((face, det, age))
    # An image is as fake as its most suspicious face.
    _, det, _ = max(per_face, key=lambda t: t[1].det_probs["fake"])
    p_fake = float(det.det_probs["fake"])
    grounded = [g for _, _, a in per_face for g in a.grounded if g.mask.any()]  # so each has a box
    masks = [g.mask for g in grounded]
    text = " ".join(
        (f"Face {k + 1} at {[round(v) for v in f.box]}: " if f is not None and len(per_face) > 1 else "")
        + a.plain_text for k, (f, _, a) in enumerate(per_face))
    return Report(
        image=image, expert=self.name, label="fake" if p_fake > 0.5 else "real", p_fake=p_fake,
        text=text, boxes=[mask_box(m) for m in masks], masks=[mask_json(m) for m in masks],
        meta={"model": self.model.loaded.source, "mask_labels": [g.concept or g.phrase for g in grounded],
              "faces": [
            {"face": f.to_json() if f is not None else None, "p_fake": round(float(d.det_probs["fake"]), 4),
             "det_answer": d.plain_text, "concepts": [g.concept for g in a.grounded]}
            for f, d, a in per_face]})

  def report_many(self, items: Sequence[Item]) -> list[Report]:
    return each_image(items, self.name, self.report)


class SemanticItems:
  """SemanticExpert over (image id, path) items."""

  def __init__(self, expert: SemanticExpert):
    self.expert, self.name = expert, expert.name

  def usage(self) -> dict[str, dict]:
    """Each role's endpoint usage: requests, cache hits, retries, failures, tokens."""
    return self.expert.usage()

  def report_many(self, items: Sequence[Item]) -> list[Report]:
    return each_image(items, self.name, self.expert.report)


class CommandExpert:
  """A program that reads a JSONL manifest ({"image": id, "path": path} per line) given
  as `--manifest M` and writes reports as JSONL to `--out R`.  An image it gives no
  report for, or every image when it fails, is an abstention with the reason."""

  def __init__(self, name: str, command: Sequence[str], timeout_s: float = 3600.0):
    if not command:
      raise ValueError(f"expert {name!r}: an empty command")
    self.name, self.command, self.timeout_s = name, list(command), timeout_s

  def report_many(self, items: Sequence[Item]) -> list[Report]:
    with tempfile.TemporaryDirectory(prefix=f"fifa-agent-{self.name}-") as tmp:
      manifest, out = Path(tmp) / "manifest.jsonl", Path(tmp) / "reports.jsonl"
      manifest.write_text("".join(json.dumps({"image": i, "path": str(Path(p).resolve())}) + "\n"
                                  for i, p in items))
      try:
        run = subprocess.run([*self.command, "--manifest", str(manifest), "--out", str(out)],
                             capture_output=True, text=True, timeout=self.timeout_s)
      except (OSError, subprocess.TimeoutExpired) as e:
        return [abstain(i, self.name, f"command failed: {e}") for i, _ in items]
      if run.returncode != 0:
        why = f"command exited {run.returncode}: {run.stderr.strip()[-300:]}"
        return [abstain(i, self.name, why) for i, _ in items]
      try:
        got = {r.image: r for r in read_reports(out)} if out.exists() else {}
      except ReportError as e:
        return [abstain(i, self.name, f"bad report from the command: {e}") for i, _ in items]
    reports = []
    for image, _ in items:
      r = got.get(image)
      if r is not None:
        r.expert = self.name
      reports.append(r or abstain(image, self.name, "the command wrote no report for this image"))
    return reports


class PrecomputedExpert:
  """Reports written elsewhere (JSONL), matched by image id (or file name)."""

  def __init__(self, name: str, path: str):
    self.name = name
    self.by_image: dict[str, Report] = {}
    found = list(read_reports(path))
    if any(r.expert == name for r in found):  # a file of several experts' reports
      found = [r for r in found if r.expert == name]
    for r in found:
      r.expert = name
      self.by_image[r.image] = r
      self.by_image.setdefault(Path(r.image).name, r)

  def report_many(self, items: Sequence[Item]) -> list[Report]:
    return [self.by_image.get(i) or self.by_image.get(Path(i).name)
            or abstain(i, self.name, "no precomputed report") for i, _ in items]
