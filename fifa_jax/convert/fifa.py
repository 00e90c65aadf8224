"""The whole FiFa-MLLM <-> one PyTorch state dict, and assembly from released parts.

PyTorch key names of the whole model (there is no official FiFa release; these
follow the sources each part comes from):

  face_encoder.visual.*     FaRL / OpenAI-CLIP names (conv1, transformer.resblocks.N.attn.in_proj_weight, ...)
  box_encoder.*             levels.N.{up1, up2: ConvTranspose2d [in, out, 2, 2]; norm_up, norm:
                            LayerNorm2d; lateral: Linear}, level_convs.N (Conv2d [out, in, 3, 3]),
                            flatten, pos1, pos_norm1, pos2, pos_norm2
  llm.*                     HF LlamaForCausalLM names (llm.model.layers.N.self_attn.q_proj.weight, ...)
                            with PEFT-style adapters: llm.<module>.lora_A.weight [r, in], lora_B.weight [out, r]
  image_projector.fc{1,2}.*, box_projector.*, seg_projector.*, decoder_projector.*   Linear
  decoder.*                 segment-anything TwoWayTransformer names under decoder.transformer.,
                            decoder.pe_layer.positional_encoding_gaussian_matrix [2, D/2],
                            task queries decoder.{det,cls,mask,region,artifact}_embed [D]
  pixel_decoder.*           up1, up2 (ConvTranspose2d), norm (LayerNorm2d), query_mlp.layers.N
  det_head.*, cls_head.*    fc1, fc2 (Linear)

Every Linear is [out, in], every conv in PyTorch layout; the config travels in the
safetensors metadata (`fifa_config`, JSON) and in `fifa_config.json` beside it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from flax import nnx

from fifa_jax.convert import checkpoint, farl, sam, stream
from fifa_jax.convert import llama as llama_conv
from fifa_jax.convert.stream import ConversionError, Entry
from fifa_jax.models.fifa import COMPONENTS, FiFaConfig, FiFaMLLM

log = logging.getLogger("fifa_jax.convert")

CONFIG_FILE = "fifa_config.json"
NAMES = {"vit": "face_encoder.visual."}  # other components keep their attribute name


def entries(model: FiFaMLLM) -> list[Entry]:
  out = []
  for comp in COMPONENTS:
    sub = getattr(model, comp)
    if comp == "vit":
      ents = farl.entries(sub)
    elif comp == "llm":
      ents = llama_conv.entries(sub, lora=True)
    else:
      ents = stream.entries_for(sub, stream.torch_like)
    out += stream.prefixed(ents, NAMES.get(comp, comp + "."), (comp,))
  return out


def _config(source: stream.Source, path: Path, config: FiFaConfig | None) -> FiFaConfig:
  if config is not None:
    return config
  if "fifa_config" in source.metadata:
    return checkpoint.config_from_dict(FiFaConfig, json.loads(source.metadata["fifa_config"]))
  side = (path if path.is_dir() else path.parent) / CONFIG_FILE
  if side.exists():
    return checkpoint.config_from_dict(FiFaConfig, json.loads(side.read_text()))
  raise ConversionError(f"{path}: no FiFa config (safetensors metadata 'fifa_config' or "
                        f"{CONFIG_FILE}); pass config=")


def load_pth(path: str | Path, *, config: FiFaConfig | None = None, dtype: Any = None,
             allow_pickle: bool = False, progress: bool = False,
             seed: int = 0) -> tuple[FiFaConfig, FiFaMLLM]:
  """A whole-model PyTorch state dict (folder, .safetensors, .pth/.bin) -> (config, model).

  Strict: every weight must be there (missing / unexpected / mis-shaped keys are
  named); `dtype` None keeps the config's param_dtype, else casts to it.
  """
  path = Path(path)
  source = stream.open_source(path, allow_pickle=allow_pickle)
  try:
    cfg = _config(source, path, config)
    with stream.progress_bar(len(source.keys()), "fifa", progress) as bar:
      loaded = stream.load(lambda: FiFaMLLM(cfg, rngs=nnx.Rngs(seed)), entries, source,
                           dtype=dtype, progress=bar)
  finally:
    source.close()
  return cfg, loaded.model


def save_pth(model: FiFaMLLM, path: str | Path, *, dtype: Any = None,
             max_shard_bytes: int = 5 * 2 ** 30, progress: bool = False) -> Path:
  """The whole model as a safetensors state dict in `path` (a folder; sharded with an
  index past `max_shard_bytes`), with the config in metadata and fifa_config.json."""
  path = Path(path)
  tensors = stream.export(model, entries(model), dtype=dtype)
  cfg = json.dumps(checkpoint.config_to_dict(model.config))
  with stream.progress_bar(len(tensors), "fifa -> torch", progress) as bar:
    stream.write_safetensors(path, tensors, max_shard_bytes=max_shard_bytes,
                             metadata={"fifa_config": cfg}, progress=bar)
  (path / CONFIG_FILE).write_text(json.dumps(json.loads(cfg), indent=2) + "\n")
  return path


def assemble(config: FiFaConfig, *, farl_path: str | Path | None = None,
             llama_path: str | Path | None = None, sam_path: str | Path | None = None,
             allow_pickle: bool = False, progress: bool = False,
             seed: int = 0) -> tuple[FiFaMLLM, dict[str, list[str]]]:
  """FiFa-MLLM initialised from released parts, the rest fresh (the paper's start):
  FaRL -> face encoder, HF Vicuna / GLaMM LLM -> llm (adapters fresh), SAM / GLaMM
  mask decoder -> decoder transformer (+ pixel decoder if it is the SAM variant).

  The LLM's vocabulary grows to the config's (Vicuna's 32000 rows -> 32005, for
  FiFa's five special tokens; new rows start at the mean row, see
  `llama.resize_vocab`).  Returns the model and {"skipped": checkpoint keys not
  used, "fresh": weights initialised fresh, "resized": {key: [old rows, new rows]}}.
  """
  opened, sources, skipped = [], [], []
  resized: dict[str, list[int]] = {}
  ignore_rules = []
  model_paths: list[tuple[str, Any]] = []
  try:
    if farl_path is not None:
      raw = stream.open_source(farl_path, subkey="state_dict", allow_pickle=allow_pickle)
      opened.append(raw)
      src, skip = farl.split_visual(raw)
      sources.append(src.rename(lambda k: farl.PREFIX + k))
      skipped += skip
      model_paths.append(("vit", lambda m: stream.prefixed(farl.entries(m.vit, farl.PREFIX), "",
                                                           ("vit",))))
    if llama_path is not None:
      raw = stream.open_source(llama_path, allow_pickle=allow_pickle)
      opened.append(raw)
      src, skip = llama_conv.split_llm(raw)
      src, resized = llama_conv.resize_vocab(src, config.llama.vocab_size)
      sources.append(src)
      skipped += skip
      ignore_rules.append(llama_conv._tied_extra(config.llama))
      model_paths.append(("llm", lambda m: stream.prefixed(llama_conv.entries(m.llm, lora=False),
                                                           "", ("llm",))))
    if sam_path is not None:
      raw = stream.open_source(sam_path, subkey="state_dict", allow_pickle=allow_pickle)
      opened.append(raw)
      src, skip = sam.split_sam(raw)
      sources.append(src)
      skipped += skip
      ignore_rules.append(lambda k: k.startswith(("mask_decoder.", "prompt_encoder.")) and sam._ignore(k))
      model_paths.append(("decoder", lambda m: stream.prefixed(sam.decoder_entries(m.decoder), "",
                                                               ("decoder",))))
      if sam.is_sam_pixel(config.pixel):
        model_paths.append(("pixel_decoder", lambda m: stream.prefixed(
            sam.pixel_entries(m.pixel_decoder), "", ("pixel_decoder",))))
    if not sources:
      raise ConversionError("give at least one of farl_path, llama_path, sam_path")
    source = stream.chain(*sources)

    def ents(m):
      return [e for _, fn in model_paths for e in fn(m)]

    with stream.progress_bar(len(source.keys()), "assemble", progress) as bar:
      loaded = stream.load(lambda: FiFaMLLM(config, rngs=nnx.Rngs(seed)), ents, source,
                           ignore=lambda k: any(r(k) for r in ignore_rules), progress=bar)
  finally:
    for raw in opened:
      raw.close()
  fresh = sorted({"llm LoRA adapters" if p[-1] in ("lora_a", "lora_b") else stream.path_str(p[:2])
                  for p in loaded.fresh})
  log.info("assembled FiFa-MLLM from %s; fresh: %s", [c for c, _ in model_paths], fresh)
  if resized:
    log.info("grew the LLM vocabulary: %s", resized)
  return loaded.model, {"skipped": skipped + loaded.ignored, "fresh": fresh, "resized": resized}


def save(model: FiFaMLLM, path: str | Path) -> Path:
  """The fifa-jax (orbax) side: see checkpoint.py for the folder layout."""
  return checkpoint.save(model, path, "fifa", model.config)


def restore(path: str | Path) -> tuple[FiFaConfig, FiFaMLLM]:
  return checkpoint.restore(path, lambda c: FiFaMLLM(c, rngs=nnx.Rngs(0)), FiFaConfig, kind="fifa")
