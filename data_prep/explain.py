"""Forgery explanations, Steps 3 and 4 of FiFa-Annotator (Section 3.2, Tables 13-14).

* the prompts of Tables 13-14 and their messages for `ChatClient`
  (fifa_jax/endpoint.py: any OpenAI-compatible endpoint, cached, retried);
* `OfflineExplainer`: a deterministic template explainer over concept names and
  artifact statistics, for tests and the demo.  Its text is not an LLM's and
  says nothing a person checked; records made with it carry its name.
* `parse_step3` / `parse_summary`: the Step 3 "[area]: [description]" lines,
  and the Step 4 summary whose `<i> phrase </i>` index tags become
  `<p>phrase</p>[SEG]`, each [SEG] bound to its Atomic Concept.  A summary whose
  tags do not match its concept list is rejected with the reason.

Standard library only: runs in either environment.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fifa_jax.endpoint import ChatClient, ExplainError, Usage  # noqa: F401 (re-exported)
from fifa_jax import tokens

P_OPEN, P_CLOSE, SEG = "<p>", "</p>", "[SEG]"

# Table 13 (Step 3).  {concept_list} is the artifact-existing Atomic Concepts.
STEP3_PROMPT = """\
You are an AI visual assistant that helps humans analyze some images of human faces that have been tampered with by deepfake. You will receive two images, the first is the image A of the face tampered by deepfake and the second is the binary mask image B of the tampered area (a value of 1 (white) indicates the tampered area and a value of 0 (black) indicates the untampered area).

Now, your task is to describe the visible details (artifacts) of the tampered area in the image, using the binary masks provided for the tampered regions of the deepfake tampered image A and image B. In your answer, please describe the tampered image based on the highlighted area of the binary mask, but do not mention the binary mask. Always assume that you are just looking at the tampered image. Responses should identify the tampered areas and corresponding detailed descriptions of the forgery in those areas. Use the format [tampered area]: [detailed forgery description].

All the following areas MUST be discussed:

{concept_list}

Please analyze each area in one sentence.

When providing detailed forgery descriptions, consider the visible details caused by tampering from these perspectives, but do not give an ambiguous, unclear description that is otherwise challenging:

1. Symmetrical Facial Features: Deepfake-generated faces may exhibit unnaturally perfect symmetry, lacking the subtle asymmetry typically found in real faces.
2. Blur or Distortion Around Edges: Deepfake manipulation may introduce blur or distortion around the edges of the face where the manipulation has taken place, especially if the face has been digitally overlaid onto another body.
3. Inconsistent Lighting and Shadows: Deepfake algorithms may struggle to accurately match the lighting and shadows in the original image, leading to discrepancies in lighting direction or intensity across the face.
4. Unnatural Facial Expressions: Deepfakes may produce facial expressions that appear unnatural, exaggerated, or out of sync with the rest of the image.
5. Mismatched Facial Proportions: Deepfake manipulation may result in facial proportions that are inconsistent with the person's gender or age, such as a man's face on a woman's body or vice versa.
6. Inconsistent Skin Texture and Tone: Deepfake-generated faces may exhibit unnatural skin texture or tone, such as overly smooth or pixelated skin, that differs from the surrounding areas.
7. Missing or Inconsistent Eye Reflections: Deepfake manipulation may result in missing or inconsistent reflections in the eyes, which can provide clues about the authenticity of the image.
8. Change hairstyle: Some deepfake algorithms only tamper with hair and may change hair color and hairstyle, or add long hair for boys and short hair for girls.
9. Irregularities in Makeup Application: Deepfake manipulation may introduce makeup styles that are inconsistent with the person's gender or age, or exhibit poor application quality.
10. Contextual Inconsistencies: Deepfake-generated images may contain inconsistencies in the overall context of the image, such as discrepancies in perspective, clothing, or surroundings, that suggest manipulation.
11. Unreasonable accessories: Some deepfake algorithms add glasses, earrings, hats, masks, etc. to the image, and the edges, lighting relationships, and perspective of these accessories may be incorrect.
12. If there are glasses or sunglasses in the picture, please pay special attention to whether the glasses or sunglasses have been tampered with or not, the rims, frames, temples, lenses, etc. of the glasses are very susceptible to imperfections and problems."""

# Table 14 (Steps 4 and 5).  [input] is `step4_input(...)`.
STEP4_PROMPT = """\
Summarize the descriptions of face forgery areas into a paragraph to make it as clear as possible. The face region words in the summary can be more diverse, but the semantic consistency must be guaranteed. An index number will be provided for each face forgery area. Please indicate the index number in the summary.

Here is an example:

Input:
Descriptions
 left part of chin: Displays inconsistency in skin texture, appearing artificially uniform.
 right part of chin: Exhibits disproportionate shadowing inconsistent with light sources.
 edges of chin: Subtle distortions suggest digital manipulation at the boundaries.
 nasolabial fold of left side: Appears unnaturally softened, lacking typical depth.
 nasolabial fold of right side: Exhibits lack of natural shading and depth variation.

Index Numbers
 left part of chin: 0
 right part of chin: 1
 edges of chin: 2
 nasolabial fold of left side: 3
 nasolabial fold of right side: 4

Summary:
 The <0> left side of the chin </0> reveals an unnaturally uniform skin texture, while the <1> right chin area </1> exhibits disproportionate shadowing that contradicts expected lighting. The <2> chin's edges </2> display subtle distortions, indicating possible digital manipulation. Additionally, the <3> left nasolabial fold </3> appears overly smoothed, lacking natural depth, whereas the <4> right nasolabial region </4> fails to show proper shading and depth variation.

Input: [input]"""


# ---------------------------------------------------------------------------
# Prompts and parsing


def image_part(png: bytes, mime: str = "image/png") -> dict[str, Any]:
  """An OpenAI-style image content part (a data URL: nothing is uploaded elsewhere)."""
  return {"type": "image_url",
          "image_url": {"url": f"data:{mime};base64,{base64.b64encode(png).decode()}"}}


def step3_messages(fake_png: bytes, mask_png: bytes, concepts: Sequence[str]) -> list[dict]:
  text = STEP3_PROMPT.format(concept_list="\n".join(concepts))
  return [{"role": "user", "content": [{"type": "text", "text": text},
                                       image_part(fake_png), image_part(mask_png)]}]


def step4_input(descriptions: Mapping[str, str]) -> str:
  lines = ["Descriptions"] + [f" {c}: {d}" for c, d in descriptions.items()]
  lines += ["", "Index Numbers"] + [f" {c}: {i}" for i, c in enumerate(descriptions)]
  return "\n".join(lines)


def step4_messages(descriptions: Mapping[str, str]) -> list[dict]:
  return [{"role": "user", "content": STEP4_PROMPT.replace("[input]", step4_input(descriptions))}]


def parse_step3(text: str, concepts: Sequence[str]) -> dict[str, str]:
  """`[area]: [description]` lines -> {concept: description}, all concepts required."""
  want = {c.lower(): c for c in concepts}
  out: dict[str, str] = {}
  for line in text.splitlines():
    m = re.match(r"\s*(?:[-*\d.]+\s*)?\[?\**([^:\]\*]+?)\**\]?\s*:\s*(.+)", line)
    if m and m.group(1).strip().lower() in want:
      out[want[m.group(1).strip().lower()]] = m.group(2).strip().strip("[]").strip()
  missing = [c for c in concepts if c not in out]
  if missing:
    raise ExplainError(f"Step 3 response does not discuss {missing}")
  return {c: out[c] for c in concepts}


_TAG = re.compile(r"<(/?)(\d+)>")


def parse_summary(summary: str, concepts: Sequence[str]) -> tuple[str, list[str]]:
  """Turn `<i> phrase </i>` tags into `<p>phrase</p>[SEG]`.

  Returns (answer, seg_concepts) with seg_concepts[k] the Atomic Concept of the
  k-th [SEG].  Every index must be tagged exactly once, open before close,
  never nested, within range.
  """
  if P_OPEN in summary or SEG in summary:
    raise ExplainError("summary already contains <p> or [SEG] markers")
  out, segs, pos, open_idx, open_at = [], [], 0, None, 0
  seen: set[int] = set()
  for m in _TAG.finditer(summary):
    closing, idx = m.group(1) == "/", int(m.group(2))
    if idx >= len(concepts):
      raise ExplainError(f"tag <{idx}> is out of range for {len(concepts)} concepts")
    if not closing:
      if open_idx is not None:
        raise ExplainError(f"tag <{idx}> opens inside <{open_idx}>")
      if idx in seen:
        raise ExplainError(f"index {idx} is tagged twice")
      out.append(summary[pos:m.start()])
      open_idx, open_at = idx, m.end()
    else:
      if open_idx != idx:
        raise ExplainError(f"</{idx}> closes " + (f"<{open_idx}>" if open_idx is not None else "nothing"))
      phrase = summary[open_at:m.start()].strip()
      if not phrase:
        raise ExplainError(f"tag <{idx}> holds no phrase")
      out.append(f"{P_OPEN}{phrase}{P_CLOSE}{SEG}")
      segs.append(concepts[idx])
      seen.add(idx)
      open_idx = None
    pos = m.end()
  if open_idx is not None:
    raise ExplainError(f"tag <{open_idx}> is never closed")
  missing = [i for i in range(len(concepts)) if i not in seen]
  if missing:
    raise ExplainError(f"indices {missing} ({[concepts[i] for i in missing]}) are not tagged")
  out.append(summary[pos:])
  answer = re.sub(r"[ \t]+", " ", "".join(out)).strip()
  return answer, segs


# ---------------------------------------------------------------------------
# The offline explainer


class OfflineExplainer:
  """Deterministic template explanations for tests and the demo (no LLM).

  `describe` plays Step 3 and `summarize` plays Steps 4/5, from the concept
  names and per-concept artifact statistics (coverage ratio, pixel count).
  """

  name = "offline-template"

  _ADJ = tokens.EXPLAIN_ADJECTIVES
  _EVIDENCE = tokens.EXPLAIN_EVIDENCE

  def _pick(self, options: Sequence[str], *keys: Any) -> str:
    h = hashlib.sha256("|".join(map(str, keys)).encode()).digest()
    return options[h[0] % len(options)]

  def describe(self, image_id: str, stats: Mapping[str, tuple[float, int]]) -> dict[str, str]:
    """{concept: one-sentence description}; stats[c] = (coverage ratio, artifact pixels)."""
    out = {}
    for c, (ratio, pixels) in stats.items():
      adj = self._pick(self._ADJ, image_id, c)
      ev = self._pick(self._EVIDENCE, image_id, c, "e")
      out[c] = tokens.explain_sentence(adj, ev, ratio, pixels)
    return out

  def summarize(self, descriptions: Mapping[str, str]) -> str:
    """A Step 4 style summary carrying `<i> phrase </i>` tags for every concept."""
    sentences = []
    for i, (c, d) in enumerate(descriptions.items()):
      body = (d[0].lower() + d[1:]) if d else "looks manipulated"
      sentences.append(f"The <{i}> {c} </{i}> {body}")
    return " ".join(s if s.endswith(".") else s + "." for s in sentences)
