"""The supplement's four prompts (Deepfake-Agent supplementary material, Sec. 2), verbatim.

The supplement prints the proposer's and the adjudicator's initial prompt as running
text and the other two as blocks; they are kept as printed, line breaks included, and
filled with `str.format`.  Its bullet character is kept too.
"""

from __future__ import annotations

# Both proposers (GPT-4o and Gemini-2.0 Pro in the supplement), with the image.
PROPOSER = (
    "Analyze this image for potential digital forgeries by examining aspects such as Do objects "
    "follow physical laws? Does the scene make real-world sense? Are there contradictions between "
    "different objects? Provide analysis in exact format: Decision: [real/fake] Reasoning: [2-3 "
    "sentence explanation] Now analyze the provided image:")

# The adjudicator's first round, with the image and both proposals.
ADJUDICATOR = (
    "You are a forensic adjudicator synthesizing multiple proposers\u2019 opinions: Expert Analyses: "
    "Proposer 1 Analysis: Decision: {decision_1} Reasoning: {reasoning_1} Proposer 2 Analysis: "
    "Decision: {decision_2} Reasoning: {reasoning_2} Your task: \u2022 Compare and evaluate both "
    "analyses \u2022 Identify the most compelling evidence and possible different opinions \u2022 "
    "Provide unified decision with bounding box Output in exact format: Decision: [real/fake] "
    "Reasoning: [detailed synthesis] Bounding Box: [x1,y1,x2,y2] Now synthesize the expert opinions:")

# Each counterfactual round, with the image whose box is occluded.
VERIFICATION = """Previous Analysis:
Decision: {decision}
Reasoning: {reasoning}
Bounding Box: {bbox}
Counterfactual Assessment:
Temporarily ignore the region specified
by the bounding box and re-evaluate the
image.
Critical questions:
\u2022 Does the image appear authentic
  without this region?
\u2022 Is this evidence causally necessary
  for your decision?
Provide analysis in exact format:
Decision: [real/fake]
Reasoning: [causal explanation]
Verification: [confirmed/refuted]

Now perform the counterfactual
assessment:"""

# The prompted aggregator over the three experts' texts.
AGGREGATOR = """You are a forensic aggregator analyzing
outputs from three experts:
Expert Outputs:
[PS Expert]: {ps}
[Face Expert]: {face}
[Semantic Expert]: {semantic}
Analyze their arguments and provide your
final assessment:
\u2022 Compare the expert reasoning and
  identify the most credible analysis
\u2022 Resolve any conflicts between expert
  opinions
\u2022 Provide your final verdict with clear
  justification
Output format:
Final Decision: [real/fake]
Integrated Reasoning: [detailed
explanation]

Now synthesize the expert analyses:"""


def adjudicator(p1, p2) -> str:
  """The adjudicator's first prompt from two parsed proposals (parse.Proposal)."""
  return ADJUDICATOR.format(decision_1=p1.decision, reasoning_1=p1.reasoning,
                            decision_2=p2.decision, reasoning_2=p2.reasoning)


def verification(previous) -> str:
  """The counterfactual prompt from the previous round (parse.Adjudication)."""
  bbox = "[" + ",".join(f"{v:g}" for v in previous.box) + "]" if previous.box else "none"
  return VERIFICATION.format(decision=previous.decision, reasoning=previous.reasoning, bbox=bbox)


def aggregator(ps: str, face: str, semantic: str) -> str:
  return AGGREGATOR.format(ps=ps, face=face, semantic=semantic)
