"""The learned aggregator's toy task: small enough for a CPU, shaped like the real one.

Each record is an image's three expert reports, in the public aggregator's
"Method N (name): description (Score: s)" form, and the image's domain.  The expert
of the domain (editing -> Method 1, face -> Method 2, semantic -> Method 3, the
public code's default map) is right; the other two guess.  A policy earns the
accuracy reward by answering with the domain's expert and the tool-selection reward
by naming it, so it must learn to read the domain: GRPO has something to find.

`reference` holds a well-formed answer for the supervised cold start that follows
an expert drawn at random: it teaches the four-tag format and to answer with the
cited expert's verdict, and nothing about which expert to trust for the domain,
which is left to GRPO.

`tokenizer()` is a word-level tokenizer over the task's words (the toy policy
starts from random weights, so it needs no released vocabulary).
"""

from __future__ import annotations

import numpy as np

from fifa_jax.agent import learned

DOMAINS = {"editing": 1, "face": 2, "semantic": 3}
EXPERTS = ("fakeshield", "fifa", "semantic")  # Method 1, 2, 3
SCORES = ("0.1", "0.2", "0.3", "0.4", "0.6", "0.7", "0.8", "0.9")
THINK = ("1. IMAGE CONTENT a face photo . 2. METHOD ANALYSIS Method 1 Method 2 Method 3 . "
         "3. CREDIBILITY ASSESSMENT {credible} . 4. FINAL DECISION {answer} .")
SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")


def _report(label: str, rng: np.random.Generator) -> tuple[str, str]:
  score = rng.choice(SCORES[4:] if label == "fake" else SCORES[:4])
  return f"{label} artifacts" if label == "fake" else f"{label} no artifacts", str(score)


def reference(verdicts: list[tuple[str, str]], rng: np.random.Generator) -> str:
  """An answer that cites a random method and gives its verdict and score."""
  method = int(rng.integers(1, len(verdicts) + 1))
  answer, score = verdicts[method - 1]
  think = THINK.format(credible=f"Method {method}", answer=answer)
  return (f"<think> {think} </think> <answer> {answer} </answer> "
          f"<method> Method {method} </method> <score> {score} </score>")


def records(n: int, seed: int = 0) -> list[dict]:
  """n records {prompt, label, method, domain, reference}."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    domain = str(rng.choice(list(DOMAINS)))
    label = str(rng.choice(("real", "fake")))
    method = DOMAINS[domain]
    reports, verdicts = [], []
    for m, name in enumerate(EXPERTS, 1):
      said = label if m == method else str(rng.choice(("real", "fake")))
      text, score = _report(said, rng)
      reports.append((name, text, score))
      verdicts.append((said, score))
    out.append(dict(prompt=learned.methods_prompt(reports, domain=domain), label=label,
                    method=method, domain=domain, reference=reference(verdicts, rng)))
  return out


def vocabulary() -> list[str]:
  words = set()
  for r in records(400, seed=0):
    words |= set(learned.chat_prompt(r["prompt"]).split()) | set(r["reference"].split())
  return list(SPECIALS) + sorted(words)


def tokenizer():
  """A word-level PreTrainedTokenizerFast over the toy task's words (bos <s>, eos </s>)."""
  from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: PLC0415  (toy only)
  from transformers import PreTrainedTokenizerFast  # noqa: PLC0415

  from tokenizers import AddedToken  # noqa: PLC0415

  vocab = {w: i for i, w in enumerate(vocabulary())}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens([AddedToken("<image>", special=True)])  # "<image><image>" is two tokens
  return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                 unk_token="<unk>", pad_token="<pad>")
