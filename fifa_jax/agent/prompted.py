"""The supplement's prompted aggregator: an MLLM endpoint reads the experts' outputs
(the aggregator prompt's three slots: PS, Face and Semantic expert) and answers
Final Decision / Integrated Reasoning.

Each slot holds one expert's report, written as "<label> (p_fake 0.91): <text>", or
"abstained: <reason>"; which expert fills which slot is configured (an unfilled slot
says "no report").  Text only, by default: the prompt carries no image.  An answer out
of format is asked once more; then the verdict abstains, with the reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from fifa_jax import endpoint
from fifa_jax.agent import parse, prompts, semantic
from fifa_jax.agent.aggregate import Verdict
from fifa_jax.agent.reports import Report

SLOTS = ("ps", "face", "semantic")


def slot_text(report: Report | None) -> str:
  if report is None:
    return "no report"
  if report.label == "abstain":
    return f"abstained: {report.meta.get('reason', 'no reason given')}"
  p = f" (p_fake {report.p_fake:.2f})" if report.p_fake is not None else ""
  return f"{report.label}{p}: {report.text}".strip()


class PromptedAggregator:
  """`slots`: which expert (by name) fills each of the prompt's slots."""

  def __init__(self, role: semantic.Role, slots: Mapping[str, str], cache_dir: str | None = None):
    unknown = set(slots) - set(SLOTS)
    if unknown:
      raise ValueError(f"aggregator slots {sorted(unknown)}: the prompt's slots are {', '.join(SLOTS)}")
    self.client = role.client(cache_dir)
    self.slots = dict(slots)

  def prompt(self, reports: Sequence[Report]) -> str:
    by_expert = {r.expert: r for r in reports}
    return prompts.aggregator(**{slot: slot_text(by_expert.get(self.slots.get(slot, slot)))
                                 for slot in SLOTS})

  def __call__(self, reports: Sequence[Report]) -> Verdict:
    try:
      answer, _ = semantic.ask(self.client, self.prompt(reports), None, parse.aggregation)
    except (parse.ParseError, endpoint.ExplainError) as e:
      return Verdict("abstain", None, "llm", {"reason": str(e)})
    return Verdict(answer.decision, None, "llm", {"reasoning": answer.reasoning})

  def usage(self) -> dict:
    return dataclasses.asdict(self.client.usage)
