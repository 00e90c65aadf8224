"""The agent's YAML: which experts, and how aggregation weighs them.

  experts:
    face:     {kind: face, checkpoint: demo_out/train, faces: all}
    semantic:
      kind: semantic
      proposers:
        - {base_url: https://api.openai.com/v1, model: gpt-4o, api_key_env: OPENAI_API_KEY}
        - {base_url: http://localhost:8001/v1, model: gemini-2.0-pro, api_key_env: GEMINI_API_KEY}
      adjudicator: {base_url: http://localhost:8002/v1, model: llava-v1.6-34b}
      occlusion: mean      # mean | blur | inpaint
      max_rounds: 3
    edit:     {kind: command, command: [/opt/fakeshield/.venv/bin/python, drivers/fakeshield.py]}
    ps:       {kind: precomputed, reports: ps_reports.jsonl}
    scripted: {kind: scripted-semantic, truth: manifest.jsonl}   # offline stand-in (scripted.py)
  aggregator:                              # the prompted aggregator, for `--aggregator llm`
    endpoint: {base_url: http://localhost:8003/v1, model: llava-v1.6-34b}
    slots: {ps: edit, face: face, semantic: semantic}
  learned:                                 # the GRPO-trained aggregator, for `--aggregator learned`
    policy: runs/aggregator/policy
    methods: [edit, face, semantic]        # Method 1, 2, 3 of its prompt
    domain_methods: {editing: 1, face: 2, semantic: 3}
  accuracy: {face: 0.92, semantic: 0.71}   # development-set accuracy, for confidence weighting
  cache_dir: agent_cache                   # endpoint answers, so a rerun sends nothing

Keys are checked strictly (schema.py): a misspelt one is named, with the nearest.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any


from fifa_jax import schema
from fifa_jax.agent import semantic

EXPERT_KINDS = ("face", "semantic", "scripted-semantic", "command", "precomputed")


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
  kind: str
  checkpoint: str | None = None  # face
  faces: str = "all"  # face
  max_new_tokens: int = 160  # face
  proposers: tuple[semantic.Role, semantic.Role] | None = None  # semantic
  adjudicator: semantic.Role | None = None  # semantic
  occlusion: str = "mean"  # semantic
  max_rounds: int = 3  # semantic
  stable_iou: float = 0.9  # semantic
  command: list[str] | None = None  # command
  timeout_s: float = 3600.0  # command
  reports: str | None = None  # precomputed
  truth: str | None = None  # scripted-semantic: a manifest with label and mask (scripted.py)
  error_every: int = 0  # scripted-semantic


@dataclasses.dataclass(frozen=True)
class PromptedConfig:
  """The prompted aggregator (prompted.py): its endpoint, and which expert fills each slot."""
  endpoint: semantic.Role = semantic.Role()
  slots: dict[str, str] = dataclasses.field(
      default_factory=lambda: {"ps": "ps", "face": "face", "semantic": "semantic"})


@dataclasses.dataclass(frozen=True)
class LearnedConfig:
  """The learned aggregator (learned.py): its policy folder, which expert is Method
  1, 2, 3 of its prompt, and the method expected per domain (the tool-selection
  reward's map when `fifa agent dataset` writes training records)."""
  policy: str | None = None  # a `fifa agent train` workdir's policy/ (or `fifa convert llava --text-only`)
  methods: tuple[str, ...] = ("ps", "face", "semantic")
  domain_methods: dict[str, int] = dataclasses.field(
      default_factory=lambda: {"editing": 1, "face": 2, "semantic": 3})
  max_new_tokens: int = 256


@dataclasses.dataclass(frozen=True)
class AgentConfig:
  experts: dict[str, ExpertConfig] = dataclasses.field(default_factory=dict)
  aggregator: PromptedConfig | None = None  # for `--aggregator llm`
  learned: LearnedConfig = LearnedConfig()  # for `--aggregator learned`
  accuracy: dict[str, float] = dataclasses.field(default_factory=dict)
  cache_dir: str | None = None
  tie: str = "fake"


NEEDS = {"face": ("checkpoint",), "semantic": ("proposers", "adjudicator"), "command": ("command",),
         "precomputed": ("reports",), "scripted-semantic": ("truth",)}


def load(path: str | os.PathLike | None, data: dict[str, Any] | None = None) -> AgentConfig:
  """From a YAML file (or a dict); schema.ConfigError names a bad key."""
  if data is None:
    data = schema.read_yaml(path)
  cfg = schema.decode(AgentConfig, data)
  if not cfg.experts:
    raise schema.ConfigError("experts: name at least one expert")
  for name, e in cfg.experts.items():
    if e.kind not in EXPERT_KINDS:
      raise schema.ConfigError(f"experts.{name}.kind: {e.kind!r} is not one of {', '.join(EXPERT_KINDS)}"
                               + schema.suggest(e.kind, EXPERT_KINDS))
    for field in NEEDS[e.kind]:
      if getattr(e, field) is None:
        raise schema.ConfigError(f"experts.{name}.{field}: a {e.kind} expert needs it")
  if cfg.aggregator is not None:
    from fifa_jax.agent import prompted  # noqa: PLC0415  (kept beside the check it serves)
    bad = set(cfg.aggregator.slots) - set(prompted.SLOTS)
    if bad:
      raise schema.ConfigError(f"aggregator.slots: {sorted(bad)} are not the prompt's slots "
                               f"({', '.join(prompted.SLOTS)})")
  n = len(cfg.learned.methods)
  bad = {d: m for d, m in cfg.learned.domain_methods.items() if not 1 <= m <= n}
  if bad:
    raise schema.ConfigError(f"learned.domain_methods: {bad} name no method of 1..{n}")
  if cfg.tie not in ("fake", "real"):
    raise schema.ConfigError(f"tie: {cfg.tie!r} is not 'fake' or 'real'")
  return cfg


def llm_aggregator(cfg: AgentConfig | None):
  """The prompted aggregator of the YAML's `aggregator:` node, or None."""
  if cfg is None or cfg.aggregator is None:
    return None
  from fifa_jax.agent import prompted  # noqa: PLC0415  (only `--aggregator llm` needs it)
  return prompted.PromptedAggregator(cfg.aggregator.endpoint, cfg.aggregator.slots, cfg.cache_dir)


def learned_aggregator(cfg: AgentConfig | None, policy: str | None = None,
                       image_root: str | os.PathLike | None = None):
  """The learned aggregator of the YAML's `learned:` node (`policy` overrides its folder);
  a policy with a vision tower reads the images from `image_root` (the manifest's folder)."""
  learned_cfg = cfg.learned if cfg is not None else LearnedConfig()
  path = policy or learned_cfg.policy
  if path is None:
    raise ValueError("--aggregator learned needs a policy: --policy DIR or `learned.policy` in --config")
  if not Path(path, "fifa_jax.json").is_file():
    raise FileNotFoundError(f"policy {path!r} is not a policy folder (a `fifa agent train` "
                            "workdir's policy/, or `fifa convert llava --text-only` output)")
  from fifa_jax.agent import learned  # noqa: PLC0415  (loads jax: only `--aggregator learned`)
  return learned.LearnedAggregator(path, learned_cfg.methods, learned_cfg.max_new_tokens,
                                   image_root=image_root)


def experts(cfg: AgentConfig, base: str | os.PathLike = ".") -> list:
  """The configured experts, in the file's order.  A relative path (checkpoint, reports,
  truth) is taken as given when it exists from the working directory, else from `base`
  (the YAML's folder)."""
  from fifa_jax import api  # noqa: PLC0415  (loads jax and the model: only when a face expert is named)
  from fifa_jax.agent import experts as experts_lib  # noqa: PLC0415  (same)

  def rel(p: str) -> str:
    return str(Path(base) / p) if not Path(p).is_absolute() and not Path(p).exists() else p

  out = []
  for name, e in cfg.experts.items():
    if e.kind == "face":
      out.append(experts_lib.FaceExpert(api.FiFa.load(rel(e.checkpoint)), e.faces, name,
                                        e.max_new_tokens))
    elif e.kind == "semantic":
      sem = semantic.SemanticConfig(tuple(e.proposers), e.adjudicator, e.occlusion, e.max_rounds,
                                    e.stable_iou, cfg.cache_dir)
      out.append(experts_lib.SemanticItems(semantic.SemanticExpert(sem, name)))
    elif e.kind == "scripted-semantic":
      from fifa_jax.agent import scripted  # noqa: PLC0415  (only demos use it)
      server = scripted.ScriptedEndpoint(rel(e.truth), e.error_every)
      roles = [semantic.Role(base_url=server.url, model=m) for m in ("proposer-1", "proposer-2", "adjudicator")]
      sem = semantic.SemanticConfig(tuple(roles[:2]), roles[2], e.occlusion, e.max_rounds, e.stable_iou, None)
      out.append(experts_lib.SemanticItems(semantic.SemanticExpert(sem, name)))
    elif e.kind == "command":
      out.append(experts_lib.CommandExpert(name, e.command, e.timeout_s))
    else:
      out.append(experts_lib.PrecomputedExpert(name, rel(e.reports)))
  return out
