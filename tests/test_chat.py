"""Chat: the Vicuna v1.1 multi-turn template, each turn seeing the ones before it, and
`fifa chat` reading turns from its input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import fifa_jax
from fifa_jax import tokens
from fifa_jax.infer import overlay, predict


def test_multi_turn_template_is_fastchats_vicuna_v1_1():
  conv = tokens.VICUNA_V1_1
  sys_ = conv.system
  assert conv.prompt("<image>\nIs it fake?") == f"{sys_} USER: <image>\nIs it fake? ASSISTANT:"
  assert conv.prompt("Why?", [("<image>\nIs it fake?", "Yes.")]) == (
      f"{sys_} USER: <image>\nIs it fake? ASSISTANT: Yes.</s>USER: Why? ASSISTANT:")
  # the training split is the one-turn prompt plus the answer and sep2
  assert conv.split("q", "a") == (conv.prompt("q"), " a</s>")


@pytest.mark.slow
def test_each_turn_sees_the_ones_before(workdir):
  model = fifa_jax.FiFa.load(workdir[0], max_new_tokens=6)
  rgb = np.random.default_rng(5).integers(0, 255, (40, 48, 3), np.uint8)
  chat = model.chat(rgb)
  first = chat.ask(task="det")
  second = chat.ask("And the nose?")
  assert first.question.startswith("<image>\n") and second.question == "And the nose?"
  assert chat.history == [(first.question, first.text), ("And the nose?", second.text)]
  # What the model read on the second turn: the template with the first turn answered.
  cfg, tok = model.config, model.loaded.tokenizer
  q = predict.Query(rgb, "i-toe", prompt="And the nose?", history=((first.question, first.text),))
  batch = predict.encode(model.loaded, [q])
  ids = batch["input_ids"][0][batch["attention_mask"][0] == 1].tolist()
  want = tok(tokens.VICUNA_V1_1.prompt("And the nose?", [(first.question, first.text)])).input_ids
  assert ids == tokens.expand_image_tokens(want, cfg.image_token_id, cfg.num_image_tokens)
  alone = predict.encode(model.loaded, [predict.Query(rgb, "i-toe", prompt="<image>\nAnd the nose?")])
  assert alone["attention_mask"].sum() < len(ids)


@pytest.mark.slow
def test_fifa_chat_reads_turns_until_quit(workdir, tmp_path):
  img = tmp_path / "face.png"
  overlay.save_png(img, np.random.default_rng(6).integers(0, 255, (40, 48, 3), np.uint8))
  run = lambda *a, stdin="": subprocess.run(  # noqa: E731
      [sys.executable, "-m", "fifa_jax.cli", "chat", "--checkpoint", str(workdir[0]), *a,
       "--max-new-tokens", "6", "--out", str(tmp_path / "o")], input=stdin, capture_output=True, text=True)
  r = run("--image", str(img), stdin="det\nr-loc noze\ni-loc\nquit\nnever asked\n")
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.count("fifa> ") == 2  # det and i-loc; the misspelt region is said and skipped
  assert "nearest FICT names: 'nose'" in r.stdout
  r = run("--image", str(tmp_path / "none.png"))
  assert r.returncode == 2 and "none.png' does not exist" in r.stderr and "Traceback" not in r.stderr
