"""`fifa convert farl|llama|llava|sam|model|peft`: the converters on the command line.

Direction follows the source: a fifa-jax folder (with fifa_jax.json) is exported to
PyTorch/HF, anything else is imported into a fifa-jax folder.  Inputs and outputs may
be URLs (gs://...): inputs are staged into a local cache, an output is written locally
and copied up when complete, its marker file last (fifa_jax/paths.py).  Bad input (a
missing, unexpected or mis-shaped key, a missing file) prints one clear message and
exits with status 2.  Heavy imports happen inside the commands.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
from pathlib import Path
from typing import Optional

import typer

ALLOW_PICKLE = typer.Option(False, "--allow-pickle",
                            help="Let torch.load unpickle arbitrary objects (trusted files only).")
DTYPE = typer.Option(None, "--dtype", help="Store weights as this dtype (default: keep).")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress bars.")


def _guard(name: str):
  """ConversionError / missing files -> a one-line message and exit status 2."""
  def wrap(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
      from fifa_jax.convert.stream import ConversionError  # noqa: PLC0415

      # Our progress at INFO; orbax's and jax's INFO chatter stays out.
      logging.basicConfig(level=logging.WARNING, format="%(message)s")
      logging.getLogger("fifa_jax").setLevel(logging.INFO)
      try:
        with _staged(kwargs) as staged:
          return fn(*args, **staged)
      except (ConversionError, FileNotFoundError, KeyError, ValueError) as e:
        typer.echo(f"fifa convert {name}: {e}", err=True)
        raise typer.Exit(code=2) from None
    return run
  return wrap


INPUTS = ("src", "farl_path", "llama_path", "sam_path")
# Written last when an output goes up to a URL: a reader never takes a half-copied folder
# for a whole one (a model folder's marker, an HF folder's config and shard index).
MARKERS = ("fifa_jax.json", "config.json", "model.safetensors.index.json", "fifa_config.json")


@contextlib.contextmanager
def _staged(kwargs: dict):
  """The command's path arguments as local Paths: URL inputs staged in (paths.stage_in); a
  URL output written to a temporary folder and copied up when the command succeeds."""
  from fifa_jax import paths  # noqa: PLC0415  (lazy, as every import of this module)
  from fifa_jax.convert.stream import ConversionError  # noqa: PLC0415

  out = dict(kwargs)
  for key in INPUTS:
    if out.get(key) is not None:
      out[key] = paths.stage_in(out[key], key.removesuffix("_path"))
  url = out.get("out") if paths.is_url(out.get("out")) else None
  if url is None:
    if out.get("out") is not None:
      out["out"] = Path(out["out"])
    yield out
    return
  if paths.is_nonempty(url):
    raise ConversionError(f"{url} exists and is not empty; choose a new folder")
  with tempfile.TemporaryDirectory(prefix="fifa-convert-") as tmp:
    out["out"] = Path(tmp) / url.rstrip("/").rsplit("/", 1)[-1]
    yield out
    if out["out"].exists():
      paths.stage_out(out["out"], url, last=MARKERS)


def _say(msg: str) -> None:
  typer.echo(msg, err=True)


def _fresh_folder(out: Path) -> None:
  from fifa_jax.convert.stream import ConversionError  # noqa: PLC0415

  if out.exists() and any(out.iterdir()):
    raise ConversionError(f"{out} exists and is not empty; choose a new folder")


def _load_jax(src: Path, kinds: tuple[str, ...]):
  from fifa_jax.convert import checkpoint  # noqa: PLC0415
  from fifa_jax.convert.stream import ConversionError  # noqa: PLC0415

  kind = checkpoint.read_meta(src)["kind"]
  if kind not in kinds:
    raise ConversionError(f"{src} holds a {kind!r} model; this command takes {' or '.join(kinds)}")
  return checkpoint.load(src)


def register(app: typer.Typer) -> None:

  @app.command("farl")
  @_guard("farl")
  def farl_cmd(src: str = typer.Argument(..., help="FaRL .pth (or a fifa-jax 'vit' folder to export)."),
               out: str = typer.Argument(..., help="Output folder (import) or .pth/.safetensors (export)."),
               heads: Optional[int] = typer.Option(None, help="Attention heads (default width // 64)."),
               dtype: Optional[str] = DTYPE, allow_pickle: bool = ALLOW_PICKLE,
               quiet: bool = QUIET) -> None:
    """FaRL ViT-B/16 .pth (OpenAI-CLIP names under visual.) <-> fifa-jax face encoder."""
    from fifa_jax.convert import checkpoint, farl  # noqa: PLC0415

    if checkpoint.is_checkpoint(src):
      _, _, enc = _load_jax(src, ("vit",))
      farl.save_pth(enc, out, dtype=dtype)
      _say(f"wrote {out}")
      return
    _fresh_folder(out)
    cfg, enc = farl.load_pth(src, heads=heads, param_dtype=dtype, allow_pickle=allow_pickle,
                             progress=not quiet)
    checkpoint.save(enc, out, "vit", cfg)
    _say(f"wrote {out} (ViT width {cfg.width}, {cfg.layers} layers, {cfg.heads} heads)")

  @app.command("llama")
  @_guard("llama")
  def llama_cmd(src: str = typer.Argument(..., help="HF LLaMA/Vicuna folder, GLaMM/LISA checkpoint, "
                                           "or a fifa-jax 'llama'/'fifa' folder to export."),
                out: str = typer.Argument(..., help="Output folder."),
                dtype: Optional[str] = DTYPE,
                merge_lora: bool = typer.Option(False, help="Export: fold LoRA adapters into the weights."),
                shard_gb: float = typer.Option(5.0, help="Export: shard size in GB."),
                allow_pickle: bool = ALLOW_PICKLE, quiet: bool = QUIET) -> None:
    """HF LLaMA / Vicuna (or the LLM of GLaMM / LISA) <-> fifa-jax LLM."""
    from fifa_jax.convert import checkpoint, llama  # noqa: PLC0415

    _fresh_folder(out)
    if checkpoint.is_checkpoint(src):
      kind, _, model = _load_jax(src, ("llama", "fifa"))
      llm = model.llm if kind == "fifa" else model
      llama.save_hf(llm, out, dtype=dtype, merge_lora=merge_lora,
                    max_shard_bytes=int(shard_gb * 1e9), progress=not quiet)
      _say(f"wrote {out} (LlamaForCausalLM.from_pretrained loads it)")
      return
    cfg, model, skipped = llama.load(src, param_dtype=dtype, allow_pickle=allow_pickle,
                                     progress=not quiet)
    if skipped:
      _say(f"skipped {len(skipped)} non-LLM tensors: {llama.summarise(skipped)}")
    checkpoint.save(model, out, "llama", cfg)
    _say(f"wrote {out} ({cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
         f"vocab {cfg.vocab_size}, {cfg.param_dtype})")

  @app.command("llava")
  @_guard("llava")
  def llava_cmd(src: str = typer.Argument(..., help="llava-hf folder (config.json + safetensors)."),
                out: str = typer.Argument(..., help="Output fifa-jax folder."),
                text_only: bool = typer.Option(False, "--text-only",
                                               help="Keep the LLaMA alone (the CPU policy mode)."),
                dtype: Optional[str] = DTYPE, quiet: bool = QUIET) -> None:
    """llava-hf LlavaForConditionalGeneration -> the learned aggregator's policy (`fifa agent train`)."""
    from fifa_jax.convert import checkpoint, llava  # noqa: PLC0415

    _fresh_folder(out)
    cfg, model = llava.load(src, text_only=text_only, param_dtype=dtype, progress=not quiet)
    checkpoint.save(model, out, "llava", cfg)
    copied = llava.copy_tokenizer(src, out)  # the policy folder is then all `fifa agent` needs
    vision = "text only" if cfg.vision is None else (
        f"CLIP {cfg.vision.layers} layers, {cfg.num_image_tokens} image tokens")
    _say(f"wrote {out} ({vision}; LLaMA {cfg.llama.num_hidden_layers} layers, "
         f"vocab {cfg.llama.vocab_size}; tokenizer: {', '.join(copied) or 'none found, copy it in'})")

  @app.command("sam")
  @_guard("sam")
  def sam_cmd(src: str = typer.Argument(..., help="segment-anything / LISA / GLaMM checkpoint."),
              out: str = typer.Argument(..., help="Output fifa-jax folder."),
              pixel: bool = typer.Option(False, help="Also load SAM's upscaling into a SAM-variant pixel decoder."),
              hypernetwork: int = typer.Option(0, help="Which mask-token MLP becomes the query MLP."),
              heads: int = typer.Option(8, help="Attention heads of the two-way transformer."),
              dtype: Optional[str] = DTYPE, allow_pickle: bool = ALLOW_PICKLE,
              quiet: bool = QUIET) -> None:
    """SAM / GLaMM mask-decoder weights -> fifa-jax multi-task decoder (task queries fresh)."""
    from fifa_jax.convert import checkpoint, sam  # noqa: PLC0415

    _fresh_folder(out)
    cfg, model = sam.load_pth(src, pixel=pixel, hypernetwork=hypernetwork, heads=heads,
                              param_dtype=dtype, allow_pickle=allow_pickle, progress=not quiet)
    checkpoint.save(model, out, "sam", cfg)
    _say(f"wrote {out} (depth {cfg.decoder.depth}, dim {cfg.decoder.dim}; task queries D/C/M/R/A "
         f"fresh{'' if pixel else '; no pixel decoder'})")

  @app.command("model")
  @_guard("model")
  def model_cmd(src: Optional[str] = typer.Argument(None, help="Whole-model PyTorch state dict "
                                                     "(folder/.safetensors/.pth) or a fifa-jax 'fifa' folder."),
                out: str = typer.Option(..., "--out", "-o", help="Output folder."),
                config: Optional[str] = typer.Option(None, help="paper, cpu, tiny, a fifa_config.json, or a training "
                                                     "YAML (the model `fifa train` builds from it, "
                                                     "tokenizer ids included; default: the one stored "
                                                     "with the weights)."),
                farl_path: Optional[str] = typer.Option(None, "--farl", help="Assemble: FaRL .pth."),
                llama_path: Optional[str] = typer.Option(None, "--llama", help="Assemble: HF Vicuna folder."),
                sam_path: Optional[str] = typer.Option(None, "--sam", help="Assemble: SAM/GLaMM checkpoint."),
                overrides: list[str] = typer.Option([], "--set", "-s", help="With a training YAML: a "
                                                    "dotted override, as in `fifa train` (repeatable)."),
                dtype: Optional[str] = DTYPE, allow_pickle: bool = ALLOW_PICKLE,
                quiet: bool = QUIET) -> None:
    """Whole FiFa-MLLM: PyTorch state dict <-> fifa-jax, or assemble from FaRL + Vicuna + SAM."""
    from fifa_jax.convert import checkpoint, fifa  # noqa: PLC0415
    from fifa_jax.convert.stream import ConversionError  # noqa: PLC0415

    _fresh_folder(out)
    cfg = _fifa_config(config, overrides)
    parts = dict(farl_path=farl_path, llama_path=llama_path, sam_path=sam_path)
    if any(parts.values()):
      if src is not None:
        raise ConversionError("give either SRC or --farl/--llama/--sam, not both")
      if cfg is None:
        raise ConversionError("assembling needs --config (paper, cpu, tiny or a fifa_config.json)")
      model, report = fifa.assemble(cfg, allow_pickle=allow_pickle, progress=not quiet, **parts)
      _say(f"fresh: {', '.join(report['fresh'])}; skipped {len(report['skipped'])} checkpoint tensors")
      fifa.save(model, out)
    elif src is None:
      raise ConversionError("give SRC, or --farl/--llama/--sam to assemble")
    elif checkpoint.is_checkpoint(src):
      _, _, model = _load_jax(src, ("fifa",))
      fifa.save_pth(model, out, dtype=dtype, progress=not quiet)
    else:
      _, model = fifa.load_pth(src, config=cfg, dtype=dtype, allow_pickle=allow_pickle,
                               progress=not quiet)
      fifa.save(model, out)
    _say(f"wrote {out}")

  @app.command("peft")
  @_guard("peft")
  def peft_cmd(src: str = typer.Argument(..., help="fifa-jax 'llama' or 'fifa' folder with LoRA."),
               out: str = typer.Argument(..., help="Output folder."),
               merged: bool = typer.Option(False, help="Write an HF folder with the adapters merged instead."),
               base: Optional[str] = typer.Option(None, help="base_model_name_or_path to record."),
               dtype: Optional[str] = DTYPE, quiet: bool = QUIET) -> None:
    """LoRA adapters -> PEFT folder (adapter_config.json + adapter_model.safetensors), or merged HF."""
    from fifa_jax.convert import peft  # noqa: PLC0415

    _fresh_folder(out)
    kind, _, model = _load_jax(src, ("llama", "fifa"))
    llm = model.llm if kind == "fifa" else model
    if merged:
      peft.save_merged(llm, out, dtype=dtype, progress=not quiet)
    else:
      peft.save_adapter(llm, out, dtype=dtype, base_model_name_or_path=base, progress=not quiet)
    _say(f"wrote {out}")


def _fifa_config(spec: str | None, overrides: list[str] | None = None):
  from fifa_jax.convert.stream import ConversionError  # noqa: PLC0415

  yaml_spec = spec is not None and Path(spec).suffix in (".yaml", ".yml")
  if overrides and not yaml_spec:
    raise ConversionError("--set applies to a training YAML given as --config")
  if spec is None:
    return None
  import json  # noqa: PLC0415

  from fifa_jax.convert import checkpoint  # noqa: PLC0415
  from fifa_jax.models.fifa import FiFaConfig  # noqa: PLC0415

  # lazy: `--help` and the other commands load none of this
  from fifa_jax.models.fifa import PRESETS as presets
  if spec in presets:
    return presets[spec]()
  path = Path(spec)
  if not path.exists():
    raise ConversionError(f"--config {spec!r}: not a preset ({sorted(presets)}) nor a file")
  if yaml_spec:  # a training recipe: the model that `fifa train` builds
    from fifa_jax import config as config_lib  # noqa: PLC0415
    try:
      return config_lib.model_config(config_lib.load(path, overrides or []))
    except config_lib.ConfigError as e:
      raise ConversionError(f"--config {spec}: {e}") from e
  return checkpoint.config_from_dict(FiFaConfig, json.loads(path.read_text()))
