"""Special tokens, the chat template and the FiFa-11 templates."""

import random

import pytest

from fifa_jax import fict, tokens


@pytest.fixture(scope="module")
def tok():
  return tokens.load_tokenizer()


def test_special_tokens_are_single_ids_found_by_string(tok):
  ids = tokens.special_token_ids(tok)
  assert len(set(ids.values())) == 5
  for t, i in ids.items():
    assert tok.convert_tokens_to_ids(t) == i
    assert tok("x " + t + " y", add_special_tokens=False).input_ids.count(i) == 1
  # Adding again changes nothing.
  n = len(tok)
  tokens.add_special_tokens(tok)
  assert len(tok) == n and tokens.special_token_ids(tok) == ids


def test_ids_are_looked_up_not_assumed(tok, tmp_path):
  # A tokenizer that already owns one of the tokens keeps that id for it.
  from transformers import AutoTokenizer

  raw = AutoTokenizer.from_pretrained(str(tokens.demo_tokenizer_dir()))
  raw.add_tokens(["[SEG]"], special_tokens=True)
  seg_first = raw.convert_tokens_to_ids("[SEG]")
  raw.save_pretrained(tmp_path)
  t2 = tokens.load_tokenizer(tmp_path)
  ids = tokens.special_token_ids(t2)
  assert ids["[SEG]"] == seg_first
  assert ids != tokens.special_token_ids(tok)  # other positions, still found by string


def test_missing_tokens_and_directories_are_reported(tmp_path):
  from transformers import AutoTokenizer

  raw = AutoTokenizer.from_pretrained(str(tokens.demo_tokenizer_dir()))
  with pytest.raises(KeyError, match="lacks special tokens"):
    tokens.special_token_ids(raw)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    tokens.load_tokenizer(tmp_path / "nope")


def test_round_trip_of_a_grounded_answer(tok):
  answer = tokens.loc_answer(["middle part of left eyebrow", "nasion"])
  prompt, target = tokens.VICUNA_V1_1.split(tokens.render_prompt("i-loc"), answer)
  text = tok.decode(tok(prompt + target).input_ids, skip_special_tokens=False)
  assert text.endswith(answer + "</s>")
  assert tokens.grounded_phrases(text) == ["middle part of left eyebrow", "nasion"]
  assert tokens.strip_markers(answer) == "The manipulated areas are middle part of left eyebrow and nasion."


def test_vicuna_template():
  conv = tokens.VICUNA_V1_1
  p, a = conv.split("Q?", "A.")
  assert p.endswith(" USER: Q? ASSISTANT:") and p.startswith("A chat between")
  assert a == " A.</s>"


def test_templates_cover_every_task_with_paraphrases():
  rng = random.Random(0)
  for task in tokens.TASKS:
    assert len(tokens.PROMPTS[task]) >= 3, task
    region = "nose" if tokens.task_level(task) == "region" else None
    seen = {tokens.render_prompt(task, region=region, rng=rng) for _ in range(50)}
    assert len(seen) >= 3
    for p in seen:
      assert p.startswith("<image>\n") and p.count("<image>") == 1
      assert (p.count("<bbox>") == 1) == (tokens.task_level(task) == "box")
      if region:
        assert "nose" in p and "{region}" not in p
  with pytest.raises(ValueError, match="needs a region"):
    tokens.render_prompt("r-toe")
  with pytest.raises(ValueError, match="unknown task"):
    tokens.render_prompt("x-loc")


def test_task_taxonomy():
  assert [tokens.task_kind(t) for t in tokens.TASKS] == [
      "det", "cls", "loc", "loc", "loc", "toe", "toe", "toe", "age", "age", "age"]
  assert tokens.task_level("b-age") == "box" and tokens.task_level("cls") is None
  assert len(tokens.TASK_NAMES) == 11
  assert fict.ROOT  # the tree is importable beside the tokens
