"""The learned aggregator: LLaVA conversion parity, the GRPO loss against NumPy, a tiny
policy whose reward rises on the toy task, bit-equal resume, and `fifa agent eval
--aggregator learned` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fifa_jax.agent import grpo, learned, rewards, toy, trainer
from fifa_jax.agent.reports import Report, write_reports
from fifa_jax.checkpoint import load_params
from fifa_jax.cli import app
from fifa_jax.convert import checkpoint as conv_ckpt

REPO = Path(__file__).resolve().parent.parent
TOY_YAML = REPO / "configs" / "agent" / "grpo_toy.yaml"

# -- the GRPO loss ---------------------------------------------------------------


def numpy_grpo(logp, old, ref, adv, mask, clip_eps, beta):
  """The loss written out per token, in float64, as trl's GRPOTrainer computes it."""
  n, c = logp.shape
  seq = []
  for i in range(n):
    terms = []
    for t in range(c):
      if not mask[i, t]:
        continue
      ratio = np.exp(logp[i, t] - old[i, t])
      clipped = min(max(ratio, 1 - clip_eps), 1 + clip_eps)
      d = ref[i, t] - logp[i, t]
      kl = np.exp(d) - d - 1
      terms.append(-min(ratio * adv[i], clipped * adv[i]) + beta * kl)
    seq.append(np.mean(terms) if terms else 0.0)
  return float(np.mean(seq))


def test_grpo_loss_matches_numpy():
  rng = np.random.default_rng(0)
  n, c = 6, 9
  logp = -rng.uniform(0.1, 3.0, (n, c))
  old = logp + rng.normal(0, 0.3, (n, c))  # ratios far enough from 1 to clip
  ref = logp + rng.normal(0, 0.5, (n, c))
  adv = rng.normal(0, 1, n)
  mask = np.arange(c)[None] < rng.integers(1, c + 1, n)[:, None]
  for clip_eps, beta in ((0.2, 0.04), (0.1, 0.4), (0.2, 0.0)):
    got, stats = grpo.grpo_loss(*(jnp.asarray(x, jnp.float32) for x in (logp, old, ref, adv)),
                                jnp.asarray(mask), clip_eps=clip_eps, beta=beta)
    assert float(got) == pytest.approx(numpy_grpo(logp, old, ref, adv, mask, clip_eps, beta), abs=1e-5)
  assert 0 < float(stats["clip_fraction"]) < 1 and float(stats["kl"]) > 0


def test_equal_rewards_give_zero_advantages_and_no_policy_gradient():
  adv = rewards.group_advantages([1.5] * 4 + [0.0, 1.0, 2.0, 3.0], 4)
  assert np.all(adv[:4] == 0) and adv[4] < 0 < adv[7]
  logp = jnp.asarray(-np.random.default_rng(1).uniform(0.5, 2, (4, 5)), jnp.float32)
  grad = jax.grad(lambda lp: grpo.grpo_loss(lp, jax.lax.stop_gradient(lp), lp, jnp.zeros(4),
                                            jnp.ones((4, 5), bool), beta=0.0)[0])(logp)
  assert np.all(np.asarray(grad) == 0)


def test_token_logprobs_read_the_positions_that_predict_the_completion():
  logits = jnp.asarray(np.random.default_rng(2).normal(size=(2, 7, 11)), jnp.float32)
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, 11, (2, 7)), jnp.int32)
  got = np.asarray(grpo.token_logprobs(logits, tokens, prompt_len=4))
  want = np.asarray(jax.nn.log_softmax(logits, -1))
  for i in range(2):
    for t in range(3):  # completion token 4 + t is predicted by position 3 + t
      assert got[i, t] == pytest.approx(want[i, 3 + t, int(tokens[i, 4 + t])], abs=1e-6)


# -- fifa convert llava -----------------------------------------------------------


def tiny_llava(tmp_path, layout: str):
  """A random LlavaForConditionalGeneration; `legacy` as save_pretrained writes it,
  `new` in transformers >= 4.52's module names (model.language_model., ...)."""
  import transformers as tf
  torch.manual_seed(0)
  v = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                          num_attention_heads=4, image_size=32, patch_size=8, projection_dim=16)
  t = tf.LlamaConfig(vocab_size=100, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2)
  hf = tf.LlavaForConditionalGeneration(tf.LlavaConfig(vision_config=v, text_config=t,
                                                       image_token_index=99)).eval()
  folder = tmp_path / f"hf_{layout}"
  if layout == "legacy":
    hf.save_pretrained(folder)
  else:
    from safetensors.torch import save_file
    folder.mkdir()
    hf.config.to_json_file(folder / "config.json")
    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, folder / "model.safetensors")
  return hf, folder


@pytest.mark.parametrize("layout", ["legacy", "new"])
def test_convert_llava_matches_transformers_logits(tmp_path, layout):
  hf, folder = tiny_llava(tmp_path, layout)
  for text_only in (False, True):
    out = tmp_path / f"jax_{layout}_{text_only}"
    r = CliRunner().invoke(app, ["convert", "llava", str(folder), str(out), "--quiet"]
                           + (["--text-only"] if text_only else []))
    assert r.exit_code == 0, r.output
    kind, cfg, policy = conv_ckpt.load(out)
    assert kind == "llava" and (cfg.vision is None) == text_only
    if text_only:
      ids = np.array([[1, 5, 6, 7, 8, 9], [1, 11, 12, 13, 14, 15]])
      with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids)).logits.numpy()
      got = np.asarray(policy(jnp.asarray(ids, jnp.int32)))
    else:
      n = cfg.num_image_tokens  # 16 patches, the class token dropped ("default")
      ids = np.concatenate([[1, 5, 6], [99] * n, [7, 8, 9]])[None].repeat(2, 0)
      ids[1, 1] = 11
      px = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
      with torch.no_grad():
        want = hf(input_ids=torch.tensor(ids), pixel_values=torch.tensor(px)).logits.numpy()
      got = np.asarray(policy(jnp.asarray(ids, jnp.int32), jnp.asarray(px.transpose(0, 2, 3, 1))))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


def test_convert_llava_rejects_what_is_not_a_llava(tmp_path):
  (tmp_path / "x").mkdir()
  (tmp_path / "x" / "config.json").write_text('{"model_type": "llama"}')
  r = CliRunner().invoke(app, ["convert", "llava", str(tmp_path / "x"), str(tmp_path / "o"), "--quiet"])
  assert r.exit_code == 2 and "model_type 'llama', expected 'llava'" in r.output


# -- GRPO on the toy task -----------------------------------------------------------

TOY = ["grpo.group_size=8", "grpo.prompts_per_step=4", "grpo.max_prompt_tokens=72",
       "grpo.max_new_tokens=44", "optim.lr=2e-3", "sft_lr=3e-3", "log_every=5", "keep=3"]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
  """The toy policy: a 100-step cold start, then 60 GRPO steps."""
  work = tmp_path_factory.mktemp("toy")
  cfg = trainer.load_config(TOY_YAML, TOY + ["sft_steps=100", "steps=60",
                                                                  "checkpoint_every=1000"])
  trainer.train(cfg, work, progress=False)
  return work


@pytest.mark.slow  # a training run
def test_grpo_raises_the_toy_policys_mean_reward(toy_run):
  rows = [json.loads(line) for line in (toy_run / "metrics.jsonl").read_text().splitlines()]
  grpo_rows = [r for r in rows if "reward/total" in r]
  assert [r["step"] for r in grpo_rows] == list(range(105, 161, 5))
  first, last = grpo_rows[:3], grpo_rows[-3:]  # GRPO steps 1-15 and 46-60
  mean = lambda rows, key: np.mean([r[key] for r in rows])  # noqa: E731
  # The cold start leaves the format half learnt at temperature 1; GRPO sharpens it, and
  # the total rises. Per 5-step row the reward is noisy (+-0.3), hence 60 steps and
  # three rows a side: +0.52 on 2026-12-02's machine, where 40 steps and two rows a side
  # gave +0.12 (earlier machines: +0.41 and +0.65 with seeds 0 and 1).
  assert mean(last, "reward/total") > mean(first, "reward/total") + 0.25
  assert mean(last, "reward/format") > mean(first, "reward/format")
  assert all(r["sft/loss"] < 0.5 for r in rows if r["step"] == 100)


@pytest.mark.slow  # a training run
def test_resume_is_bit_equal(tmp_path):
  overrides = TOY + ["sft_steps=3", "steps=4", "checkpoint_every=1000", "toy_records=16"]
  cfg = trainer.load_config(TOY_YAML, overrides)
  trainer.train(cfg, tmp_path / "straight", progress=False)
  trainer.train(cfg, tmp_path / "cut", progress=False, stop_at=5)  # in the GRPO phase
  assert not (tmp_path / "cut" / "policy").exists()  # unfinished: no policy folder yet
  trainer.train(cfg, tmp_path / "cut", progress=False)
  a = load_params(tmp_path / "straight" / "checkpoints", parts=("params", "ref", "opt_state"))
  b = load_params(tmp_path / "cut" / "checkpoints", parts=("params", "ref", "opt_state"))
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b) > 0
  assert all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b))
  ref0 = load_params(tmp_path / "cut" / "checkpoints", step=5, parts=("ref",))["ref"]
  assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(ref0), jax.tree.leaves(b["ref"])))


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "agent").glob("*.yaml")), ids=lambda p: p.name)
def test_every_agent_recipe_loads(path):
  cfg = trainer.load_config(path)
  assert cfg.steps > 0 and sum(cfg.rewards.values()) > 0


def test_agent_train_command_rejects_bad_settings_in_one_line(tmp_path):
  (tmp_path / "no_method.jsonl").write_text('{"prompt": "Q", "label": "fake"}\n')
  for args, message in ((["--set", "rewards.fromat=1"], "rewards: unknown ['fromat']"),
                        (["--set", "grpo.group_size=1"], "group_size must be at least 2"),
                        (["--set", "data=missing.jsonl"], "data 'missing.jsonl': no such file"),
                        (["--set", f"data={tmp_path / 'no_method.jsonl'}", "--set", "sft_steps=0"],
                         "record 1 has no 'method', which the tool_selection reward reads")):
    r = CliRunner().invoke(app, ["agent", "train", "--workdir", str(tmp_path / "w"), *args])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fifa agent train: error:") and message in lines[0]


@pytest.mark.slow  # a training run
def test_learned_aggregator_in_agent_eval(toy_run, tmp_path):
  """Reports -> `fifa agent dataset` -> the toy policy as `--aggregator learned`."""
  recs = toy.records(6, seed=9)
  manifest, reports = [], []
  for i, r in enumerate(recs):
    image = f"{i}.png"
    manifest.append({"image": image, "label": r["label"], "domain": r["domain"]})
    lines = r["prompt"].splitlines()[2:5]  # "Method k (name): <label> ... (Score: s)"
    for line, expert in zip(lines, toy.EXPERTS):
      said = line.split(": ", 1)[1].split()[0]
      reports.append(Report(image, expert, said, 0.8 if said == "fake" else 0.2, "artifacts"))
  (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(m) + "\n" for m in manifest))
  write_reports(tmp_path / "reports.jsonl", reports)
  (tmp_path / "agent.yaml").write_text(
      "experts:\n  x: {kind: precomputed, reports: reports.jsonl}\n"
      f"learned: {{methods: [{', '.join(toy.EXPERTS)}], max_new_tokens: 44}}\n")
  cli = CliRunner()
  r = cli.invoke(app, ["agent", "dataset", "--manifest", str(tmp_path / "manifest.jsonl"), "--reports",
                       str(tmp_path / "reports.jsonl"), "--config", str(tmp_path / "agent.yaml"),
                       "--out", str(tmp_path / "train.jsonl")])
  assert r.exit_code == 0, r.output
  written = [json.loads(x) for x in (tmp_path / "train.jsonl").read_text().splitlines()]
  assert [w["method"] for w in written] == [r["method"] for r in recs]
  assert written[0]["prompt"].splitlines()[1].startswith("Method 1 (fakeshield): ")
  r = cli.invoke(app, ["agent", "eval", "--manifest", str(tmp_path / "manifest.jsonl"), "--reports",
                       str(tmp_path / "reports.jsonl"), "--out", str(tmp_path / "eval"), "--config",
                       str(tmp_path / "agent.yaml"), "--aggregator", "vote,learned",
                       "--policy", str(toy_run / "policy")])
  assert r.exit_code == 0, r.output
  result = json.loads((tmp_path / "eval" / "report.json").read_text())
  table = result["aggregators"]["learned"]["all"]
  assert table["n"] == 6 and "| aggregator learned | all | 6 |" in r.output
  for v in result["verdicts"].values():  # every verdict parsed, or an abstention that says why
    said = v["learned"]
    assert said["label"] in ("real", "fake") or "reason" in said["detail"]
  r = cli.invoke(app, ["agent", "eval", "--manifest", str(tmp_path / "manifest.jsonl"), "--reports",
                       str(tmp_path / "reports.jsonl"), "--out", str(tmp_path / "eval2"),
                       "--aggregator", "learned", "--policy", str(tmp_path / "nowhere")])
  assert r.exit_code == 2 and "is not a policy folder" in r.output


def test_policy_prompt_lists_the_experts_as_methods():
  reports = [Report("a", "face", "fake", 0.91, "The nose is smeared."),
             Report("a", "edit", "abstain", None, "", meta={"reason": "no edit found"})]
  text = learned.prompt_from_reports(reports, ["edit", "face", "semantic"])
  assert text.splitlines()[1:4] == ["Method 1 (edit): abstained: no edit found (Score: N/A)",
                                    "Method 2 (face): fake: The nose is smeared. (Score: 0.91)",
                                    "Method 3 (semantic): no report (Score: N/A)"]
  assert learned.chat_prompt("Q", image_tokens=2) == "USER: <image><image>\nQ ASSISTANT:"


@pytest.mark.slow  # a training run
def test_grpo_trains_a_policy_that_sees_the_image(tmp_path, monkeypatch):
  """The vision path: the toy policy with a tiny CLIP tower, records with images."""
  import cv2
  # Sampled completions can tie within a group (zero advantages, no update) depending on
  # the machine's float rounding; a reward that tells every sample apart makes the step
  # deterministic in what it must show: a non-zero GRPO gradient reaching the tower.
  monkeypatch.setitem(rewards.ALL_REWARDS, "format",
                      lambda prompts, completions, **_: np.arange(len(completions), dtype=float))
  rng = np.random.default_rng(0)
  recs = toy.records(8, seed=3)
  for i, r in enumerate(recs):
    cv2.imwrite(str(tmp_path / f"{i}.png"), rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    r["image"] = f"{i}.png"
  (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
  cfg = trainer.load_config(TOY_YAML, TOY + [
      f"data={tmp_path / 'data.jsonl'}", "policy.toy_vision=true", "grpo.max_prompt_tokens=88",
      "grpo.group_size=2", "grpo.prompts_per_step=2", "grpo.updates_per_batch=1",
      "sft_steps=1", "steps=1", "checkpoint_every=1"])
  trainer.train(cfg, tmp_path / "run", progress=False)
  kind, pcfg, policy = conv_ckpt.load(tmp_path / "run" / "policy")
  assert pcfg.num_image_tokens == 16
  after_sft, after_grpo = (load_params(tmp_path / "run" / "checkpoints", step=k, parts=("params",))
                           ["params"]["vit"]["conv1"]["kernel"] for k in (1, 2))
  assert not np.array_equal(after_sft, after_grpo)  # the GRPO step reached the vision tower
  tok = toy.tokenizer()
  text = learned.chat_prompt(recs[0]["prompt"], image_tokens=16)
  ids, att, _ = learned.encode_prompts(tok, [text, text], 88)
  pixels = np.stack([learned.clip_pixels(tmp_path / f"{i}.png", 32) for i in (0, 1)])
  logits = np.asarray(policy(jnp.asarray(ids), jnp.asarray(pixels), attention_mask=jnp.asarray(att)))
  assert not np.allclose(logits[0, -1], logits[1, -1])  # the answer depends on the image
  with pytest.raises(ValueError, match="every record needs its 'image'"):
    trainer.train(trainer.load_config(TOY_YAML, TOY + [
        "policy.toy_vision=true", "toy_records=8", "sft_steps=1", "steps=1"]), tmp_path / "bad",
        progress=False)
