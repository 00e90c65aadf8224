"""LoRA adapters in PEFT's format, both ways.

A PEFT adapter folder is `adapter_config.json` (r, lora_alpha, target_modules, ...)
plus `adapter_model.safetensors` with keys
`base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` ([r, in]) and
`...lora_B.weight` ([out, r]).  `peft.PeftModel.from_pretrained(base, folder)` puts
it on top of the base model that `llama.save_hf` wrote.  fifa-jax's scale is
alpha / r, PEFT's without rsLoRA, so the numbers mean the same on both sides.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fifa_jax.convert import llama as llama_conv
from fifa_jax.convert import stream
from fifa_jax.convert.stream import ConversionError
from fifa_jax.models.llama import LlamaConfig, LlamaForCausalLM
from fifa_jax.models.lora import LoraConfig, lora_layers

PREFIX = "base_model.model."


def adapter_config(lora: LoraConfig, base_model_name_or_path: str | None = None) -> dict[str, Any]:
  return {
      "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora.rank, "lora_alpha": lora.alpha,
      "lora_dropout": lora.dropout, "target_modules": list(lora.target_modules),
      "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
      "modules_to_save": None, "inference_mode": True, "init_lora_weights": True,
      "layers_to_transform": None, "layers_pattern": None, "rank_pattern": {},
      "alpha_pattern": {}, "base_model_name_or_path": base_model_name_or_path, "revision": None,
  }


def lora_config_from(d: dict[str, Any]) -> LoraConfig:
  """adapter_config.json -> LoraConfig; what fifa-jax cannot express fails by name."""
  if d.get("peft_type", "LORA") != "LORA":
    raise ConversionError(f"not a LoRA adapter: peft_type={d.get('peft_type')!r}")
  for key, ok in (("use_rslora", False), ("use_dora", False), ("fan_in_fan_out", False),
                  ("bias", "none"), ("rank_pattern", {}), ("alpha_pattern", {}),
                  ("modules_to_save", None), ("layers_to_transform", None)):
    if d.get(key, ok) not in (ok, None, [] if ok is None else ok):
      raise ConversionError(f"adapter_config.json: {key}={d[key]!r} is not supported")
  targets = d["target_modules"]
  targets = [targets] if isinstance(targets, str) else targets
  return LoraConfig(rank=int(d["r"]), alpha=float(d["lora_alpha"]),
                    dropout=float(d.get("lora_dropout", 0.0)), target_modules=tuple(targets))


def save_adapter(model: LlamaForCausalLM, path: str | Path, *, dtype: Any = None,
                 base_model_name_or_path: str | None = None, progress: bool = False) -> Path:
  """Write `model`'s LoRA adapters as a PEFT adapter folder."""
  lora = model.config.lora
  if lora is None or not lora_layers(model):
    raise ConversionError("the model has no LoRA adapters to export")
  ents = [e for e in llama_conv.entries(model) if ".lora_" in e.key]
  ents = stream.prefixed(ents, PREFIX)
  path = Path(path)
  tensors = stream.export(model, ents, dtype=dtype)
  with stream.progress_bar(len(tensors), "adapter", progress) as bar:
    stream.write_safetensors(path, tensors, name="adapter_model", progress=bar)
  cfg = adapter_config(lora, base_model_name_or_path)
  (path / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
  return path


def load_with_adapter(base: str | Path, adapter: str | Path, *, progress: bool = False,
                      **kw) -> tuple[LlamaConfig, LlamaForCausalLM]:
  """An HF base folder + a PEFT adapter folder -> (config, model with that LoRA)."""
  adapter = Path(adapter)
  cfg_file = adapter / "adapter_config.json"
  if not cfg_file.exists():
    raise ConversionError(f"{adapter}: no adapter_config.json")
  lora = lora_config_from(json.loads(cfg_file.read_text()))
  base_src = stream.open_source(base)
  ad_src = stream.open_source(adapter)
  try:
    cfg = _base_config(base, base_src, lora, kw)
    llm, skipped = llama_conv.split_llm(stream.chain(base_src, ad_src))
    if skipped:
      raise ConversionError(f"unexpected keys {skipped[:5]} in {base} or {adapter}")
    model = llama_conv.load_source(llm, cfg, progress=progress).model
  finally:
    base_src.close()
    ad_src.close()
  return cfg, model


def _base_config(base: str | Path, source: stream.Source, lora: LoraConfig,
                 kw: dict) -> LlamaConfig:
  base = Path(base)
  cfg_file = (base if base.is_dir() else base.parent) / "config.json"
  if not cfg_file.exists():
    raise ConversionError(f"{base}: no config.json")
  overrides = dict(kw, lora=lora)
  if "param_dtype" not in overrides:
    overrides["param_dtype"] = llama_conv._source_dtype(source)
  return LlamaConfig.from_hf_dict(json.loads(cfg_file.read_text()), **overrides)


def save_merged(model: LlamaForCausalLM, path: str | Path, **kw) -> Path:
  """An HF folder with every adapter folded into its base weight (W + alpha/r A B)."""
  return llama_conv.save_hf(model, path, merge_lora=True, **kw)
