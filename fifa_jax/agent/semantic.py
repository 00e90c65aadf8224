"""The semantic-forgery expert: two proposers, an adjudicator, counterfactual self-verification.

  1. Both proposers (GPT-4o and Gemini-2.0 Pro in the supplement) see the image with
     the proposer prompt, in parallel, and answer Decision / Reasoning.
  2. The adjudicator sees the image and both proposals and answers Decision /
     Reasoning / Bounding Box.
  3. Self-verification, at most `max_rounds` (3, the supplement's choice) rounds: the
     box is occluded in the image (`occlusion`: the image's mean colour by default,
     or a blur, or OpenCV's inpainting) and the adjudicator is asked the counterfactual
     prompt about the occluded image.  It stops when
       - the verdict turns 'real' ("refuted": a real verdict returns no box),
       - the evidence is confirmed and the box stable (a refined box, if any, overlaps
         the previous one at IoU >= `stable_iou`),
       - or after `max_rounds` rounds.
     A refuted round that still says 'fake' goes on with its refined box (or the same).

Every role is an OpenAI-compatible endpoint (fifa_jax/endpoint.py: retries, on-disk
cache, usage), set per role; the supplement's temperature 0.1 and 512 tokens are the
defaults.  An answer out of format is asked once more, with the parser's complaint;
then the expert abstains, with the reason.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import dataclasses
import os
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from fifa_jax import endpoint
from fifa_jax.agent import parse, prompts
from fifa_jax.agent.reports import Report, abstain, box_iou

OCCLUSIONS = ("mean", "blur", "inpaint")
STOPS = ("real verdict", "refuted", "confirmed", "max rounds")


@dataclasses.dataclass(frozen=True)
class Role:
  """One endpoint: base URL and model (or FIFA_LLM_BASE_URL / FIFA_LLM_MODEL), the key
  read from the environment variable `api_key_env`."""
  base_url: str | None = None
  model: str | None = None
  api_key_env: str = "OPENAI_API_KEY"
  temperature: float = 0.1
  max_tokens: int = 512

  def client(self, cache_dir: str | None) -> endpoint.ChatClient:
    return endpoint.ChatClient(self.base_url, self.model, os.environ.get(self.api_key_env) or None,
                               cache_dir=cache_dir, temperature=self.temperature,
                               max_tokens=self.max_tokens)


@dataclasses.dataclass(frozen=True)
class SemanticConfig:
  proposers: tuple[Role, Role] = (Role(), Role())
  adjudicator: Role = Role()
  occlusion: str = "mean"
  max_rounds: int = 3
  stable_iou: float = 0.9
  cache_dir: str | None = None


def pixel_box(box, hw: tuple[int, int]) -> tuple[int, int, int, int]:
  """The box's whole pixels inside an image of size hw (outward rounding, clipped)."""
  h, w = hw
  x1, y1 = max(0, int(np.floor(box[0]))), max(0, int(np.floor(box[1])))
  x2, y2 = min(w, int(np.ceil(box[2]))), min(h, int(np.ceil(box[3])))
  if x2 <= x1 or y2 <= y1:
    raise ValueError(f"box {list(box)} lies outside the {w}x{h} image")
  return x1, y1, x2, y2


def occlude(rgb: np.ndarray, box, how: str = "mean") -> np.ndarray:
  """The image with `box` hidden; every pixel outside the box is unchanged."""
  if how not in OCCLUSIONS:
    raise ValueError(f"occlusion {how!r} is not one of {', '.join(OCCLUSIONS)}")
  x1, y1, x2, y2 = pixel_box(box, rgb.shape[:2])
  out = rgb.copy()
  if how == "mean":
    out[y1:y2, x1:x2] = np.round(rgb.reshape(-1, rgb.shape[-1]).mean(0)).astype(rgb.dtype)
  elif how == "blur":
    k = max(3, (min(x2 - x1, y2 - y1) // 2) | 1)  # odd, about half the box: its content is gone
    out[y1:y2, x1:x2] = cv2.GaussianBlur(rgb, (k, k), 0)[y1:y2, x1:x2]
  else:
    hole = np.zeros(rgb.shape[:2], np.uint8)
    hole[y1:y2, x1:x2] = 255
    out = cv2.inpaint(np.ascontiguousarray(rgb), hole, 5, cv2.INPAINT_TELEA)
    out[hole == 0] = rgb[hole == 0]
  return out


def image_url(rgb: np.ndarray) -> str:
  ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
  if not ok:
    raise ValueError("could not encode the image as PNG")
  return "data:image/png;base64," + base64.b64encode(png.tobytes()).decode()


def user_message(text: str, rgb: np.ndarray | None) -> dict:
  if rgb is None:
    return {"role": "user", "content": text}
  return {"role": "user", "content": [{"type": "text", "text": text},
                                      {"type": "image_url", "image_url": {"url": image_url(rgb)}}]}


def ask(client: endpoint.ChatClient, text: str, rgb: np.ndarray | None, parser: Callable[[str], Any]):
  """(parsed answer, raw answers): asked once more, with the complaint, if out of format;
  a second ParseError propagates.  `rgb` None: a text-only question."""
  messages = [user_message(text, rgb)]
  first = client.chat(messages)
  try:
    return parser(first), [first]
  except parse.ParseError as e:
    messages += [{"role": "assistant", "content": first},
                 {"role": "user", "content": f"Your answer is not in the format asked for ({e}). "
                                             "Answer again, in exactly that format."}]
    second = client.chat(messages)
    try:
      return parser(second), [first, second]
    except parse.ParseError as e2:
      raise parse.ParseError(f"{e2} (after asking again; first answer: {e})") from None


class SemanticExpert:
  """Proposers -> adjudicator -> counterfactual self-verification, as one report."""

  name = "semantic"

  def __init__(self, config: SemanticConfig = SemanticConfig(), name: str = "semantic"):
    if config.occlusion not in OCCLUSIONS:
      raise ValueError(f"occlusion {config.occlusion!r} is not one of {', '.join(OCCLUSIONS)}")
    if config.max_rounds < 1:
      raise ValueError(f"max_rounds must be at least 1, got {config.max_rounds}")
    self.config, self.name = config, name
    self.proposers = [r.client(config.cache_dir) for r in config.proposers]
    self.adjudicator = config.adjudicator.client(config.cache_dir)

  def usage(self) -> dict[str, dict]:
    roles = {"proposer_1": self.proposers[0], "proposer_2": self.proposers[1],
             "adjudicator": self.adjudicator}
    return {k: dataclasses.asdict(c.usage) for k, c in roles.items()}

  def report(self, image: str, rgb: np.ndarray) -> Report:
    try:
      return self._report(image, rgb)
    except (parse.ParseError, endpoint.ExplainError) as e:
      return abstain(image, self.name, str(e))
    except ValueError as e:  # a box that lies outside the image
      return abstain(image, self.name, f"adjudicator: {e}")

  def _report(self, image: str, rgb: np.ndarray) -> Report:
    c = self.config
    with cf.ThreadPoolExecutor(2) as pool:  # the proposers in parallel
      futures = [pool.submit(ask, p, prompts.PROPOSER, rgb, parse.proposal) for p in self.proposers]
      (p1, _), (p2, _) = [f.result() for f in futures]
    current, _ = ask(self.adjudicator, prompts.adjudicator(p1, p2), rgb, parse.adjudication)
    rounds = [{"round": 0, "decision": current.decision, "reasoning": current.reasoning,
               "box": list(current.box) if current.box else None}]
    stop = "real verdict" if current.decision == "real" else None
    while stop is None and len(rounds) <= c.max_rounds:
      hidden = occlude(rgb, current.box, c.occlusion)
      v, _ = ask(self.adjudicator, prompts.verification(current), hidden, parse.verification)
      rounds.append({"round": len(rounds), "decision": v.decision, "reasoning": v.reasoning,
                     "verification": "confirmed" if v.confirmed else "refuted",
                     "occluded": list(current.box), "box": list(v.box) if v.box else None})
      if v.decision == "real":
        current, stop = parse.Adjudication("real", v.reasoning, None), "refuted"
        continue
      stable = v.box is None or box_iou(v.box, current.box) >= c.stable_iou
      current = parse.Adjudication("fake", v.reasoning, v.box or current.box)
      if v.confirmed and stable:
        stop = "confirmed"
    stop = stop or "max rounds"
    return Report(image=image, expert=self.name, label=current.decision, p_fake=None,
                  text=current.reasoning, boxes=[list(current.box)] if current.box else [],
                  meta={"proposals": [dataclasses.asdict(p1), dataclasses.asdict(p2)],
                        "rounds": rounds, "stop": stop, "occlusion": c.occlusion})
