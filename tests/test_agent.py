"""Deepfake-Agent's foundations, table-driven: the report schema and its JSONL, the
supplement's prompts, the strict parsers, majority vote and confidence weighting, the
five GRPO rewards and the group advantages."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fifa_jax.agent import aggregate, parse, prompts, reports, rewards
from fifa_jax.agent.reports import Report, ReportError


# -- reports ------------------------------------------------------------------


def test_reports_round_trip_through_jsonl_and_bad_ones_name_the_field(tmp_path):
  rs = [Report("a.png", "face", "fake", 0.9, "the nose is smeared", [[1, 2, 30, 40]],
               [{"size": [4, 4], "counts": [3, 2, 11]}], {"model": "fifa"}),
        reports.abstain("b.png", "face", "no face found")]
  path = tmp_path / "r.jsonl"
  assert reports.write_reports(path, rs) == 2
  assert list(reports.read_reports(path)) == rs
  assert not (tmp_path / "r.jsonl.tmp").exists()
  for bad, message in [
      (dict(image="a", expert="x", label="maybe"), "label 'maybe' is not one of real, fake, abstain"),
      (dict(image="a", expert="x", label="fake", p_fake=1.5), "p_fake 1.5 is not a probability"),
      (dict(image="a", expert="x", label="fake", p_fake=math.nan), "is not a probability"),
      (dict(image="a", expert="x", label="fake", boxes=[[5, 5, 1, 9]]), "x1 < x2"),
      (dict(image="a", expert="x", label="fake", colour="red"), "unknown report fields ['colour']"),
      (dict(image="a", label="fake"), "report without expert"),
  ]:
    with pytest.raises(ReportError, match=message.replace("[", r"\[").replace("]", r"\]")):
      Report.from_json(bad)
  path.write_text('{"image": "a", "expert": "x", "label": "fake"}\nnot json\n')
  with pytest.raises(ReportError, match=r"r.jsonl:2:"):
    list(reports.read_reports(path))


# -- prompts ------------------------------------------------------------------


def test_prompts_carry_the_supplements_wording_and_fill_their_slots():
  assert prompts.PROPOSER.startswith("Analyze this image for potential digital forgeries")
  assert prompts.PROPOSER.endswith("Reasoning: [2-3 sentence explanation] Now analyze the provided image:")
  text = prompts.adjudicator(parse.Proposal("fake", "The shadow is wrong."),
                             parse.Proposal("real", "Nothing odd."))
  assert "Proposer 1 Analysis: Decision: fake Reasoning: The shadow is wrong. Proposer 2 Analysis: " \
         "Decision: real Reasoning: Nothing odd." in text
  assert text.endswith("Bounding Box: [x1,y1,x2,y2] Now synthesize the expert opinions:")
  text = prompts.verification(parse.Adjudication("fake", "The sign is warped.", (10, 20, 110, 90)))
  assert text.splitlines()[:4] == ["Previous Analysis:", "Decision: fake",
                                   "Reasoning: The sign is warped.", "Bounding Box: [10,20,110,90]"]
  assert "Verification: [confirmed/refuted]" in text and "{" not in text
  text = prompts.aggregator("edited: no", "face: fake", "semantic: real")
  assert "[PS Expert]: edited: no\n[Face Expert]: face: fake\n[Semantic Expert]: semantic: real" in text


# -- parsers ------------------------------------------------------------------


@pytest.mark.parametrize("text, want", [
    ("Decision: fake Reasoning: The hands have six fingers.", ("fake", "The hands have six fingers.")),
    ("**Decision:** [REAL]\n**Reasoning:** Lighting is consistent.", ("real", "Lighting is consistent.")),
    ("decision: Fake.\nreasoning: Odd text.", ("fake", "Odd text.")),
])
def test_proposals_parse(text, want):
  p = parse.proposal(text)
  assert (p.decision, p.reasoning) == want


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("I think it is fake.", "no 'Decision:'"),
    ("Decision: probably fake Reasoning: hmm", "is not real or fake"),
    ("Reasoning: x Decision: fake", "in that order"),
    ("Decision: fake Decision: real Reasoning: x", "each once"),
    ("Sure! Decision: fake Reasoning: x", "text before 'Decision'"),
    ("Decision: fake Reasoning:", "Reasoning is empty"),
])
def test_malformed_proposals_say_what_is_wrong(text, message):
  with pytest.raises(parse.ParseError, match=message):
    parse.proposal(text)


def test_adjudications_verifications_aggregations_and_envelopes():
  a = parse.adjudication("Decision: fake\nReasoning: The clock melts.\nBounding Box: [12, 30.5, 80, 99]")
  assert a == parse.Adjudication("fake", "The clock melts.", (12.0, 30.5, 80.0, 99.0))
  assert parse.adjudication("Decision: real Reasoning: fine. Bounding Box: none").box is None
  assert parse.adjudication("Decision: real Reasoning: fine.").box is None
  for bad, message in [("Decision: fake Reasoning: x Bounding Box: none", "without a Bounding Box"),
                       ("Decision: fake Reasoning: x Bounding Box: [1, 2, 3]", "is not \\[x1,y1,x2,y2\\]"),
                       ("Decision: fake Reasoning: x Bounding Box: [9, 2, 3, 4]", "x1 < x2")]:
    with pytest.raises(parse.ParseError, match=message):
      parse.adjudication(bad)
  v = parse.verification("Decision: fake\nReasoning: Without it the scene is plain.\nVerification: Confirmed")
  assert v.confirmed and v.decision == "fake"
  assert not parse.verification("Decision: real Reasoning: r Verification: [refuted]").confirmed
  with pytest.raises(parse.ParseError, match="not confirmed or refuted"):
    parse.verification("Decision: real Reasoning: r Verification: unsure")
  g = parse.aggregation("Final Decision: fake\nIntegrated Reasoning: Two experts agree.")
  assert g == parse.Aggregation("fake", "Two experts agree.")
  e = parse.envelope("<think>1. IMAGE CONTENT a face</think>\n<answer>fake</answer>"
                     "<method>Method 2</method><score>0.8</score>")
  assert e == parse.Envelope("1. IMAGE CONTENT a face", "fake", 2, 0.8)
  for bad, message in [
      ("<answer>fake</answer><think>t</think><method>Method 1</method><score>1</score>", "in that order"),
      ("<think>t</think><answer>fake</answer><answer>real</answer><method>Method 1</method>"
       "<score>1</score>", "<answer> must open and close exactly once"),
      ("<think>t</think><answer>fake</answer><method>the face one</method><score>1</score>", "'Method N'"),
      ("<think>t</think><answer>maybe</answer><method>Method 1</method><score>1</score>", "not real or fake"),
      ("ok <think>t</think><answer>fake</answer><method>Method 1</method><score>1</score>", "nothing around"),
  ]:
    with pytest.raises(parse.ParseError, match=message):
      parse.envelope(bad)


# -- aggregation --------------------------------------------------------------


def r(expert, label, p=None):
  return Report("img.png", expert, label, p)


@pytest.mark.parametrize("rs, want, why", [
    ([r("a", "fake"), r("b", "fake"), r("c", "real")], "fake", None),
    ([r("a", "real"), r("b", "real"), r("c", "fake"), r("d", "abstain")], "real", None),
    ([r("a", "fake", 0.6), r("b", "real", 0.2)], "real", "mean p_fake"),  # mean 0.4
    ([r("a", "fake"), r("b", "real")], "fake", "rule"),
    ([r("a", "abstain"), r("b", "abstain")], "abstain", None),
])
def test_majority_vote(rs, want, why):
  v = aggregate.vote(rs)
  assert v.label == want and v.detail.get("tie_broken_by") == why
  if want != "abstain":
    assert v.detail["abstain"] == sum(x.label == "abstain" for x in rs)
  assert aggregate.vote([r("a", "fake"), r("b", "real")], tie="real").label == "real"


def test_confidence_weighting_follows_its_formula():
  rs = [r("face", "fake", 0.9), r("edit", "real", 0.3), r("semantic", "real"), r("x", "abstain")]
  acc = {"face": 0.9, "edit": 0.7, "semantic": 0.6}
  w = {k: math.log(a / (1 - a)) for k, a in acc.items()}
  score = (w["face"] * 0.8 + w["edit"] * -0.4 + w["semantic"] * -1.0) / sum(w.values())
  v = aggregate.confidence(rs, acc)
  assert v.p_fake == pytest.approx((score + 1) / 2) and v.label == ("fake" if score > 0 else "real")
  # An expert at chance weighs nothing; a better one outweighs two worse ones.
  assert aggregate.confidence([r("a", "fake", 1.0), r("b", "real", 0.0)], {"a": 0.5, "b": 0.8}).label == "real"
  assert aggregate.confidence([r("a", "fake", 1.0), r("b", "real", 0.0), r("c", "real", 0.0)],
                              {"a": 0.95, "b": 0.7, "c": 0.7}).label == "fake"
  assert aggregate.confidence([r("a", "abstain")]).label == "abstain"
  assert aggregate.confidence([r("a", "fake", 0.5)]).detail["tie_broken_by"] == "rule"


# -- rewards ------------------------------------------------------------------

GOOD = ("<think>1. IMAGE CONTENT A face. 2. METHOD ANALYSIS Method 1 says real, Method 2 fake, "
        "Method 3 real. 3. CREDIBILITY ASSESSMENT Method 2 fits faces. 4. FINAL DECISION fake."
        "</think><answer>fake</answer><method>Method 2</method><score>0.9</score>")


@pytest.mark.parametrize("name, completion, columns, want", [
    ("format", GOOD, {}, 1.0),
    ("format", GOOD.replace("<score>0.9</score>", ""), {}, 0.0),
    ("accuracy", GOOD, {"label": "fake"}, 1.0),
    ("accuracy", GOOD, {"label": "real"}, 0.0),
    ("accuracy", "<answer>not sure</answer>", {"label": "real"}, 0.0),
    ("tool_selection", GOOD, {"method": 2}, 1.0),
    ("tool_selection", GOOD, {"method": 1}, 0.0),
    ("reasoning_length", "<think>" + "w " * 15 + "</think>", {}, 0.125),
    ("reasoning_length", "<think>" + "w " * 65 + "</think>", {}, 0.375),
    ("reasoning_length", "<think>" + "w " * 125 + "</think>", {}, 0.75),
    ("reasoning_length", "<think>" + "w " * 400 + "</think>", {}, 1.0),
    ("reasoning_length", "no tags", {}, 0.0),
    ("reasoning_format", GOOD, {}, 1.0),
    ("reasoning_format", "<think>1. IMAGE CONTENT x. Method 3</think>", {}, 0.7 / 4 + 0.1),
])
def test_rewards_table(name, completion, columns, want):
  cols = {k: [v] for k, v in columns.items()}
  assert rewards.REWARDS[name](["prompt"], [completion], **cols) == [pytest.approx(want)]


def test_weighted_total_and_group_advantages():
  got = rewards.total(["p", "p"], [GOOD, "junk"], {"format": 2.0, "accuracy": 1.0},
                      label=["fake", "fake"])
  np.testing.assert_allclose(got, [3.0, 0.0])
  with pytest.raises(ValueError, match="unknown rewards"):
    rewards.total(["p"], [GOOD], {"fluency": 1.0})
  adv = rewards.group_advantages([1.0, 1.0, 1.0, 0.0, 1.0, 0.5], group_size=3)
  np.testing.assert_allclose(adv[:3], 0.0)  # equal rewards: no advantage
  g = np.array([0.0, 1.0, 0.5])
  np.testing.assert_allclose(adv[3:], (g - g.mean()) / (g.std(ddof=1) + 1e-4))
  with pytest.raises(ValueError, match="do not split into groups of 4"):
    rewards.group_advantages([1.0] * 6, group_size=4)


ADJ_FAKE = "Decision: fake\nReasoning: The shadow falls the wrong way.\nBounding Box: [10, 10, 50, 50]"
ADJ_REAL = "Decision: real\nReasoning: Physics holds.\nBounding Box: none"
VER_OK = "Decision: fake\nReasoning: Still wrong.\nVerification: confirmed\nBounding Box: [10, 10, 50, 30]"
VER_ODD = "Decision: fake\nReasoning: Hm.\nVerification: refuted"


@pytest.mark.parametrize("name, completion, columns, want", [
    ("semantic_format", ADJ_FAKE, {}, 1.0),
    ("semantic_format", VER_OK, {}, 1.0),
    ("semantic_format", "Decision: fake\nReasoning: no box given", {}, 0.0),  # a fake needs its box
    ("semantic_accuracy", ADJ_FAKE, {"label": "fake"}, 1.0),
    ("semantic_accuracy", ADJ_REAL, {"label": "fake"}, 0.0),
    ("semantic_accuracy", "garbage", {"label": "fake"}, 0.0),
    ("box_iou", ADJ_FAKE, {"label": "fake", "box": [10, 10, 50, 50]}, 1.0),
    ("box_iou", ADJ_FAKE, {"label": "fake", "box": [30, 10, 70, 50]}, 800 / 2400),
    ("box_iou", VER_OK, {"label": "fake", "box": [10, 10, 50, 50]}, 0.5),  # the refined box counts
    ("box_iou", ADJ_REAL, {"label": "real", "box": None}, 1.0),  # a real image: no box is right
    ("box_iou", ADJ_FAKE, {"label": "real", "box": None}, 0.0),
    ("box_iou", ADJ_REAL, {"label": "fake", "box": [0, 0, 5, 5]}, 0.0),
    ("verification_consistency", VER_OK, {}, 1.0),
    ("verification_consistency", VER_ODD, {}, 0.0),  # refuted, yet still fake
    ("verification_consistency", ADJ_FAKE, {}, 0.0),  # no Verification field to be consistent
])
def test_semantic_rewards_table(name, completion, columns, want):
  cols = {k: [v] for k, v in columns.items()}
  assert rewards.SEMANTIC_REWARDS[name](["prompt"], [completion], **cols) == [pytest.approx(want)]
  assert rewards.total(["prompt"], [completion], {name: 2.0}, **cols) == pytest.approx([2 * want])
