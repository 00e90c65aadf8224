"""Strict parsers for the answers the supplement's prompts ask for.

  proposal       Decision: [real/fake] Reasoning: [...]
  adjudication   Decision: ... Reasoning: ... Bounding Box: [x1,y1,x2,y2]
  verification   Decision: ... Reasoning: ... Verification: [confirmed/refuted]
  aggregation    Final Decision: [real/fake] Integrated Reasoning: [...]
  envelope       <think>...</think><answer>real|fake</answer><method>Method N</method><score>s</score>

Strict means: each field once, in the order asked, nothing before the first but
whitespace; the decision is real or fake; a box is four numbers with x1 < x2 and
y1 < y2.  Fields may share a line or not, and models' habits are forgiven: bold
markers (`**Decision:**`), brackets around values (`[fake]`), any letter case.
Anything else is a ParseError, which the caller answers by asking once more and
then by abstaining.
"""

from __future__ import annotations

import dataclasses
import re

DECISIONS = ("real", "fake")


class ParseError(ValueError):
  """An answer not in the format asked for; the message says what is wrong."""


@dataclasses.dataclass(frozen=True)
class Proposal:
  decision: str
  reasoning: str


@dataclasses.dataclass(frozen=True)
class Adjudication:
  decision: str
  reasoning: str
  box: tuple[float, float, float, float] | None  # None: a 'real' verdict names no region


@dataclasses.dataclass(frozen=True)
class Verification:
  decision: str
  reasoning: str
  confirmed: bool
  box: tuple[float, float, float, float] | None = None  # a refined box, where the model gives one


@dataclasses.dataclass(frozen=True)
class Aggregation:
  decision: str
  reasoning: str


@dataclasses.dataclass(frozen=True)
class Envelope:
  think: str
  answer: str
  method: int
  score: float


def fields(text: str, labels: tuple[str, ...]) -> list[str]:
  """The values of `labels`, each present once and in this order."""
  if not isinstance(text, str) or not text.strip():
    raise ParseError("the answer is empty")
  clean = text.replace("**", "").replace("__", "")
  pattern = re.compile(r"(?<![A-Za-z])(" + "|".join(re.escape(l) for l in labels) + r")\s*:",
                       re.IGNORECASE)
  found = list(pattern.finditer(clean))
  names = [m.group(1).lower() for m in found]
  want = [l.lower() for l in labels]
  if names != want:
    missing = [l for l in labels if l.lower() not in names]
    if missing:
      raise ParseError(f"no {', '.join(repr(m + ':') for m in missing)} field")
    raise ParseError(f"fields {names} are not {want}, each once and in that order")
  if clean[:found[0].start()].strip():
    raise ParseError(f"text before {labels[0]!r}: {clean[:found[0].start()].strip()[:60]!r}")
  ends = [m.start() for m in found[1:]] + [len(clean)]
  return [_unbracket(clean[m.end():e].strip()) for m, e in zip(found, ends)]


def _unbracket(v: str) -> str:
  v = v.strip()
  if len(v) >= 2 and v[0] == "[" and v[-1] == "]" and "[" not in v[1:-1]:
    v = v[1:-1].strip()
  return v


def decision(value: str, what: str = "Decision") -> str:
  v = value.strip().rstrip(".").lower()
  if v not in DECISIONS:
    raise ParseError(f"{what} {value!r} is not real or fake")
  return v


def box(value: str) -> tuple[float, float, float, float]:
  nums = re.findall(r"-?\d+(?:\.\d+)?", value)
  rest = re.sub(r"-?\d+(?:\.\d+)?|[\s,\[\]()]", "", value)
  if len(nums) != 4 or rest:
    raise ParseError(f"Bounding Box {value!r} is not [x1,y1,x2,y2]")
  x1, y1, x2, y2 = (float(n) for n in nums)
  if not (x1 < x2 and y1 < y2):
    raise ParseError(f"Bounding Box {value!r} does not have x1 < x2 and y1 < y2")
  return x1, y1, x2, y2


def _reasoning(value: str, what: str = "Reasoning") -> str:
  if not value:
    raise ParseError(f"{what} is empty")
  return value


def proposal(text: str) -> Proposal:
  d, r = fields(text, ("Decision", "Reasoning"))
  return Proposal(decision(d), _reasoning(r))


NO_BOX = ("none", "n/a", "na", "null", "-", "")


def adjudication(text: str) -> Adjudication:
  """A 'fake' verdict must give its box; a 'real' one may say none (or omit the field)."""
  try:
    d, r, b = fields(text, ("Decision", "Reasoning", "Bounding Box"))
  except ParseError:
    d, r = fields(text, ("Decision", "Reasoning"))
    b = ""
  d = decision(d)
  if b.strip().lower() in NO_BOX:
    if d == "fake":
      raise ParseError("a 'fake' decision without a Bounding Box")
    return Adjudication(d, _reasoning(r), None)
  return Adjudication(d, _reasoning(r), box(b))


def verification(text: str) -> Verification:
  """The prompt asks for three fields; a refined `Bounding Box:` after them is taken too
  (the supplement's rounds move the box: its Fig. 1)."""
  try:
    d, r, v, b = fields(text, ("Decision", "Reasoning", "Verification", "Bounding Box"))
  except ParseError:
    d, r, v = fields(text, ("Decision", "Reasoning", "Verification"))
    b = ""
  v = v.strip().rstrip(".").lower()
  if v not in ("confirmed", "refuted"):
    raise ParseError(f"Verification {v!r} is not confirmed or refuted")
  refined = None if b.strip().lower() in NO_BOX else box(b)
  return Verification(decision(d), _reasoning(r), v == "confirmed", refined)


def aggregation(text: str) -> Aggregation:
  d, r = fields(text, ("Final Decision", "Integrated Reasoning"))
  return Aggregation(decision(d, "Final Decision"), _reasoning(r, "Integrated Reasoning"))


_ENVELOPE = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*<method>(.*?)</method>"
                       r"\s*<score>(.*?)</score>\s*", re.DOTALL)
TAGS = ("think", "answer", "method", "score")


def envelope(text: str) -> Envelope:
  """The learned aggregator's four tags, in order, each once."""
  if not isinstance(text, str):
    raise ParseError("the answer is not text")
  for t in TAGS:
    if text.count(f"<{t}>") != 1 or text.count(f"</{t}>") != 1:
      raise ParseError(f"<{t}> must open and close exactly once")
  m = _ENVELOPE.fullmatch(text)
  if not m:
    raise ParseError("the tags are not <think>, <answer>, <method>, <score> in that order, "
                     "with nothing around them")
  think, answer, method, score = (g.strip() for g in m.groups())
  found = re.fullmatch(r"method\s*(\d+)", method, re.IGNORECASE)
  if not found:
    raise ParseError(f"<method> {method!r} is not 'Method N'")
  try:
    s = float(score)
  except ValueError:
    raise ParseError(f"<score> {score!r} is not a number") from None
  return Envelope(think, decision(answer, "<answer>"), int(found.group(1)), s)
