"""Special tokens, the Vicuna v1.1 chat template and the FiFa-11 prompt/answer templates.

The model reads `<image>` (replaced by projected face features) and `<bbox>`
(replaced by the projected Box Encoder token); it writes `<p>phrase</p>[SEG]`,
one mask pair per `[SEG]`.  Token ids are always looked up by token string,
never by position, so any LLaMA/Vicuna tokenizer directory works.

This module imports no jax; the tokenizer helpers import transformers lazily.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fifa_jax import fict

IMAGE = "<image>"
BBOX = "<bbox>"
P_OPEN = "<p>"
P_CLOSE = "</p>"
SEG = "[SEG]"
SPECIAL_TOKENS = (IMAGE, BBOX, P_OPEN, P_CLOSE, SEG)

# ---------------------------------------------------------------------------
# FiFa-11 tasks

TASKS = ("det", "cls", "i-loc", "r-loc", "b-loc", "i-toe", "r-toe", "b-toe",
         "i-age", "r-age", "b-age")
TASK_NAMES = {
    "det": "Det.", "cls": "Cls.",
    "i-loc": "I-Loc.", "r-loc": "R-Loc.", "b-loc": "B-Loc.",
    "i-toe": "I-TOE", "r-toe": "R-TOE", "b-toe": "B-TOE",
    "i-age": "I-AGE", "r-age": "R-AGE", "b-age": "B-AGE",
}


def task_kind(task: str) -> str:
  """'det', 'cls', 'loc', 'toe' or 'age'."""
  _check_task(task)
  return task.split("-")[-1]


def task_level(task: str) -> str | None:
  """'image', 'region' or 'box' for Loc./TOE/AGE tasks; None for Det./Cls."""
  _check_task(task)
  return {"i": "image", "r": "region", "b": "box"}.get(task.split("-")[0]) if "-" in task else None


def task_has_masks(task: str) -> bool:
  return task_kind(task) in ("loc", "age")


def _check_task(task: str) -> None:
  if task not in TASKS:
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


# DFFD categories for Cls. (index = class id); Det. is 0 real / 1 fake.
CLS_CLASSES = ("real", "identity swapping", "expression swapping",
               "attribute manipulation", "entire face synthesis")
DET_CLASSES = ("real", "fake")

# ---------------------------------------------------------------------------
# Prompt templates: several paraphrases per task.  `{region}` is a FICT
# concept name; `<bbox>` stands for the box's token.  Every prompt starts with
# the image.

_LOC_TAIL = ("Please output segmentation masks.", "Please respond with segmentation masks.",
             "Answer with the masks of the manipulated areas.")

PROMPTS: dict[str, tuple[str, ...]] = {
    "det": (
        "Is this face real or fake?",
        "Has this facial image been manipulated by a deepfake technique?",
        "Is the face in this image authentic or forged?",
        "Determine whether this facial image is real or fake.",
    ),
    "cls": (
        "Which kind of forgery, if any, has been applied to this face? Choose from: "
        "real, identity swapping, expression swapping, attribute manipulation, entire face synthesis.",
        "Classify this face as real, identity swapping, expression swapping, attribute "
        "manipulation or entire face synthesis.",
        "What type of manipulation does this facial image show (real, identity swapping, "
        "expression swapping, attribute manipulation or entire face synthesis)?",
    ),
    "i-loc": tuple(f"{q} {t}" for q in (
        "Where are the manipulated areas in this facial image?",
        "Which regions of this face contain forgery artifacts?",
        "Locate the artifacts in this deepfake face.",
    ) for t in _LOC_TAIL[:2]),
    "r-loc": tuple(f"{q} {t}" for q in (
        "Where are the manipulated areas in the {region} of this face?",
        "Which parts of the {region} contain forgery artifacts?",
        "Locate the artifacts within the {region}.",
    ) for t in _LOC_TAIL[:2]),
    "b-loc": tuple(f"{q} {t}" for q in (
        "Where are the manipulated areas inside the box " + BBOX + "?",
        "Which parts of the region " + BBOX + " contain forgery artifacts?",
        "Locate the artifacts within " + BBOX + ".",
    ) for t in _LOC_TAIL[:2]),
    "i-toe": (
        "This face has been manipulated. Describe the forgery artifacts in detail.",
        "Explain which areas of this deepfake face look tampered with and why.",
        "Analyse the visible forgery traces in this facial image.",
    ),
    "r-toe": (
        "Describe the forgery artifacts in the {region} of this face.",
        "Explain what looks tampered with in the {region}.",
        "Analyse the visible forgery traces around the {region}.",
    ),
    "b-toe": (
        "Describe the forgery artifacts inside the box " + BBOX + ".",
        "Explain what looks tampered with in the region " + BBOX + ".",
        "Analyse the visible forgery traces within " + BBOX + ".",
    ),
    "i-age": (
        "This face has been manipulated. Explain the forgery artifacts and segment each of them.",
        "Describe the tampered areas of this face with segmentation masks.",
        "Analyse the forgery traces in this facial image and ground each one with a mask.",
    ),
    "r-age": (
        "Explain the forgery artifacts in the {region} and segment each of them.",
        "Describe the tampered areas of the {region} with segmentation masks.",
        "Analyse the forgery traces around the {region} and ground each one with a mask.",
    ),
    "b-age": (
        "Explain the forgery artifacts inside the box " + BBOX + " and segment each of them.",
        "Describe the tampered areas within " + BBOX + " with segmentation masks.",
        "Analyse the forgery traces in the region " + BBOX + " and ground each one with a mask.",
    ),
}


def render_prompt(task: str, *, region: str | None = None, variant: int | None = None,
                  rng: random.Random | None = None) -> str:
  """The user turn for `task`: `<image>` on its own line, then the question.

  `variant` picks a paraphrase; otherwise `rng` (or the first one).
  """
  level = task_level(task)
  if level == "region" and not region:
    raise ValueError(f"task {task!r} needs a region (a FICT concept name)")
  if level != "region" and region:
    raise ValueError(f"task {task!r} takes no region, got {region!r}")
  choices = PROMPTS[task]
  if variant is None:
    variant = rng.randrange(len(choices)) if rng is not None else 0
  question = choices[variant % len(choices)]
  return f"{IMAGE}\n" + (question.format(region=region) if region else question)


def det_answer(is_fake: bool) -> str:
  return "This face is fake." if is_fake else "This face is real."


def cls_answer(category: str) -> str:
  if category not in CLS_CLASSES:
    raise ValueError(f"unknown category {category!r}; expected one of {CLS_CLASSES}")
  if category == "real":
    return "This face is real."
  return f"This face is fake, made by {category}."


def grounded(phrase: str) -> str:
  """`<p>phrase</p>[SEG]`: a phrase bound to one mask."""
  return f"{P_OPEN}{phrase}{P_CLOSE}{SEG}"


def loc_answer(concepts: Sequence[str]) -> str:
  """A Loc. answer listing each artifact-existing concept with its mask."""
  if not concepts:
    raise ValueError("a Loc. answer needs at least one concept")
  parts = [grounded(c) for c in concepts]
  body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
  return f"The manipulated {'area is' if len(parts) == 1 else 'areas are'} {body}."


_GROUNDED_RE = re.compile(re.escape(P_OPEN) + r"(.*?)" + re.escape(P_CLOSE) + r"\s*" + re.escape(SEG))


def grounded_phrases(answer: str) -> list[str]:
  """The phrases bound to masks, in order (one per `[SEG]`)."""
  return _GROUNDED_RE.findall(answer)


def count_segs(text: str) -> int:
  return text.count(SEG)


def strip_markers(text: str) -> str:
  """Plain text for caption metrics: markers removed, phrases kept."""
  text = text.replace(SEG, "").replace(P_OPEN, "").replace(P_CLOSE, "")
  return re.sub(r"\s+", " ", text).strip()


# Wording of the offline template explainer (data_prep.explain.OfflineExplainer),
# kept here, in the shared contract, so the demo tokenizer learns it as words.
EXPLAIN_ADJECTIVES = ("unnaturally smooth", "slightly blurred", "oddly saturated", "patchy",
                      "over-sharpened", "inconsistently lit", "subtly warped", "flat and waxy")
EXPLAIN_EVIDENCE = ("its texture differs from the surrounding skin",
                    "the boundary shows a faint blending seam",
                    "the shading contradicts the main light source",
                    "fine detail is missing compared with nearby areas",
                    "the colour tone drifts away from the neighbouring regions")
EXPLAIN_EXTENTS = ("most of", "part of", "a small part of")


def explain_sentence(adjective: str, evidence: str, ratio: float, pixels: int) -> str:
  """One concept's sentence in the offline explainer's template."""
  extent = EXPLAIN_EXTENTS[0] if ratio >= 0.5 else EXPLAIN_EXTENTS[1] if ratio >= 0.2 else EXPLAIN_EXTENTS[2]
  return f"Appears {adjective} over {extent} the area ({ratio:.0%}, {pixels} px); {evidence}."


# ---------------------------------------------------------------------------
# Vicuna v1.1 conversation template (as FastChat's "vicuna_v1.1", used by
# LLaVA/GLaMM): "{system} USER: {q} ASSISTANT: {a}</s>".


@dataclasses.dataclass(frozen=True)
class Conversation:
  system: str = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
  roles: tuple[str, str] = ("USER", "ASSISTANT")
  sep: str = " "
  sep2: str = "</s>"

  def prompt(self, question: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """Everything before the answer; generation continues from here.  `history` holds
    the earlier (question, answer) turns of a chat (FastChat's vicuna_v1.1 form:
    each answer ends with sep2)."""
    user, bot = self.roles
    turns = "".join(f"{user}: {q}{self.sep}{bot}: {a}{self.sep2}" for q, a in history)
    return f"{self.system}{self.sep}{turns}{user}: {question}{self.sep}{bot}:"

  def split(self, question: str, answer: str) -> tuple[str, str]:
    """(prompt, target): the loss is taken on the target only."""
    return self.prompt(question), f" {answer}{self.sep2}"


VICUNA_V1_1 = Conversation()

# ---------------------------------------------------------------------------
# Tokenizers


def add_special_tokens(tokenizer):
  """Add the FiFa special tokens to a transformers tokenizer (idempotent)."""
  # lazy: tokens.py is shared with data_prep, which never builds a tokenizer
  from tokenizers import AddedToken

  # Tokens already in the vocabulary keep their id but become atomic.
  tokenizer.add_tokens([AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False)
                        for t in SPECIAL_TOKENS], special_tokens=True)
  if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
  return tokenizer


def special_token_ids(tokenizer) -> dict[str, int]:
  """Token -> id for the five special tokens, each looked up by its string."""
  vocab = tokenizer.get_vocab()
  missing = [t for t in SPECIAL_TOKENS if t not in vocab]
  if missing:
    raise KeyError(f"tokenizer lacks special tokens {missing}; call add_special_tokens first")
  return {t: vocab[t] for t in SPECIAL_TOKENS}


def load_tokenizer(path: str | os.PathLike | None = None):
  """A LLaMA/Vicuna tokenizer directory with the FiFa tokens added.

  With no path, the small offline demo tokenizer (`demo_tokenizer_dir()`).
  """
  from transformers import AutoTokenizer  # lazy: heavy import

  path = Path(path) if path is not None else demo_tokenizer_dir()
  if not path.is_dir():
    raise FileNotFoundError(f"tokenizer directory {str(path)!r} does not exist")
  tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
  return add_special_tokens(tok)


def _demo_corpus() -> list[str]:
  rng = random.Random(0)
  no_special = lambda q: re.sub("|".join(map(re.escape, SPECIAL_TOKENS)), " ", q)
  lines = list(fict.NAMES)
  # The special tokens are added afterwards, as to a real LLaMA tokenizer.  Whole
  # conversations and answers repeat, so the template and the frequent phrases
  # become a few tokens each (BPE merges across spaces here), as Vicuna's
  # vocabulary makes them short: sequences stay short enough to train on a CPU.
  for task, qs in PROMPTS.items():
    for q in qs:
      for _ in range(4):
        region = rng.choice(fict.PARENTS) if task_level(task) == "region" else None
        question = no_special(q.format(region=region) if region else q)
        lines.append(VICUNA_V1_1.prompt(question))
  lines += [det_answer(True), det_answer(False)] * 20
  lines += [cls_answer(c) for c in CLS_CLASSES] * 20
  for _ in range(600):
    names = rng.sample(fict.ATOMIC, rng.randint(1, 4))
    lines.append(no_special(loc_answer(names)))
    c = names[0]
    sentence = explain_sentence(rng.choice(EXPLAIN_ADJECTIVES), rng.choice(EXPLAIN_EVIDENCE),
                                rng.random(), rng.randint(20, 3000))
    lines.append(f"The {c} " + sentence[0].lower() + sentence[1:])
  words = ("shows displays exhibits appears unnaturally smooth blurred distorted inconsistent "
           "lighting shadows texture tone colour color edges boundary artifacts artifact blending "
           "seams unnatural overly sharp soft irregular asymmetric reflection highlight shading "
           "manipulation tampered forged deepfake region around near the of with and a an is are "
           "while whereas additionally which suggests indicating digital subtle noticeable slight "
           "strong visible contrast saturation warped stretched mismatched pattern patches").split()
  lines += [" ".join(words[i:i + 8]) for i in range(0, len(words), 4)]
  lines += [str(i) for i in range(1000)]
  return lines


DEMO_VOCAB = 4096


@functools.cache
def demo_tokenizer_dir() -> Path:
  """A small LLaMA-style tokenizer (BPE, byte fallback, `▁` word boundaries)
  trained locally on FICT names and the FiFa templates; no download.

  Built once per process into a temporary folder (deterministic; about 0.1 s).
  """
  # lazy: as in add_special_tokens
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  from transformers import PreTrainedTokenizerFast

  out = Path(tempfile.mkdtemp(prefix="fifa-demo-tokenizer-"))
  tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
  tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
  tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                   decoders.Fuse(), decoders.Strip(" ", 1, 0)])
  byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
  trainer = trainers.BpeTrainer(vocab_size=DEMO_VOCAB, special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens,
                                show_progress=False, initial_alphabet=[])
  tok.train_from_iterator(_demo_corpus(), trainer=trainer)
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 unk_token="<unk>", add_bos_token=True)
  fast.save_pretrained(str(out))
  return out


def expand_image_tokens(ids: Sequence[int], image_token_id: int, n: int) -> list[int]:
  """Each `<image>` id becomes `n` (= L_I, the image features) copies, so that a
  sequence's shape is fixed before the model sees it (the pipeline and inference)."""
  out: list[int] = []
  for t in ids:
    out.extend([t] * n if t == image_token_id else [t])
  return out
