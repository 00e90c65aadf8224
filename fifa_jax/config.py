"""Typed, strict run configuration: dataclasses, YAML files, dotted overrides.

Order in which settings apply (later wins):
  1. the dataclass defaults below;
  2. each file named by `include:` (a path or list, relative to the including
     file), applied depth-first in the order listed;
  3. the file itself;
  4. each `--set a.b=value` override, in command-line order (values are parsed
     as YAML: `--set train.steps=10`, `--set data.buckets=[64,128]`).

Every key is checked against the schema (`schema.py`): an unknown or misspelt key
raises `ConfigError` naming its dotted path (with the nearest valid name), and the
CLI exits with status 2.  Values are type-checked (ints are accepted for floats).

The `model` node picks a preset and overrides the model's own config dataclasses
key by key: `model.vit` (ViTConfig), `model.box` (BoxEncoderConfig), `model.llama`
(LlamaConfig), `model.lora` (LoraConfig), `model.decoder` (TwoWayConfig) and
`model.pixel` (PixelDecoderConfig), each checked against that dataclass.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import yaml

from fifa_jax import schema, tokens
from fifa_jax.schema import ConfigError  # noqa: F401 (callers catch config.ConfigError)

# Table 17: data ratios of the multi-task recipe.
TABLE17_RATIOS: dict[str, float] = {
    "det": 4, "cls": 4, "i-toe": 1, "i-loc": 1, "i-age": 2, "r-toe": 3, "r-loc": 3, "r-age": 6,
    "b-toe": 3, "b-loc": 3, "b-age": 6,
}


# The parts of FiFaConfig a run may override, with their dataclasses' names.
MODEL_PARTS = {"vit": "ViTConfig", "box": "BoxEncoderConfig", "llama": "LlamaConfig",
               "lora": "LoraConfig", "decoder": "TwoWayConfig", "pixel": "PixelDecoderConfig"}


@dataclasses.dataclass
class ModelConfig:
  preset: str = "tiny"  # a name in fifa_jax.models.fifa.PRESETS: paper | cpu | tiny
  tokenizer: str | None = None  # LLaMA tokenizer folder; None: the offline demo tokenizer
  max_segs: int | None = None  # deprecated, ignored: every [SEG] gets its mask (data.seg_capacity)
  remat: bool = False  # rematerialise each LLM layer in the backward pass
  # Overrides of the preset's part configs (MODEL_PARTS), checked against their dataclasses.
  vit: dict[str, Any] = dataclasses.field(default_factory=dict)
  box: dict[str, Any] = dataclasses.field(default_factory=dict)
  llama: dict[str, Any] = dataclasses.field(default_factory=dict)
  lora: dict[str, Any] = dataclasses.field(default_factory=dict)
  decoder: dict[str, Any] = dataclasses.field(default_factory=dict)
  pixel: dict[str, Any] = dataclasses.field(default_factory=dict)
  # Older spellings of model.lora.{rank, alpha, dropout, target_modules}; still read.
  lora_rank: int | None = None
  lora_alpha: float | None = None
  lora_dropout: float | None = None
  lora_targets: list[str] | None = None
  # The LLM is frozen except its LoRA adapters; this also trains the token
  # embeddings and lm_head (needed when new special tokens start untrained).
  train_embeddings: bool = False
  # The whole LLM trains (not only LoRA): for an LLM that starts from random weights
  # (the cpu/tiny presets without released weights), where freezing it makes no sense.
  train_llm: bool = False
  # A fifa-jax model folder (`fifa convert model --config <this yaml> --farl ... --llama ...
  # --sam ... -o DIR`) whose weights start a new run; ignored when the run resumes.
  init_from: str | None = None


@dataclasses.dataclass
class DataConfig:
  root: str = "data"
  # Where the shards are; {root}, {split}, {task} are filled in.
  qa_glob: str = "{root}/qa/{split}/{task}-*.array_record"
  masks: str = "{root}/masks"
  tasks: dict[str, float] = dataclasses.field(default_factory=lambda: dict(TABLE17_RATIOS))
  split: str = "train"
  dev_split: str = "dev"
  seed: int = 0
  buckets: list[int] = dataclasses.field(default_factory=lambda: [512, 768, 1024])
  workers: int = 0  # grain worker processes (0: in the main process)
  # [SEG] slots per global batch (all rows' [SEG]s packed together); None: from the
  # data (mean + 4 sd of a batch's total); overflow is logged as train/masks_dropped.
  seg_capacity: int | None = None
  augment: bool = False  # random crop/scale, small shifts and colour jitter of training images
  worker_buffer: int = 2
  # Length-grouped batches: windows of this many batches are sorted by token length
  # and cut into batches, so short records pad to a short bucket (0: off).  The
  # [SEG] slots are then set per bucket from the data (pipeline.LengthGrouped).
  group_by_length: int = 0


@dataclasses.dataclass
class OptimConfig:
  lr: float = 3e-4
  warmup_steps: int = 100
  end_lr_factor: float = 0.0  # linear decay to lr * this at the last step
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  clip_norm: float = 1.0
  # Learning-rate multipliers per top-level module of FiFaMLLM (`vit`, `decoder`,
  # `llm`, ...): a module's rate is lr * its multiplier (1 when not named).  The CPU
  # demo trains its image side from scratch at a fifth of the LLM's rate.
  lr_mult: dict[str, float] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class LossConfig:
  """Weights of the loss terms (Appendix B); `train.losses.fifa_loss` reads them."""
  text: float = 1.0
  det_cls: float = 0.2
  mask_bce: float = 0.5
  mask_dice: float = 2.0
  # The text CE's mean: over the batch's answer tokens (LLaVA/LISA/GLaMM: "tokens"), or over
  # each sample's tokens and then the samples ("samples"), so that a one-word decision in a
  # short Det./Cls. answer is not outweighed by the hundreds of tokens of an AGE answer;
  # "both": the average of the two.
  text_mean: str = "tokens"


@dataclasses.dataclass
class MeshConfig:
  data: int = -1
  fsdp: int = 1
  tensor: int = 1


@dataclasses.dataclass
class TrainConfig:
  steps: int = 12500
  batch_size: int = 40  # global, over all hosts
  grad_accum: int = 1
  seed: int = 0
  log_every: int = 10
  eval_every: int = 0  # 0: no dev-set evaluation
  eval_batches: int = 4
  max_nonfinite: int = 3  # consecutive skipped steps before the run stops
  progress: bool = True


@dataclasses.dataclass
class WarmupConfig:
  """The image side trained alone before the run (train/warmup.py): a stand-in for
  FaRL/SAM weights when training from random ones.  0 steps: off (the paper recipes)."""
  steps: int = 0
  batch_size: int = 16  # class-balanced
  # Mask pairs (Region, Regional Artifact) per face: the whole image's first, then
  # concepts (half of them ones a fake's artifacts touch).  1, the whole image's
  # only, teaches Det. fastest (docs/learning.md section 4).
  concepts_per_image: int = 1


@dataclasses.dataclass
class CheckpointConfig:
  every: int = 500
  keep: int = 3
  async_save: bool = True


@dataclasses.dataclass
class DistributedConfig:
  initialize: str = "auto"  # auto (when launched by a cluster) | true | false
  coordinator: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  timeout_s: int = 300


@dataclasses.dataclass
class BenchConfig:
  peak_tflops: float | None = None  # per device, for MFU; None: looked up by device kind


@dataclasses.dataclass
class Config:
  name: str = "run"
  model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
  data: DataConfig = dataclasses.field(default_factory=DataConfig)
  optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
  loss: LossConfig = dataclasses.field(default_factory=LossConfig)
  mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
  warmup: WarmupConfig = dataclasses.field(default_factory=WarmupConfig)
  checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
  distributed: DistributedConfig = dataclasses.field(default_factory=DistributedConfig)
  bench: BenchConfig = dataclasses.field(default_factory=BenchConfig)

  def validate(self) -> "Config":
    m, d, t = self.model, self.data, self.train
    # lazy: the models pull in jax and flax, which config checks and `--help` do without
    from fifa_jax.models.fifa import PRESETS
    if m.preset not in PRESETS:
      raise ConfigError(f"model.preset: {m.preset!r} is not one of {sorted(PRESETS)}")
    for task, w in d.tasks.items():
      if task not in tokens.TASKS:
        raise ConfigError(f"data.tasks.{task}: unknown task; choose from {list(tokens.TASKS)}")
      if w < 0:
        raise ConfigError(f"data.tasks.{task}: weight must be >= 0, got {w}")
    if not any(w > 0 for w in d.tasks.values()):
      raise ConfigError("data.tasks: at least one task needs a positive weight")
    wu = self.warmup
    if wu.steps < 0 or wu.batch_size < 2 or wu.concepts_per_image < 1:
      raise ConfigError("warmup: steps must be >= 0, batch_size >= 2 and concepts_per_image >= 1")
    for name, mult in self.optim.lr_mult.items():
      if mult < 0:
        raise ConfigError(f"optim.lr_mult.{name}: multiplier must be >= 0, got {mult}")
    if not d.buckets or sorted(d.buckets) != d.buckets or min(d.buckets) <= 0:
      raise ConfigError(f"data.buckets: need increasing positive lengths, got {d.buckets}")
    if self.loss.text_mean not in ("tokens", "samples", "both"):
      raise ConfigError(f"loss.text_mean: {self.loss.text_mean!r} is not one of "
                        "['both', 'samples', 'tokens']")
    if t.batch_size <= 0 or t.steps <= 0 or t.grad_accum <= 0:
      raise ConfigError("train.batch_size, train.steps and train.grad_accum must be positive")
    if t.batch_size % t.grad_accum:
      raise ConfigError(f"train.batch_size {t.batch_size} is not divisible by train.grad_accum "
                        f"{t.grad_accum}")
    if self.distributed.initialize not in ("auto", "true", "false"):
      raise ConfigError(f"distributed.initialize: {self.distributed.initialize!r} is not one of "
                        "auto/true/false")
    if m.tokenizer is not None and "://" not in m.tokenizer and not Path(m.tokenizer).is_dir():
      raise ConfigError(f"model.tokenizer: folder {m.tokenizer!r} does not exist (give a LLaMA/Vicuna "
                        "tokenizer folder, or leave it unset for the offline demo tokenizer)")
    if m.init_from is not None and "://" not in m.init_from:
      # Lazy (as the model imports below): orbax and jax are slow to import, and
      # `fifa --help` and config checks do without them.
      from fifa_jax.checkpoint import MARKER, is_model_folder
      if not is_model_folder(m.init_from):
        raise ConfigError(f"model.init_from: {m.init_from!r} is not a fifa-jax model folder (no "
                          f"{MARKER}); write one with `fifa convert model ... -o DIR`")
    model_config(self, check_only=True)  # every model.<part> override, without a tokenizer
    return self


def model_config(cfg: Config, tokenizer=None, check_only: bool = False):
  """The FiFaConfig of a run: the preset with the `model.<part>` overrides and the
  tokenizer's ids.

  Training, inference, evaluation and conversion all build the model from here.  The
  vocabulary grows to the tokenizer's size when that is larger (unless
  `model.llama.vocab_size` is set), and the five special-token ids are the
  tokenizer's (looked up by string).  `check_only` checks the overrides and the parts'
  agreement without reading a tokenizer (the preset's ids stand in).
  """
  from fifa_jax.models.fifa import PRESETS  # lazy: see validate()
  from fifa_jax.models.lora import LoraConfig

  m = cfg.model
  base = PRESETS[m.preset]()
  parts = {name: schema.override(getattr(base, name), getattr(m, name), f"model.{name}.")
           for name in ("vit", "box", "decoder", "pixel")}
  if "lora" in m.llama:
    raise ConfigError("model.llama.lora: set the adapters under model.lora")
  old = dict(rank=m.lora_rank, alpha=m.lora_alpha, dropout=m.lora_dropout,
             target_modules=m.lora_targets)
  lora = schema.override(base.llama.lora or LoraConfig(),
                         {**{k: v for k, v in old.items() if v is not None}, **m.lora}, "model.lora.")
  llama = schema.override(base.llama, m.llama, "model.llama.")
  llama = dataclasses.replace(llama, lora=lora, remat=m.remat or llama.remat)
  ids = {}
  if not check_only:  # the tokenizer's vocabulary and special ids
    if tokenizer is None:
      tokenizer = tokens.load_tokenizer(m.tokenizer)
    if "vocab_size" not in m.llama:
      llama = dataclasses.replace(llama, vocab_size=max(base.llama.vocab_size, len(tokenizer)))
    special = tokens.special_token_ids(tokenizer)
    ids = dict(image_token_id=special[tokens.IMAGE], bbox_token_id=special[tokens.BBOX],
               p_open_token_id=special[tokens.P_OPEN], p_close_token_id=special[tokens.P_CLOSE],
               seg_token_id=special[tokens.SEG])
  try:
    return dataclasses.replace(base, llama=llama, **parts, **ids)
  except ValueError as e:  # FiFaConfig's cross-part checks (widths, layers, ids)
    raise ConfigError(f"model: {e}") from None


# ---------------------------------------------------------------------------
# Loading


def _apply(obj: Any, updates: dict, prefix: str = "") -> None:
  """Set fields of dataclass `obj` from a nested mapping, strictly."""
  if not isinstance(updates, dict):
    raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {updates!r}")
  hints = typing.get_type_hints(type(obj))
  fields = {f.name for f in dataclasses.fields(obj)}
  for key, value in updates.items():
    where = f"{prefix}{key}"
    if key not in fields:
      raise ConfigError(f"{where}: unknown key" + schema.suggest(str(key), fields))
    current = getattr(obj, key)
    if dataclasses.is_dataclass(current):
      _apply(current, value, where + ".")
    elif isinstance(obj, ModelConfig) and key in MODEL_PARTS and isinstance(value, dict):
      current.update(schema.check(value, hints[key], where))  # merged; checked in validate()
    else:
      setattr(obj, key, schema.check(value, hints[key], where))


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[dict]:
  """The file's layers, includes first (depth-first, in listed order)."""
  path = path.resolve()
  if path in seen:
    raise ConfigError(f"include cycle: {' -> '.join(map(str, seen + (path,)))}")
  if not path.is_file():
    raise ConfigError(f"config file {str(path)!r} does not exist")
  data = yaml.safe_load(path.read_text()) or {}
  if not isinstance(data, dict):
    raise ConfigError(f"{path}: top level must be a mapping")
  includes = data.pop("include", [])
  if isinstance(includes, str):
    includes = [includes]
  layers: list[dict] = []
  for inc in includes:
    layers += _read_yaml(path.parent / inc, seen + (path,))
  return layers + [data]


def parse_override(text: str) -> dict:
  """'a.b.c=value' -> {'a': {'b': {'c': value}}} (value parsed as YAML)."""
  if "=" not in text:
    raise ConfigError(f"override {text!r}: expected key.path=value")
  key, raw = text.split("=", 1)
  parts = [p for p in key.strip().split(".")]
  if not all(parts):
    raise ConfigError(f"override {text!r}: empty key")
  value = yaml.safe_load(raw) if raw.strip() else None
  out: dict = {}
  cur = out
  for p in parts[:-1]:
    cur = cur.setdefault(p, {})
  cur[parts[-1]] = value
  return out


def load(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
         validate: bool = True) -> Config:
  """The run config of `path` with `overrides`; `validate=False` skips the checks that
  need the models (and so jax): keys and types are checked either way."""
  cfg = Config()
  layers = _read_yaml(Path(path)) if path is not None else []
  for layer in layers:
    _apply(cfg, layer)
  for o in overrides:
    _apply(cfg, _into_mapping(cfg, o))
  return cfg.validate() if validate else cfg


def _into_mapping(cfg: Config, text: str) -> dict:
  """The update of one override.  A path that runs into a mapping field
  (`data.tasks.det=8`) sets that key and keeps the others; `data.tasks={det: 1}`
  still replaces the whole mapping."""
  update = parse_override(text)
  keys = text.split("=", 1)[0].strip().split(".")
  obj, node = cfg, update
  for key in keys[:-1]:  # a mapping reached before the last key is entered, not replaced
    current = getattr(obj, key, None) if dataclasses.is_dataclass(obj) else None
    if isinstance(current, dict) and not isinstance(obj, ModelConfig):
      node[key] = {**current, **node[key]}
      break
    if not dataclasses.is_dataclass(current):
      break
    obj, node = current, node[key]
  return update


def to_dict(cfg: Config) -> dict:
  return dataclasses.asdict(cfg)


def dump(cfg: Config) -> str:
  return yaml.safe_dump(to_dict(cfg), sort_keys=False)
