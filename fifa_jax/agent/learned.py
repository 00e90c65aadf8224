"""The learned aggregator: a LLaVA-style policy (models/llava.py) trained with GRPO
(`fifa agent train`) reads the experts' reports and answers in the four-tag envelope
`<think>..</think><answer>real|fake</answer><method>Method N</method><score>..</score>`.

The prompt follows the public aggregator's data ("historical" style): the experts in
a fixed order as Method 1..3, each "Method N (name): description (Score: s)", under
LLaVA-1.5's conversation template (`USER: <image>\\n... ASSISTANT:`).  Which expert
is Method N is the aggregator's `methods` list; the tool-selection reward checks the
number against the expert expected for the image's domain.

A policy folder is a fifa-jax model folder of kind "llava" (`fifa convert llava`, or
`policy/` in a `fifa agent train` workdir) with the tokenizer's files beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fifa_jax.agent import parse
from fifa_jax.agent.aggregate import Verdict
from fifa_jax.agent.reports import Report

INSTRUCTION = ("Here are three methods' descriptions and scores for the same image. "
               "Provide a final real/fake answer.")
FORMAT = ("Answer as <think> reasoning </think> <answer> real or fake </answer> "
          "<method> Method N </method> <score> 0 to 1 </score>")


def methods_prompt(reports: Sequence[tuple[str, str, str]], domain: str | None = None) -> str:
  """The question from (expert name, description, score) per method, in order."""
  lines = [INSTRUCTION]
  if domain is not None:  # the toy task's stand-in for what the image shows
    lines.append(f"Domain: {domain} .")
  lines += [f"Method {i} ({name}): {text} (Score: {score})"
            for i, (name, text, score) in enumerate(reports, 1)]
  lines.append(FORMAT)
  return "\n".join(lines)


def chat_prompt(question: str, image_tokens: int = 0) -> str:
  """LLaVA-1.5's single-turn template; `image_tokens` copies of `<image>` lead."""
  image = "<image>" * image_tokens + "\n" if image_tokens else ""
  return f"USER: {image}{question} ASSISTANT:"


def report_line(report: Report | None) -> tuple[str, str]:
  """(description, score) of one expert's report for the prompt."""
  if report is None:
    return "no report", "N/A"
  if report.label == "abstain":
    return f"abstained: {report.meta.get('reason', 'no reason given')}", "N/A"
  text = " ".join(f"{report.label}: {report.text}".split())
  return text, "N/A" if report.p_fake is None else f"{report.p_fake:.2f}"


def prompt_from_reports(reports: Sequence[Report], methods: Sequence[str]) -> str:
  by_expert = {r.expert: r for r in reports}
  return methods_prompt([(name, *report_line(by_expert.get(name))) for name in methods])


def training_records(manifest: Sequence[dict], reports: Sequence[Report], methods: Sequence[str],
                     domain_methods: dict[str, int]) -> list[dict]:
  """GRPO records {prompt, label, method, domain, image} for `fifa agent train` from a
  labelled manifest and the experts' reports; `method` is the domain's expected
  expert (0, which no answer earns, when the domain is not in the map)."""
  by_image: dict[str, list[Report]] = {}
  for r in reports:
    by_image.setdefault(r.image, []).append(r)
  out = []
  for row in manifest:
    domain = row.get("domain")
    out.append({"prompt": prompt_from_reports(by_image.get(row["image"], []), methods),
                "label": row["label"], "method": int(domain_methods.get(domain, 0)),
                "domain": domain, "image": row["image"]})
  return out


def encode_prompts(tokenizer, texts: Sequence[str], length: int) -> tuple[np.ndarray, np.ndarray, int]:
  """Left-padded ids [N, length] int32, attention [N, length] bool, and how many
  prompts were longer (cut from the left: the end, where the answer starts, stays)."""
  ids = np.full((len(texts), length), pad_id(tokenizer), np.int32)
  attention = np.zeros((len(texts), length), bool)
  cut = 0
  for i, t in enumerate(texts):
    toks = [tokenizer.bos_token_id] + tokenizer.encode(t, add_special_tokens=False)
    cut += len(toks) > length
    toks = toks[-length:]
    ids[i, length - len(toks):] = toks
    attention[i, length - len(toks):] = True
  return ids, attention, cut


def clip_pixels(path: str | Path, size: int) -> np.ndarray:
  """An image as CLIPImageProcessor gives it to LLaVA-1.5: the shorter side resized to
  `size`, centre-cropped to a square, CLIP-normalised; [size, size, 3] float32."""
  import cv2  # noqa: PLC0415  (images only for a policy with a vision tower)

  from fifa_jax.data.pipeline import normalise  # noqa: PLC0415

  bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
  if bgr is None:
    raise ValueError(f"image {str(path)!r} cannot be read")
  h, w = bgr.shape[:2]
  scale = size / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  bgr = cv2.resize(bgr, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
  top, left = (nh - size) // 2, (nw - size) // 2
  return normalise(cv2.cvtColor(bgr[top:top + size, left:left + size], cv2.COLOR_BGR2RGB))


def image_token_check(tokenizer, config) -> None:
  """The tokenizer must spell `<image>` as the policy's image token."""
  got = tokenizer.convert_tokens_to_ids("<image>")
  if got != config.image_token_id:
    raise ValueError(f"the tokenizer's <image> is id {got}, the policy's image token is "
                     f"{config.image_token_id}")


def pad_id(tokenizer) -> int:
  return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def load_policy(path: str | Path):
  """(LlavaConfig, LlavaPolicy, tokenizer) from a policy folder."""
  from transformers import AutoTokenizer  # noqa: PLC0415  (heavy; only when a policy is used)

  from fifa_jax.checkpoint import CheckpointError, restore_model  # noqa: PLC0415
  from fifa_jax.models.llava import LlavaConfig, LlavaPolicy  # noqa: PLC0415
  from flax import nnx  # noqa: PLC0415

  path = Path(path)
  cfg, model = restore_model(path, lambda c: LlavaPolicy(c, rngs=nnx.Rngs(0)), LlavaConfig,
                             kind="llava")
  try:
    tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path}: no tokenizer beside the policy ({e})") from None
  return cfg, model, tok


class LearnedAggregator:
  """`methods`: the experts (by name) that are Method 1, 2, 3 of the prompt."""

  def __init__(self, path: str | Path, methods: Sequence[str], max_new_tokens: int = 256,
               max_prompt_tokens: int = 1024, image_root: str | Path | None = None):
    from fifa_jax.models import generate as gen  # noqa: PLC0415

    self.config, self.model, self.tokenizer = load_policy(path)
    if self.config.vision is not None:
      image_token_check(self.tokenizer, self.config)
    # A policy with a vision tower also sees the image (the reports' `image`, taken
    # from `image_root` when relative), as the public aggregator does.
    self.image_root = Path(image_root) if image_root is not None else None
    self.methods = list(methods)
    self.max_prompt_tokens = max_prompt_tokens
    self.gen = gen
    self.gen_config = gen.GenerationConfig(max_new_tokens=max_new_tokens,
                                           eos_token_ids=(self.tokenizer.eos_token_id,),
                                           pad_token_id=pad_id(self.tokenizer))

  def answer(self, reports: Sequence[Report]) -> str:
    n_image = self.config.num_image_tokens
    text = chat_prompt(prompt_from_reports(reports, self.methods), image_tokens=n_image)
    ids, attention, _ = encode_prompts(self.tokenizer, [text], self.max_prompt_tokens)
    keep = attention.any(0)  # drop the all-padding columns: one row needs none
    ids, attention = ids[:, keep], attention[:, keep]
    if n_image:
      image = Path(reports[0].image) if reports else None
      if image is None:
        raise ValueError("a vision policy needs the image: no report names it")
      if not image.is_absolute() and self.image_root is not None:
        image = self.image_root / image
      pixels = clip_pixels(image, self.config.vision.image_size)[None]
      embeds = self.model.embed_prompt(ids, pixels)
      out = self.gen.generate(self.model, inputs_embeds=embeds, attention_mask=attention,
                              config=self.gen_config)
    else:
      out = self.gen.generate(self.model, ids, attention_mask=attention, config=self.gen_config)
    n = int(out.lengths[0])
    return self.tokenizer.decode(np.asarray(out.tokens[0, :n]), skip_special_tokens=True)

  def __call__(self, reports: Sequence[Report]) -> Verdict:
    completion = self.answer(reports)
    try:
      env = parse.envelope(completion)
    except parse.ParseError as e:
      return Verdict("abstain", None, "learned", {"reason": str(e), "answer": completion})
    p_fake = env.score if 0.0 <= env.score <= 1.0 else None
    return Verdict(env.answer, p_fake, "learned",
                   {"reasoning": env.think, "method": env.method,
                    "expert": self.methods[env.method - 1] if 1 <= env.method <= len(self.methods)
                    else None})
