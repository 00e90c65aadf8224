"""A scripted stand-in for the semantic expert's endpoints, for offline demos.

It is not a model: an in-process OpenAI-compatible server that answers the
proposer, adjudicator and verification prompts from each image's known truth (a
manifest with "label" and, for fakes, "mask": the artifact mask's path).  The
semantic expert's own code runs unchanged against it (proposals in parallel, the
adjudicator, the occluded rounds), so the demo shows that path and its report:

  proposer 1   the truth;  proposer 2   always "fake" (a suspicious reader)
  adjudicator  the truth, with the artifact mask's bounding box for a fake; every
               `error_every`-th image (in manifest order) gets the wrong verdict
  verification "confirmed" while the occluded box covers most of the mask, else
               "refuted" with the verdict "real"

Images are recognised by their pixels (a hash of the decoded RGB).
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np

from fifa_jax import endpoint
from fifa_jax.agent import prompts, semantic


def pixels_key(rgb: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(rgb).tobytes()).hexdigest()


def _decode(url: str) -> np.ndarray:
  png = base64.b64decode(url.split(",", 1)[1])
  return cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


class ScriptedEndpoint:
  """Serves /v1/chat/completions on 127.0.0.1 from a truth manifest (see the module doc)."""

  def __init__(self, truth: str, error_every: int = 0):
    root = Path(truth).parent
    self.truth: dict[str, dict] = {}
    rows = [json.loads(l) for l in Path(truth).read_text().splitlines() if l.strip()]
    for k, row in enumerate(rows, 1):
      rgb = cv2.cvtColor(cv2.imread(str(root / row.get("path", row["image"]))), cv2.COLOR_BGR2RGB)
      label = row["label"]
      if error_every and k % error_every == 0:
        label = "real" if label == "fake" else "fake"
      mask = None
      if row.get("mask"):
        mask = cv2.imread(str(root / row["mask"]), cv2.IMREAD_GRAYSCALE) > 127
      box = None
      if label == "fake":
        ys, xs = np.nonzero(mask) if mask is not None and mask.any() else (np.array([0, rgb.shape[0] - 1]),
                                                                           np.array([0, rgb.shape[1] - 1]))
        box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
      self.truth[pixels_key(rgb)] = {"label": label, "box": box, "mask": mask, "rgb": rgb}
    self.server = endpoint.LocalChatServer(lambda body: (200, self.answer(body)),
                                           usage={"prompt_tokens": 0, "completion_tokens": 0})
    self.url = self.server.url

  def answer(self, body: dict) -> str:
    parts = body["messages"][0]["content"]
    text = next(p["text"] for p in parts if p["type"] == "text")
    rgb = _decode(next(p["image_url"]["url"] for p in parts if p["type"] == "image_url"))
    if text == prompts.PROPOSER:
      truth = self.truth.get(pixels_key(rgb), {"label": "real"})
      said = truth["label"] if body["model"] == "proposer-1" else "fake"
      return f"Decision: {said} Reasoning: (scripted) the {said} reading of this image."
    if text.startswith("Previous Analysis:"):
      return self._verify(text, rgb)
    truth = self.truth.get(pixels_key(rgb), {"label": "real", "box": None})
    if truth["label"] == "real":
      return "Decision: real Reasoning: (scripted) nothing is out of place. Bounding Box: none"
    return ("Decision: fake Reasoning: (scripted) the marked region does not match its surroundings. "
            f"Bounding Box: [{','.join(map(str, truth['box']))}]")

  def _verify(self, text: str, hidden: np.ndarray) -> str:
    box = [float(v) for v in text.split("Bounding Box: [", 1)[1].split("]", 1)[0].split(",")]
    # The original is the known image that equals `hidden` outside the box.
    x1, y1, x2, y2 = semantic.pixel_box(box, hidden.shape[:2])
    outside = np.ones(hidden.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    for truth in self.truth.values():
      if truth["rgb"].shape != hidden.shape or not np.array_equal(truth["rgb"][outside], hidden[outside]):
        continue
      m = truth["mask"]
      if m is not None and m[y1:y2, x1:x2].sum() > 0.5 * m.sum():
        return ("Decision: fake\nReasoning: (scripted) without the region the face looks authentic, "
                "so the region is the evidence.\nVerification: confirmed")
      break
    return ("Decision: real\nReasoning: (scripted) the image looks authentic either way.\n"
            "Verification: refuted")

  def close(self) -> None:
    self.server.close()
