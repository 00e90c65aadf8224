"""Acc., F1, Precision and Recall per domain, per expert and per aggregator (the
supplement's Tables 1 and 2), with abstentions counted and shown.

'fake' is the positive class.  An abstention is neither a true nor a false positive:
it counts against Acc. (the verdict was not given) and against Recall when the image
is fake; the table shows how many there were, so that an expert that abstains on
what it does not cover (the face expert on a picture without a face) reads as such.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from fifa_jax.agent.aggregate import Verdict, confidence, vote
from fifa_jax.agent.reports import Report, ReportError

AGGREGATORS = ("vote", "confidence", "llm", "learned")


@dataclasses.dataclass
class Scores:
  tp: int = 0
  fp: int = 0
  tn: int = 0
  fn: int = 0
  abstain_fake: int = 0
  abstain_real: int = 0

  def add(self, truth: str, said: str) -> None:
    fake = truth == "fake"
    if said == "abstain":
      self.abstain_fake += fake
      self.abstain_real += not fake
    elif fake:
      self.tp += said == "fake"
      self.fn += said != "fake"
    else:
      self.fp += said == "fake"
      self.tn += said != "fake"

  def table(self) -> dict[str, float | int]:
    n = self.tp + self.fp + self.tn + self.fn + self.abstain_fake + self.abstain_real
    precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
    fakes = self.tp + self.fn + self.abstain_fake
    recall = self.tp / fakes if fakes else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": n, "acc": 100 * (self.tp + self.tn) / n if n else 0.0, "f1": 100 * f1,
            "precision": 100 * precision, "recall": 100 * recall,
            "abstain": self.abstain_fake + self.abstain_real}


def _score(rows: Sequence[tuple[str, str, str]]) -> dict[str, dict]:
  """rows (domain, truth, said) -> {"all": table, domain: table, ...}."""
  by: dict[str, Scores] = defaultdict(Scores)
  for domain, truth, said in rows:
    by["all"].add(truth, said)
    if domain != "all":
      by[domain].add(truth, said)
  return {k: v.table() for k, v in sorted(by.items(), key=lambda kv: (kv[0] != "all", kv[0]))}


def aggregator(name: str, accuracy: Mapping[str, float] | None = None, tie: str = "fake",
               llm: Callable[[Sequence[Report]], Verdict] | None = None,
               learned: Callable[[Sequence[Report]], Verdict] | None = None
               ) -> Callable[[Sequence[Report]], Verdict]:
  """`llm`: the prompted aggregator (build.llm_aggregator), for name "llm"; `learned`:
  the GRPO-trained one (build.learned_aggregator), for name "learned"."""
  if name == "vote":
    return lambda reports: vote(reports, tie=tie)
  if name == "confidence":
    return lambda reports: confidence(reports, accuracy, tie=tie)
  if name == "llm":
    if llm is None:
      raise ValueError("--aggregator llm needs an `aggregator:` endpoint in the agent YAML (--config)")
    return llm
  if name == "learned":
    if learned is None:
      raise ValueError("--aggregator learned needs a policy (--policy or `learned.policy` in --config)")
    return learned
  raise ValueError(f"aggregator {name!r} is not one of {', '.join(AGGREGATORS)}")


def evaluate(manifest: Sequence[Mapping], reports: Sequence[Report], aggregators: Sequence[str],
             accuracy: Mapping[str, float] | None = None, tie: str = "fake", llm=None,
             learned=None) -> dict:
  """manifest rows {"image", "label", "domain"?}; reports of every expert on those images."""
  by_image: dict[str, list[Report]] = defaultdict(list)
  for r in reports:
    by_image[r.image].append(r)
  experts = sorted({r.expert for r in reports})
  rows_expert: dict[str, list] = {e: [] for e in experts}
  rows_agg: dict[str, list] = {a: [] for a in aggregators}
  verdicts = {}
  decide = {a: aggregator(a, accuracy, tie, llm, learned) for a in aggregators}
  for row in manifest:
    image, truth = row["image"], row["label"]
    if truth not in ("real", "fake"):
      raise ReportError(f"manifest: {image}: label {truth!r} is not real or fake")
    domain = row.get("domain", "all")
    got = {r.expert: r for r in by_image.get(image, [])}
    for e in experts:
      rows_expert[e].append((domain, truth, got[e].label if e in got else "abstain"))
    verdicts[image] = {}
    for a in aggregators:
      v = decide[a](list(got.values()))
      verdicts[image][a] = v.to_json()
      rows_agg[a].append((domain, truth, v.label))
  return {"accuracy_weights": dict(accuracy or {}),
          "experts": {e: _score(r) for e, r in rows_expert.items()},
          "aggregators": {a: _score(r) for a, r in rows_agg.items()},
          "verdicts": verdicts}


def dev_accuracy(report_json: str | Path) -> dict[str, float]:
  """Each expert's Acc. (as a fraction) from an earlier evaluation's report.json."""
  try:
    result = json.loads(Path(report_json).read_text())
    return {e: t["all"]["acc"] / 100 for e, t in result["experts"].items()}
  except OSError as e:
    raise ReportError(f"{report_json}: cannot read ({e.strerror})") from None
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ReportError(f"{report_json}: not a `fifa agent eval` report.json ({e})") from None


def markdown(result: dict) -> str:
  lines = ["| who | domain | n | Acc. | F1 | Precision | Recall | abstained |",
           "|---|---|---|---|---|---|---|---|"]
  for kind, label in (("experts", "expert"), ("aggregators", "aggregator")):
    for who, domains in result[kind].items():
      for domain, t in domains.items():
        lines.append(f"| {label} {who} | {domain} | {t['n']} | {t['acc']:.1f} | {t['f1']:.1f} | "
                     f"{t['precision']:.1f} | {t['recall']:.1f} | {t['abstain']} |")
  return "\n".join(lines) + "\n"


def write(result: dict, out_dir) -> None:
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  (out / "report.json").write_text(json.dumps(result, indent=1))
  weights = result.get("accuracy_weights") or {}
  note = ("\nConfidence weighting used these development accuracies: "
          + ", ".join(f"{e} {a:.2f}" for e, a in sorted(weights.items())) + "\n") if weights else ""
  (out / "report.md").write_text("# Deepfake-Agent evaluation\n\n" + markdown(result) + note)
