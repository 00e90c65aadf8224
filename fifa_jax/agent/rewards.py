"""Rewards for the learned aggregator's GRPO training, each in [0, 1].

Every function has the signature trl's GRPOTrainer and tunix expect,
`fn(prompts, completions, **columns) -> list[float]`, where the columns are the
dataset's own (here `label`: "real"/"fake", and `method`: the number of the expert
expected for the image's domain).  The five are those of the public Deepfake-Agent
aggregator, written from their description:

  format            1 when the answer is the four-tag envelope (parse.envelope), else 0
  accuracy          1 when <answer> equals the label
  tool_selection    1 when <method>Method N</method> names the expected expert
  reasoning_length  piecewise linear in the words of <think>: 0 to 0.25 over 0-30 words,
                    to 0.5 at 100, to 1 at 150, then 1 (the public code's last piece
                    reaches only 0.75 before jumping to 1 at 150 words, against its own
                    comment; this follows the comment, continuously)
  reasoning_format  0.7 x the share of the four numbered section headers in <think>
                    ("1. IMAGE CONTENT", "2. METHOD ANALYSIS", "3. CREDIBILITY
                    ASSESSMENT", "4. FINAL DECISION"; any numbers) + 0.3 x the share
                    of Methods 1-3 that <think> mentions

The semantic expert's adjudicator (`Decision / Reasoning / Bounding Box` answers, and
the counterfactual rounds' `... / Verification`) has four of its own, in
`SEMANTIC_REWARDS`, with the columns `label` and `box` (the ground-truth mask's box in
image pixels, [x1, y1, x2, y2], or None for a real image):

  semantic_format        1 when the answer parses (parse.adjudication, or parse.verification
                         when it carries a Verification field)
  semantic_accuracy      1 when its Decision equals the label
  box_iou                IoU of its box with the truth's box on a fake; on a real image 1
                         when it names no box, else 0
  verification_consistency  on a Verification answer: 1 when the parts agree, "confirmed"
                         with a fake verdict or "refuted" with a real one, else 0

`total` weighs them (the run config's weights; all 1 by default), and
`group_advantages` turns a group's rewards into GRPO's advantages.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fifa_jax.agent import parse
from fifa_jax.agent.reports import box_iou

SECTIONS = ("IMAGE CONTENT", "METHOD ANALYSIS", "CREDIBILITY ASSESSMENT", "FINAL DECISION")
NUM_METHODS = 3


def _tag(text: str, tag: str) -> str | None:
  m = re.search(rf"<{tag}>(.*?)</{tag}>", text or "", re.DOTALL)
  return m.group(1).strip() if m else None


def format_reward(prompts, completions, **columns) -> list[float]:
  out = []
  for c in completions:
    try:
      parse.envelope(c)
      out.append(1.0)
    except parse.ParseError:
      out.append(0.0)
  return out


def accuracy_reward(prompts, completions, label: Sequence[str], **columns) -> list[float]:
  out = []
  for c, want in zip(completions, label, strict=True):
    answer = (_tag(c, "answer") or "").strip().rstrip(".").lower()
    out.append(float(answer in parse.DECISIONS and answer == str(want).lower()))
  return out


def tool_selection_reward(prompts, completions, method: Sequence[int], **columns) -> list[float]:
  out = []
  for c, want in zip(completions, method, strict=True):
    m = re.fullmatch(r"method\s*(\d+)", _tag(c, "method") or "", re.IGNORECASE)
    out.append(float(m is not None and int(m.group(1)) == int(want)))
  return out


def length_score(words: int) -> float:
  if words < 30:
    return words / 120
  if words < 100:
    return 0.25 + (words - 30) / 280
  if words < 150:
    return 0.5 + (words - 100) / 100  # 0.5 at 100 words, 1 at 150
  return 1.0


def reasoning_length_reward(prompts, completions, **columns) -> list[float]:
  out = []
  for c in completions:
    think = _tag(c, "think")
    out.append(0.0 if think is None else length_score(len(think.split())))
  return out


def reasoning_format_reward(prompts, completions, **columns) -> list[float]:
  out = []
  for c in completions:
    think = _tag(c, "think")
    if think is None:
      out.append(0.0)
      continue
    sections = sum(bool(re.search(rf"\d+\.\s*{s}", think, re.IGNORECASE)) for s in SECTIONS)
    methods = sum(bool(re.search(rf"method\s*{i}\b", think, re.IGNORECASE))
                  for i in range(1, NUM_METHODS + 1))
    out.append(min(1.0, 0.7 * sections / len(SECTIONS) + 0.3 * methods / NUM_METHODS))
  return out


def _semantic(text: str):
  """The adjudicator's answer parsed as a verification when it has that field, else as a
  first-round adjudication; None when out of format."""
  try:
    return parse.verification(text) if re.search(r"^\s*Verification\s*:", text or "", re.MULTILINE | re.IGNORECASE) \
        else parse.adjudication(text)
  except parse.ParseError:
    return None


def semantic_format_reward(prompts, completions, **columns) -> list[float]:
  return [float(_semantic(c) is not None) for c in completions]


def semantic_accuracy_reward(prompts, completions, label: Sequence[str], **columns) -> list[float]:
  out = []
  for c, want in zip(completions, label, strict=True):
    a = _semantic(c)
    out.append(float(a is not None and a.decision == str(want).lower()))
  return out


def box_iou_reward(prompts, completions, label: Sequence[str], box: Sequence, **columns) -> list[float]:
  out = []
  for c, want, truth in zip(completions, label, box, strict=True):
    a = _semantic(c)
    if a is None:
      out.append(0.0)
    elif str(want).lower() == "real" or truth is None:
      out.append(float(a.box is None))
    else:
      out.append(0.0 if a.box is None else box_iou(a.box, truth))
  return out


def verification_consistency_reward(prompts, completions, **columns) -> list[float]:
  out = []
  for c in completions:
    a = _semantic(c)
    if not isinstance(a, parse.Verification):
      out.append(0.0)
    else:
      out.append(float(a.confirmed == (a.decision == "fake")))
  return out


SEMANTIC_REWARDS: dict[str, Callable[..., list[float]]] = {
    "semantic_format": semantic_format_reward, "semantic_accuracy": semantic_accuracy_reward,
    "box_iou": box_iou_reward, "verification_consistency": verification_consistency_reward,
}

REWARDS: dict[str, Callable[..., list[float]]] = {
    "format": format_reward, "accuracy": accuracy_reward, "tool_selection": tool_selection_reward,
    "reasoning_length": reasoning_length_reward, "reasoning_format": reasoning_format_reward,
}


ALL_REWARDS = {**REWARDS, **SEMANTIC_REWARDS}
# The dataset columns each reward reads (beyond prompts and completions).
COLUMNS = {"accuracy": ("label",), "tool_selection": ("method",), "semantic_accuracy": ("label",),
           "box_iou": ("label", "box")}


def total(prompts, completions, weights: Mapping[str, float] | None = None, **columns) -> np.ndarray:
  """sum_k weight_k * reward_k per completion (weights by name; default the aggregator's
  five, each 1; the semantic expert's four are named to be used)."""
  weights = dict.fromkeys(REWARDS, 1.0) if weights is None else dict(weights)
  unknown = set(weights) - set(ALL_REWARDS)
  if unknown:
    raise ValueError(f"unknown rewards {sorted(unknown)}; expected {sorted(ALL_REWARDS)}")
  out = np.zeros(len(completions), np.float64)
  for name, w in weights.items():
    if w:
      out += w * np.asarray(ALL_REWARDS[name](prompts, completions, **columns), np.float64)
  return out


def group_advantages(rewards, group_size: int, eps: float = 1e-4) -> np.ndarray:
  """GRPO's advantages: each completion's reward against its group's, (r - mean) / (std + eps),
  for rewards laid out group by group ([n_groups * group_size]).  The std is the
  unbiased one, as trl's GRPOTrainer computes it (torch's default)."""
  r = np.asarray(rewards, np.float64)
  if group_size < 2 or r.size % group_size:
    raise ValueError(f"{r.size} rewards do not split into groups of {group_size} (at least 2)")
  g = r.reshape(-1, group_size)
  return ((g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + eps)).reshape(-1)
