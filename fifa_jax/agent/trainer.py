"""`fifa agent train`: the learned aggregator's policy, trained with GRPO (grpo.py).

  fifa agent train --config configs/agent/grpo_toy.yaml --workdir runs/agg

Each step takes `prompts_per_step` records in a seeded order, samples
`group_size` completions of each with the project's generator (models/generate.py,
KV cache, temperature), scores them with the weighted rewards (rewards.py), turns
each group's rewards into advantages and takes `updates_per_batch` AdamW steps on
the clipped surrogate with the KL penalty to the frozen starting policy.  An
optional supervised cold start (`sft_steps`, on the records' `reference`
answers) comes first, as DeepSeek-R1's; the reference policy of the KL is the
policy at the end of it.

Everything a step uses is a function of (seed, step): the record order, the
sampling key.  A checkpoint (orbax, `WORKDIR/checkpoints/<step>`) holds the
trainable weights, the reference, the optimizer state and the step, so a resumed
run continues bit for bit (tests/test_agent_train.py).  The finished policy is
written to `WORKDIR/policy` (a model folder of kind "llava" and its tokenizer),
which `fifa agent eval --aggregator learned --policy WORKDIR/policy` reads, and the
learning curve to `WORKDIR/curve.png`.

Data: "toy" (toy.py) or a JSONL file of records {"prompt": question, "label":
"real"|"fake", "method": N, optional "reference": an answer for the cold start};
every other field is passed to the rewards as a column.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fifa_jax import checkpoint, schema
from fifa_jax.agent import grpo, learned, rewards, toy
from fifa_jax.config import OptimConfig, parse_override
from fifa_jax.models import generate as gen
from fifa_jax.models.llava import LlavaConfig, LlavaPolicy
from fifa_jax.models.lora import LoraConfig
from fifa_jax.models.vit import ViTConfig
from fifa_jax.train import optim
from fifa_jax.train.metrics import MetricsWriter

log = logging.getLogger("fifa_jax.agent")

DEFAULT_WEIGHTS = {"format": 1.0, "accuracy": 1.0, "tool_selection": 1.0,
                   "reasoning_length": 0.0, "reasoning_format": 0.5}


@dataclasses.dataclass(frozen=True)
class PolicySpec:
  init: str = "toy"  # "toy": a tiny LLaMA and a word-level tokenizer; or a policy folder
  lora_rank: int = 0  # 0: every weight trains; else LoRA adapters (alpha = 2 x rank) on q/v
  seed: int = 0  # the toy policy's initial weights
  toy_vision: bool = False  # the toy policy with a tiny CLIP tower (32 px, 16 image tokens)


@dataclasses.dataclass(frozen=True)
class GrpoSettings:
  group_size: int = 4  # completions per prompt (the public recipe: 2)
  prompts_per_step: int = 8
  max_prompt_tokens: int = 128
  max_new_tokens: int = 64
  temperature: float = 1.0  # sampling while training; the aggregator answers greedily
  top_k: int = 0
  top_p: float = 1.0
  beta: float = 0.04  # KL weight (trl's default; the public aggregator recipe uses 0.4)
  clip_eps: float = 0.2
  updates_per_batch: int = 1

  def __post_init__(self):
    if self.group_size < 2:
      raise ValueError("group_size must be at least 2 (advantages compare a group's rewards)")
    if self.updates_per_batch < 1 or self.prompts_per_step < 1:
      raise ValueError("prompts_per_step and updates_per_batch must be at least 1")


@dataclasses.dataclass(frozen=True)
class AgentTrainConfig:
  policy: PolicySpec = PolicySpec()
  data: str = "toy"
  toy_records: int = 512
  rewards: dict[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
  grpo: GrpoSettings = GrpoSettings()
  optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(
      lr=1e-4, warmup_steps=0, end_lr_factor=1.0, b2=0.999))
  sft_steps: int = 0
  sft_lr: float = 1e-3
  steps: int = 100  # GRPO steps (after the sft_steps)
  seed: int = 0
  log_every: int = 10
  checkpoint_every: int = 50
  keep: int = 2


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
                ) -> AgentTrainConfig:
  """The YAML at `path` (None: the defaults) with `key.path=value` overrides, strictly."""
  cfg = schema.decode(AgentTrainConfig, schema.read_yaml(path) if path is not None else {})
  for o in overrides:
    cfg = schema.override(cfg, parse_override(o))
  unknown = set(cfg.rewards) - set(rewards.ALL_REWARDS)
  if unknown:
    raise schema.ConfigError(f"rewards: unknown {sorted(unknown)}; the rewards are "
                             f"{', '.join(rewards.ALL_REWARDS)}")
  if cfg.steps < 0 or cfg.sft_steps < 0:
    raise schema.ConfigError("steps and sft_steps must not be negative")
  return cfg


# -- data ------------------------------------------------------------------------

def load_records(cfg: AgentTrainConfig) -> list[dict]:
  if cfg.data == "toy":
    return toy.records(cfg.toy_records, seed=cfg.seed)
  path = Path(cfg.data)
  if not path.is_file():
    raise FileNotFoundError(f"data {cfg.data!r}: no such file (give a JSONL file or 'toy')")
  out = []
  for n, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
    for key in ("prompt", "label"):
      if not isinstance(rec.get(key), str):
        raise ValueError(f"{path}:{n}: {key!r} must be a string")
    if rec["label"] not in ("real", "fake"):
      raise ValueError(f"{path}:{n}: label {rec['label']!r} is not 'real' or 'fake'")
    if isinstance(rec.get("image"), str) and not Path(rec["image"]).is_absolute():
      rec["image_path"] = str(path.parent / rec["image"])  # relative to the data file
    out.append(rec)
  if not out:
    raise ValueError(f"{path}: no records")
  if cfg.sft_steps and any(not isinstance(r.get("reference"), str) for r in out):
    raise ValueError(f"{path}: sft_steps needs a 'reference' answer in every record")
  for name, weight in cfg.rewards.items():
    for column in rewards.COLUMNS.get(name, ()) if weight else ():
      lacking = next((n for n, r in enumerate(out, 1) if column not in r), None)
      if lacking is not None:
        raise ValueError(f"{path}: record {lacking} has no {column!r}, which the {name} reward "
                         "reads (give it, or set its weight to 0)")
  return out


def check_lengths(records: list[dict], tok, cfg: AgentTrainConfig, image_tokens: int) -> None:
  """Prompts must fit max_prompt_tokens (a vision policy's image tokens cannot be cut), and
  the cold start's answers max_new_tokens; what does not fit is named before any step."""
  g = cfg.grpo
  longest = max(len(tok.encode(learned.chat_prompt(r["prompt"], image_tokens=image_tokens)))
                for r in records)
  if longest > g.max_prompt_tokens and image_tokens:
    raise ValueError(f"grpo.max_prompt_tokens {g.max_prompt_tokens} is shorter than the longest "
                     f"prompt ({longest} tokens with {image_tokens} image tokens)")
  if longest > g.max_prompt_tokens:
    log.warning("prompts up to %d tokens are cut from the left to grpo.max_prompt_tokens %d",
                longest, g.max_prompt_tokens)
  if cfg.sft_steps:
    answer = max(len(tok.encode(r["reference"], add_special_tokens=False)) + 1 for r in records)
    if answer > g.max_new_tokens:
      log.warning("reference answers up to %d tokens (with </s>) are cut to grpo.max_new_tokens %d",
                  answer, g.max_new_tokens)


def batch_indices(n_records: int, per_step: int, step: int, seed: int) -> np.ndarray:
  """The records of `step`: a seeded permutation per epoch, read in order."""
  start = step * per_step
  out = []
  while len(out) < per_step:
    epoch, offset = divmod(start + len(out), n_records)
    perm = np.random.default_rng([seed, epoch]).permutation(n_records)
    out.extend(perm[offset:offset + per_step - len(out)].tolist())
  return np.asarray(out)


def columns(recs: list[dict], repeat: int) -> dict[str, list]:
  """Every field but the prompt and reference, as reward columns, each repeated per sample."""
  keys = sorted({k for r in recs for k in r} - {"prompt", "reference", "image_path"})
  return {k: [r.get(k) for r in recs for _ in range(repeat)] for k in keys}


# -- the policy ------------------------------------------------------------------

def build_policy(spec: PolicySpec):
  """(LlavaConfig, LlavaPolicy, tokenizer)."""
  lora = LoraConfig(rank=spec.lora_rank, alpha=2.0 * spec.lora_rank, dropout=0.0) \
      if spec.lora_rank else None
  if spec.init == "toy":
    tok = toy.tokenizer()
    cfg = toy_config(spec, tok, lora)
    return cfg, LlavaPolicy(cfg, rngs=nnx.Rngs(spec.seed)), tok
  cfg, model, tok = learned.load_policy(spec.init)
  if lora is not None:  # fresh adapters on the released weights
    cfg = dataclasses.replace(cfg, llama=dataclasses.replace(cfg.llama, lora=lora))
    fresh = LlavaPolicy(cfg, rngs=nnx.Rngs(spec.seed))
    nnx.update(fresh, nnx.state(model, nnx.Param))
    model = fresh
  return cfg, model, tok


def toy_config(spec: PolicySpec, tok, lora: LoraConfig | None = None) -> LlavaConfig:
  cfg = LlavaConfig.tiny_text(len(tok), lora=lora)
  if spec.toy_vision:
    cfg = dataclasses.replace(cfg, vision=ViTConfig(image_size=32, patch_size=8, width=32, layers=2,
                                                    heads=2, output_dim=16),
                              image_token_id=tok.convert_tokens_to_ids("<image>"))
  return cfg


def has_vision(spec: PolicySpec) -> bool:
  """Whether the policy sees images, read from its config alone (no weights loaded)."""
  if spec.init == "toy":
    return spec.toy_vision
  return checkpoint.read_meta(spec.init)["config"].get("vision") is not None


def train_filter(spec: PolicySpec):
  return nnx.LoRAParam if spec.lora_rank else nnx.Param


# -- the jitted pieces -----------------------------------------------------------

def steps_for(graphdef, cfg: AgentTrainConfig) -> Steps:
  """The compiled functions for a policy and config, shared by runs that agree on them
  (a resumed run in the same process compiles nothing again)."""
  # hashable: the mapping lr_mult as sorted pairs
  optim_items = tuple(sorted((k, tuple(sorted(v.items())) if isinstance(v, dict) else v)
                             for k, v in dataclasses.asdict(cfg.optim).items()))
  return _steps(graphdef, cfg.grpo, optim_items, cfg.sft_lr, cfg.steps)


@functools.lru_cache(maxsize=8)
def _steps(graphdef, g: GrpoSettings, optim_items: tuple, sft_lr: float, steps: int) -> Steps:
  optim_cfg = OptimConfig(**{k: dict(v) if k == "lr_mult" else v for k, v in optim_items})
  return Steps(graphdef, g, optim_cfg, sft_lr, steps)


class Steps:
  """The compiled functions of one run (shapes fixed by the settings)."""

  def __init__(self, graphdef, g: GrpoSettings, o: OptimConfig, sft_lr: float, steps: int):
    self.graphdef, self.g = graphdef, g
    prompt_len = g.max_prompt_tokens
    self.tx_sft = optax.chain(optax.clip_by_global_norm(o.clip_norm),
                              optax.adamw(sft_lr, b1=o.b1, b2=o.b2, eps=o.eps,
                                          weight_decay=o.weight_decay))
    self.tx_grpo = optim.make_tx(o, max(1, steps * g.updates_per_batch))

    def logprobs(params, frozen, rest, tokens, attention, pixels):
      model = nnx.merge(graphdef, params, frozen, rest)
      logits = model(tokens, pixels, attention_mask=attention)
      return grpo.token_logprobs(logits, tokens, prompt_len)

    def sft_update(params, frozen, rest, opt_state, tokens, attention, mask, pixels):
      loss, grads = jax.value_and_grad(
          lambda p: grpo.sft_loss(logprobs(p, frozen, rest, tokens, attention, pixels), mask))(params)
      updates, opt_state = self.tx_sft.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, {"loss": loss}

    def grpo_update(params, frozen, rest, opt_state, batch: grpo.Batch, old, ref):
      def loss_fn(p):
        logp = logprobs(p, frozen, rest, batch.tokens, batch.attention, batch.pixels)
        return grpo.grpo_loss(logp, old, ref, batch.advantages, batch.completion,
                              clip_eps=g.clip_eps, beta=g.beta)
      (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      updates, opt_state = self.tx_grpo.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, {"loss": loss, **stats}

    def embed(params, frozen, rest, ids, pixels):
      return nnx.merge(graphdef, params, frozen, rest).embed_prompt(ids, pixels)

    self.logprobs = jax.jit(logprobs)
    self.embed = jax.jit(embed)
    self.sft_update = jax.jit(sft_update, donate_argnums=(0, 3))
    self.grpo_update = jax.jit(grpo_update, donate_argnums=(3,))

  def sample(self, params, frozen, rest, ids, attention, pixels, key, tokenizer):
    g = self.g
    config = gen.GenerationConfig(  # equal configs hash equal: the generator compiles once
        max_new_tokens=g.max_new_tokens, do_sample=True, temperature=g.temperature,
        top_k=g.top_k, top_p=g.top_p, eos_token_ids=(tokenizer.eos_token_id,),
        pad_token_id=learned.pad_id(tokenizer))
    model = nnx.merge(self.graphdef, params, frozen, rest)
    if pixels is None:
      return gen.generate(model, jnp.asarray(ids), attention_mask=jnp.asarray(attention),
                          config=config, rng=key)
    embeds = self.embed(params, frozen, rest, jnp.asarray(ids), jnp.asarray(pixels))
    return gen.generate(model, inputs_embeds=embeds, attention_mask=jnp.asarray(attention),
                        config=config, rng=key)


def _teacher_forced(tokenizer, prompts, answers, prompt_len: int, answer_len: int):
  """[prompt | answer </s>] rows, the answer right-padded; mask marks the answer and </s>."""
  ids, attention, _ = learned.encode_prompts(tokenizer, prompts, prompt_len)
  n = len(prompts)
  comp = np.full((n, answer_len), learned.pad_id(tokenizer), np.int32)
  mask = np.zeros((n, answer_len), bool)
  for i, a in enumerate(answers):
    toks = (tokenizer.encode(a, add_special_tokens=False) + [tokenizer.eos_token_id])[:answer_len]
    comp[i, :len(toks)] = toks
    mask[i, :len(toks)] = True
  return np.concatenate([ids, comp], 1), np.concatenate([attention, mask], 1), mask


# -- the loop --------------------------------------------------------------------

def train(cfg: AgentTrainConfig, workdir: str | Path, *, progress: bool = True,
          stop_at: int | None = None) -> dict:
  """Run (or resume) the training in `workdir`; returns the last logged metrics.

  `stop_at`: save and stop once this many steps (cold start included) are done; a
  later call resumes.  The policy folder is written only when the run is complete.
  """
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  records = load_records(cfg)
  if has_vision(cfg.policy) and any(not isinstance(r.get("image"), str) for r in records):
    raise ValueError("the policy has a vision tower: every record needs its 'image' "
                     "(or train a text-only policy: `fifa convert llava --text-only`)")
  pcfg, model, tok = build_policy(cfg.policy)
  if pcfg.vision is not None:
    learned.image_token_check(tok, pcfg)
  check_lengths(records, tok, cfg, pcfg.num_image_tokens)
  graphdef, params, frozen, rest = nnx.split(model, train_filter(cfg.policy), nnx.Param, ...)
  params, frozen, rest = (nnx.to_pure_dict(s) for s in (params, frozen, rest))
  g = cfg.grpo
  steps = steps_for(graphdef, cfg)
  total = cfg.sft_steps + cfg.steps
  end = total if stop_at is None else min(total, stop_at)
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints", keep=cfg.keep, async_save=False)
  start = ckpt.latest_step()
  in_sft = (start or 0) < cfg.sft_steps  # the saved optimizer state is this phase's
  state = {"step": jnp.zeros((), jnp.int32), "params": params,
           "ref": jax.tree.map(jnp.copy, params),
           "opt_state": (steps.tx_sft if in_sft else steps.tx_grpo).init(params)}
  if start is not None:
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            state)
    state, _, _ = ckpt.restore(start, abstract)
    log.info("resumed from step %d", start)
  start = int(state["step"])
  (workdir / "agent_train.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
  writer = MetricsWriter(workdir, tensorboard=False)
  bar = None
  if progress:
    from tqdm.auto import tqdm  # noqa: PLC0415

    bar = tqdm(total=total, initial=start, desc="agent train", unit="step", dynamic_ncols=True)
  last: dict = {}
  acc: dict[str, list[float]] = {}
  try:
    for step in range(start, end):
      if step == cfg.sft_steps and cfg.sft_steps:  # the cold start ends: GRPO's reference
        state["ref"] = jax.tree.map(jnp.copy, state["params"])
        state["opt_state"] = steps.tx_grpo.init(state["params"])
      recs = [records[i] for i in batch_indices(len(records), g.prompts_per_step, step, cfg.seed)]
      prompts = [learned.chat_prompt(r["prompt"], image_tokens=pcfg.num_image_tokens) for r in recs]
      pixels = _pixels(recs, pcfg)
      if step < cfg.sft_steps:
        tokens, attention, mask = _teacher_forced(tok, prompts, [r["reference"] for r in recs],
                                                  g.max_prompt_tokens, g.max_new_tokens)
        state["params"], state["opt_state"], m = steps.sft_update(
            state["params"], frozen, rest, state["opt_state"], tokens, attention, mask, pixels)
        metrics = {"sft/loss": float(m["loss"])}
      else:
        metrics = _grpo_step(steps, state, frozen, rest, tok, recs, prompts, pixels, cfg, step)
      state["step"] = jnp.asarray(step + 1, jnp.int32)
      for k, v in metrics.items():
        acc.setdefault(k, []).append(v)
      if (step + 1) % cfg.log_every == 0 or step + 1 == end:
        last = {k: float(np.mean(v)) for k, v in acc.items()}
        writer.write(step + 1, last)
        acc = {}
        if bar is not None:
          shown = {k.split("/")[-1]: f"{v:.3g}" for k, v in last.items()
                   if k in ("sft/loss", "reward/total", "grpo/kl")}
          bar.set_postfix(shown)
      if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == end:
        ckpt.save(step + 1, state, {"step": step + 1}, {"step": step + 1, "time": time.time()},
                  force=True)
      if bar is not None:
        bar.update(1)
  finally:
    if bar is not None:
      bar.close()
    writer.close()
    ckpt.close()
  if end == total:
    export(workdir / "policy", pcfg, graphdef, state["params"], frozen, rest, tok)
    from fifa_jax.train import plot  # noqa: PLC0415  (matplotlib: only once a run ends)
    plot.plot(workdir / "metrics.jsonl", workdir / "curve.png", f"fifa agent train: {workdir.name}")
  return last


def _pixels(recs: list[dict], pcfg: LlavaConfig) -> np.ndarray | None:
  """The records' images for a policy with a vision tower ([B, S, S, 3]), else None."""
  if pcfg.vision is None:
    return None
  return np.stack([learned.clip_pixels(r.get("image_path", r.get("image")), pcfg.vision.image_size)
                   for r in recs])


def _grpo_step(steps: Steps, state: dict, frozen, rest, tok, recs, prompts, pixels, cfg, step) -> dict:
  g = cfg.grpo
  ids, attention, cut = learned.encode_prompts(tok, prompts, g.max_prompt_tokens)
  ids, attention = np.repeat(ids, g.group_size, 0), np.repeat(attention, g.group_size, 0)
  if pixels is not None:
    pixels = np.repeat(pixels, g.group_size, 0)
  key = jax.random.fold_in(jax.random.key(cfg.seed), step)
  out = steps.sample(state["params"], frozen, rest, ids, attention, pixels, key, tok)
  tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  completions = [tok.decode(t[:n], skip_special_tokens=True) for t, n in zip(tokens, lengths)]
  rep_prompts = [p for p in prompts for _ in range(g.group_size)]
  cols = columns(recs, g.group_size)
  per_reward = {name: np.asarray(rewards.ALL_REWARDS[name](rep_prompts, completions, **cols))
                for name, w in cfg.rewards.items() if w}
  total = sum(cfg.rewards[n] * r for n, r in per_reward.items())
  adv = rewards.group_advantages(total, g.group_size).astype(np.float32)
  completion = np.arange(g.max_new_tokens)[None, :] < lengths[:, None]
  batch = grpo.Batch(tokens=np.concatenate([ids, tokens], 1).astype(np.int32),
                     attention=np.concatenate([attention, completion], 1),
                     completion=completion, advantages=adv, pixels=pixels)
  old = steps.logprobs(state["params"], frozen, rest, batch.tokens, batch.attention, pixels)
  ref = steps.logprobs(state["ref"], frozen, rest, batch.tokens, batch.attention, pixels) \
      if g.beta else old
  for _ in range(g.updates_per_batch):
    state["params"], state["opt_state"], m = steps.grpo_update(
        state["params"], frozen, rest, state["opt_state"], batch, old, ref)
  metrics = {f"reward/{n}": float(r.mean()) for n, r in per_reward.items()}
  metrics.update({"reward/total": float(total.mean()), "grpo/loss": float(m["loss"]),
                  "grpo/kl": float(m["kl"]), "grpo/clip_fraction": float(m["clip_fraction"]),
                  "grpo/completion_tokens": float(lengths.mean()),
                  "grpo/prompts_cut": float(cut)})
  return metrics


def export(path: Path, pcfg: LlavaConfig, graphdef, params, frozen, rest, tok) -> Path:
  """The trained policy as a model folder (kind "llava") with its tokenizer."""
  model = nnx.merge(graphdef, params, frozen, rest)
  tmp = path.with_name(path.name + ".partial")
  shutil.rmtree(tmp, ignore_errors=True)
  tok.save_pretrained(str(tmp))
  checkpoint.save_model(model, tmp, "llava", pcfg)
  shutil.rmtree(path, ignore_errors=True)
  tmp.rename(path)  # complete or absent: never half-written under the final name
  return path
