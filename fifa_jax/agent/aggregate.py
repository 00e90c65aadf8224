"""From the experts' reports on one image to one verdict.

Majority vote (`vote`):
  every expert that does not abstain casts one vote, real or fake.  The verdict is
  the majority.  On a tie, the voters' mean p_fake decides where all of them give one
  (above 0.5: fake); otherwise `tie` does (default "fake": a tie means that at least
  half the experts who spoke saw a forgery, and a missed forgery is the costlier error
  for a detector).  With every expert abstaining, the verdict abstains.

Confidence weighting (`confidence`):
  expert e says p_e = its p_fake, or 1/0 for a bare fake/real label, and carries the
  weight w_e = log(a_e / (1 - a_e)) of its accuracy a_e on a development set
  (default 0.75; clipped to [0.5, 0.99]).  This is the log-odds weighting under which
  a weighted vote of independent experts is the most likely verdict
  (Nitzan and Paroush, 1982); an expert no better than chance weighs nothing.
      score  = sum_e w_e (2 p_e - 1) / sum_e w_e      in [-1, 1]
      p_fake = (score + 1) / 2,  verdict fake iff p_fake > 0.5 (a tie: `tie`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

from fifa_jax.agent.reports import Report

DEFAULT_ACCURACY = 0.75


@dataclasses.dataclass(frozen=True)
class Verdict:
  label: str  # "real", "fake" or "abstain"
  p_fake: float | None
  method: str
  detail: dict

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def _check_tie(tie: str) -> None:
  if tie not in ("fake", "real"):
    raise ValueError(f"tie must be 'fake' or 'real', got {tie!r}")


def vote(reports: Sequence[Report], tie: str = "fake") -> Verdict:
  _check_tie(tie)
  voters = [r for r in reports if r.label != "abstain"]
  fake = sum(r.label == "fake" for r in voters)
  real = len(voters) - fake
  detail = {"fake": fake, "real": real, "abstain": len(reports) - len(voters)}
  if not voters:
    return Verdict("abstain", None, "vote", detail)
  ps = [r.p_fake for r in voters]
  mean = sum(ps) / len(ps) if all(p is not None for p in ps) else None
  if fake != real:
    label = "fake" if fake > real else "real"
  elif mean is not None and mean != 0.5:
    label, detail["tie_broken_by"] = ("fake" if mean > 0.5 else "real"), "mean p_fake"
  else:
    label, detail["tie_broken_by"] = tie, "rule"
  return Verdict(label, mean, "vote", detail)


def expert_weight(accuracy: float) -> float:
  a = min(max(accuracy, 0.5), 0.99)
  return math.log(a / (1 - a))


def confidence(reports: Sequence[Report], accuracy: Mapping[str, float] | None = None,
               tie: str = "fake") -> Verdict:
  """`accuracy`: each expert's development-set accuracy, by expert name."""
  _check_tie(tie)
  accuracy = accuracy or {}
  num = den = 0.0
  weights = {}
  for r in reports:
    if r.label == "abstain":
      continue
    p = r.p_fake if r.p_fake is not None else float(r.label == "fake")
    w = expert_weight(accuracy.get(r.expert, DEFAULT_ACCURACY))
    weights[r.expert] = round(w, 4)
    num += w * (2 * p - 1)
    den += w
  detail = {"weights": weights}
  if not weights:
    return Verdict("abstain", None, "confidence", detail)
  if den == 0:  # every expert at chance: nothing to weigh
    return Verdict(tie, 0.5, "confidence", {**detail, "tie_broken_by": "rule"})
  p_fake = (num / den + 1) / 2
  if p_fake == 0.5:
    return Verdict(tie, p_fake, "confidence", {**detail, "tie_broken_by": "rule"})
  return Verdict("fake" if p_fake > 0.5 else "real", p_fake, "confidence", detail)


AGGREGATORS = {"vote": vote, "confidence": confidence}
