"""The `fifa` command: one entry point for annotation, data, training, eval,
inference and weight conversion.

Subcommands import their heavy dependencies lazily, so `fifa --help` is quick.
Those that need MediaPipe (`fifa prep ...`) run data_prep in its own
environment (.venv-prep) as a subprocess.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from fifa_jax import prep_env


app = typer.Typer(
    name="fifa",
    help="Fake-in-Facext (FiFa) in JAX: annotate faces, build FiFa-11 data, train, "
         "evaluate, ask a model about a face, convert weights.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Build and inspect FiFa-11 datasets (ArrayRecord shards).",
                       no_args_is_help=True)
convert_app = typer.Typer(help="Convert weights to and from PyTorch / Hugging Face.",
                          no_args_is_help=True)
agent_app = typer.Typer(help="Deepfake-Agent: forensic experts' reports, aggregated into one verdict.",
                        no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(convert_app, name="convert")
app.add_typer(agent_app, name="agent")


# ---------------------------------------------------------------------------
# prep: the annotator, in .venv-prep


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                      "help_option_names": []},
    add_help_option=False,
)
def prep(ctx: typer.Context) -> None:
  """FiFa-Annotator: landmarks, face parsing, Region Masks, artifact concepts, boxes (runs in .venv-prep; `fifa prep --help` for more)."""
  run_prep(ctx.args)


def run_prep(args: list[str], name: str = "fifa prep") -> None:
  """Run `python -m data_prep.cli ARGS` in .venv-prep and exit with its status."""
  cmd, env = prep_env.prep_command(args)
  if not Path(cmd[0]).exists():
    typer.echo(f"{name}: the data_prep environment is missing ({cmd[0]}); "
               "run `make prep-env` or set FIFA_PREP_PYTHON.", err=True)
    raise typer.Exit(code=2)
  if os.environ.get("FIFA_PREP_VERBOSE"):
    raise typer.Exit(code=subprocess.call(cmd, env=env))
  proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, bufsize=1)
  for line in proc.stderr:
    if not prep_env.MEDIAPIPE_NOISE.match(line):
      sys.stderr.write(line)
  raise typer.Exit(code=proc.wait())


# ---------------------------------------------------------------------------
# FICT


@app.command()
def fict(
    dump: bool = typer.Option(False, "--dump", help="Print the whole tree, indented."),
    concept: Optional[str] = typer.Option(None, help="Show one concept."),
) -> None:
  """The Facial Image Concept Tree (184 concepts, 8 levels)."""
  # lazy: `--help` and the other commands load none of this
  from fifa_jax import fict as fict_lib

  args = (["--dump"] if dump else []) + (["--concept", concept] if concept else [])
  raise typer.Exit(code=fict_lib.main(args))


@app.command()
def params(
    config: str = typer.Option("paper", help="Model preset: paper (FaRL ViT-B/16 + Vicuna-7B), cpu or tiny."),
) -> None:
  """Parameter count per FiFa-MLLM component, from shapes only (nothing allocated)."""
  # lazy: `--help` and the other commands load none of this
  from fifa_jax.models import fifa as fifa_model

  presets = fifa_model.PRESETS
  if config not in presets:
    typer.echo(f"fifa params: unknown --config {config!r}; choose from {sorted(presets)}", err=True)
    raise typer.Exit(code=2)
  counts = fifa_model.param_counts(presets[config]())
  width = max(map(len, counts))
  for name, n in counts.items():
    typer.echo(f"{name:<{width}}  {n:>15,}")


# ---------------------------------------------------------------------------
# Data, training, evaluation, inference.


@data_app.command(
    "synth",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                      "help_option_names": []},
    add_help_option=False,
)
def data_synth(ctx: typer.Context) -> None:
  """Synthetic forgeries with known artifact masks from offline real faces (runs in .venv-prep; `fifa data synth --help`)."""
  run_prep(["synth", *ctx.args], "fifa data synth")


@data_app.command("build")
def data_build(
    src: Path = typer.Argument(..., help="folder with manifest.jsonl (from `fifa data synth` or `fifa prep dffd`)"),
    annotations: Path = typer.Option(..., "--annotations", "-a",
                                     help="the annotator's output: ANN/<image path>.npz (`fifa prep batch --out`)"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (masks/, qa/<split>/, build.json)"),
    explainer: str = typer.Option("offline", help="offline (template explainer) or llm (FIFA_LLM_BASE_URL, "
                                  "FIFA_LLM_MODEL, FIFA_LLM_API_KEY; cached under OUT/explain_cache)"),
    images_per_unit: int = typer.Option(64, help="images per resumable unit (one mask shard + one QA shard)"),
    max_region: Optional[int] = typer.Option(None, help="at most this many R- parents per image (random, seeded)"),
    max_box: Optional[int] = typer.Option(None, help="at most this many B- parent boxes per image"),
    seed: int = typer.Option(0, help="prompt paraphrases and caps"),
    quiet: bool = typer.Option(False, help="no progress bar"),
) -> None:
  """Images + annotations -> FiFa-11 ArrayRecord shards (all tasks), resumable."""
  from data_prep import build  # lazy: the build side of the data contract
  try:
    s = build.build(src, annotations, out, explainer=explainer, images_per_unit=images_per_unit, seed=seed,
                max_region=max_region, max_box=max_box, progress=not quiet)
  except (build.BuildError, FileNotFoundError, ValueError) as e:
    typer.echo(f"fifa data build: error: {e}", err=True)
    raise typer.Exit(code=2)
  n = sum(sum(c.values()) for c in s["counts"].values())
  typer.echo(f"{s['images_in_store']}/{s['images']} images, {n} records in {s['units']} units "
             f"({s['units_done_before']} done before), {s['failures_this_run']} failures this run "
             f"({s['failures_log']}); explainer {s['explainer_usage']}; {s['seconds']} s -> {out}")


@data_app.command("stats")
def data_stats(
    build_dir: Path = typer.Argument(..., metavar="DIR", help="a `fifa data build` output folder"),
    check: bool = typer.Option(False, help="also check every Loc./AGE record: [SEG] count = mask count, masks non-empty"),
) -> None:
  """Per-task, per-split counts (as Table 2)."""
  # lazy: `--help` and the other commands load none of this
  from rich.console import Console
  from rich.table import Table

  # lazy: `--help` and the other commands load none of this
  from fifa_jax.data import stats
  try:
    per_split, sources = stats.count(build_dir)
  except FileNotFoundError as e:
    typer.echo(f"fifa data stats: error: {e}", err=True)
    raise typer.Exit(code=2)
  rows = stats.table(per_split, sources)
  t = Table(title=f"FiFa-11 records in {build_dir}")
  for i, h in enumerate(rows[0]):
    t.add_column(h, justify="left" if i < 2 else "right")
  for r in rows[1:-1]:
    t.add_row(*r)
  t.add_section()
  t.add_row(*rows[-1])
  Console(width=120).print(t)
  segs = stats.seg_table(stats.seg_counts(build_dir, "train"))
  if len(segs) > 1:  # every [SEG] gets its mask in training: this is what the decoder sees
    t = Table(title="[SEG]s per record (train)")
    for i, h in enumerate(segs[0]):
      t.add_column(h, justify="left" if i == 0 else "right")
    for r in segs[1:]:
      t.add_row(*r)
    Console(width=120).print(t)
  if check:
    res = stats.check_masks(build_dir)
    for rid, why in res["bad"][:10]:
      typer.echo(f"  bad: {rid}: {why}", err=True)
    typer.echo(f"mask check: {res['checked']} Loc./AGE records, {len(res['bad'])} bad")
    if res["bad"]:
      raise typer.Exit(code=1)


@data_app.command("subset")
def data_subset(
    src: Path = typer.Argument(..., help="a `fifa data build` output folder"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (masks/, qa/<split>/)"),
    fakes: int = typer.Option(2, help="fake images to take"),
    reals: int = typer.Option(1, help="real images to take"),
    per_task: int = typer.Option(1, help="records per task and image"),
    max_concepts: Optional[int] = typer.Option(6, help="only fakes whose image-level answer grounds at most "
                                               "this many concepts (short answers); 0: no limit"),
    size: Optional[int] = typer.Option(None, help="resize images, masks and boxes to SIZE x SIZE"),
    split: str = typer.Option("train", help="the split to take records from (and to write)"),
    archive: Optional[Path] = typer.Option(None, help="also write the subset as one small zip "
                                           "(fifa_jax.data.subset.from_archive reads it back)"),
) -> None:
  """A few images and their records as a build of its own: train on it until the model
  reproduces them (the overfitting check; docs/learning.md)."""
  # lazy: `--help` and the other commands load none of this
  from fifa_jax.data import subset
  try:
    s = subset.subset(src, out, fakes=fakes, reals=reals, per_task=per_task,
                 max_concepts=max_concepts or None, size=size, split=split)
  except (FileNotFoundError, ValueError, KeyError) as e:
    typer.echo(f"fifa data subset: error: {e}", err=True)
    raise typer.Exit(code=2)
  if archive:
    subset.to_archive(out, archive)
  typer.echo(f"{s['total']} records of {len(s['images'])} images ({', '.join(s['images'])}) -> {out}"
             + (f" and {archive}" if archive else ""))


@data_app.command("show")
def data_show(
    shard: Path = typer.Argument(..., help="a QA shard (OUT/qa/<split>/qa-*.array_record)"),
    index: int = typer.Argument(..., help="record position in the shard"),
    out: Path = typer.Option(..., "--out", "-o", help="output PNG"),
    masks: Optional[Path] = typer.Option(None, help="mask store folder (default: the build's masks/)"),
) -> None:
  """Draw one record's prompt, answer and masks."""
  # lazy: `--help` and the other commands load none of this
  from fifa_jax.data import show
  try:
    rec = show.show(shard, index, out, masks)
  except (FileNotFoundError, IndexError, KeyError, ValueError, OSError) as e:
    typer.echo(f"fifa data show: error: {e}", err=True)
    raise typer.Exit(code=2)
  typer.echo(f"{rec.record_id} ({rec.task}, {len(rec.seg_concepts)} masks) -> {out}")


@data_app.command("adapt")
def data_adapt(
    kind: str = typer.Argument(..., help="dd-vqa or dfa-instruct"),
    annotations: Path = typer.Argument(..., metavar="JSON", help="the dataset's annotation file (one split)"),
    images: Path = typer.Option(..., help="folder the JSON's image names are relative to"),
    out: Path = typer.Option(..., "--out", "-o", help="output build folder (masks/, qa/<split>/)"),
    split: str = typer.Option(..., help="train, dev or test"),
) -> None:
  """DD-VQA / DFA-Instruct style data -> FiFa records (text-only i-toe; layouts in docs/data.md)."""
  # lazy: `--help` and the other commands load none of this
  from fifa_jax.data import adapters
  try:
    s = adapters.adapt(kind, annotations, images, out, split)
  except (adapters.AdapterError, FileNotFoundError, ValueError) as e:
    typer.echo(f"fifa data adapt: error: {e}", err=True)
    raise typer.Exit(code=2)
  typer.echo(f"{kind}: {s['records']} records over {s['images']} images -> {out}")


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="YAML recipe (configs/); `include:` bases apply first."),
    workdir: str = typer.Option(..., "--workdir", "-w",
                                 help="Run folder: checkpoints/, metrics.jsonl, tb/, config.yaml. "
                                      "An existing run resumes from its latest checkpoint."),
    overrides: list[str] = typer.Option([], "--set", "-s",
                                        help="Dotted override, e.g. --set train.steps=10 (repeatable; "
                                             "applied after the files, in order)."),
    print_config: bool = typer.Option(False, "--print-config",
                                      help="Print the resolved configuration and exit."),
) -> None:
  """Train FiFa-MLLM on a device mesh (grain pipeline, orbax checkpoints, exact resume).

  Exit status: 0 done, 2 bad configuration, 3 stopped on non-finite losses,
  143 preempted (SIGTERM) after a final save.
  """
  # lazy: `--help` and the other commands load none of this
  from fifa_jax import config as config_lib

  try:
    cfg = config_lib.load(config, overrides)
  except config_lib.ConfigError as e:
    typer.echo(f"fifa train: config error: {e}", err=True)
    raise typer.Exit(code=2)
  if print_config:
    typer.echo(config_lib.dump(cfg))
    raise typer.Exit(code=0)
  if "://" not in workdir and Path(workdir).exists() and not Path(workdir).is_dir():
    typer.echo(f"fifa train: error: --workdir {workdir!r} is a file, not a folder", err=True)
    raise typer.Exit(code=2)
  # lazy: `--help` and the other commands load none of this
  from fifa_jax.data.records import ShardError
  from fifa_jax.train import loop

  try:
    status = loop.train(cfg, workdir)
  except (FileNotFoundError, NotADirectoryError, ShardError) as e:  # a missing or cut shard, ...
    typer.echo(f"fifa train: error: {e}", err=True)
    raise typer.Exit(code=2)
  raise typer.Exit(code=status)


MESH_HELP = ("Shard the model over this host's devices: data=N,fsdp=N,tensor=N by the training's "
             "logical-axis rules (one size may be -1). Default: eval replicates the model on every local "
             "device; infer uses one device.")


def _mesh(spec: Optional[str]):
  """The --mesh option as a Mesh over this host's devices, or None."""
  if not spec:
    return None
  # lazy: jax loads only for the commands that need it
  import jax
  from fifa_jax import mesh as mesh_lib
  return mesh_lib.make_mesh(**mesh_lib.parse_mesh(spec), devices=jax.local_devices())


@app.command("eval")
def evaluate(
    checkpoint: str = typer.Option(..., help="Training workdir, WORKDIR/checkpoints/<step>, or a `fifa convert model` folder (local or gs://)."),
    data: str = typer.Option(..., help="Shards from `fifa data build` (qa/<split>/<task>-*.array_record + masks/; local or gs://)."),
    split: str = typer.Option("test", help="train, dev or test."),
    out: str = typer.Option(..., help="Folder for report.md/json, predictions.jsonl and overlays/."),
    layout: str = typer.Option("fifa-bench", help="fifa-bench (Table 3), dd-vqa (Table 4) or dfa-bench (Table 5)."),
    tasks: Optional[str] = typer.Option(None, help="Comma-separated tasks (default: the layout's)."),
    max_per_task: Optional[int] = typer.Option(
        None, help="Evaluate at most this many records per task, evenly spaced over the split's."),
    batch_size: int = typer.Option(8, help="Per-host batch (rounded up to the local devices)."),
    max_new_tokens: Optional[int] = typer.Option(
        None, help="Answer length limit (default: the longest reference answer evaluated, plus a margin)."),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer folder (default: the checkpoint's)."),
    param_dtype: Optional[str] = typer.Option(None, help="Weights' dtype for decoding: float32, bfloat16 or float16 (default: the model's compute dtype, bf16 for the paper preset)."),
    mesh: Optional[str] = typer.Option(None, help=MESH_HELP),
) -> None:
  """FiFa-Bench / DD-VQA / DFA-Bench evaluation, data parallel over devices and hosts."""
  # lazy: `--help` and the other commands load none of this
  import tempfile
  from fifa_jax import paths
  from fifa_jax.eval import bench
  from fifa_jax.infer import load as load_lib

  remote_out = out if paths.is_url(out) else None  # written locally, copied up at the end
  local_out = tempfile.mkdtemp(prefix="fifa-eval-") if remote_out else out
  try:
    loaded = load_lib.load(checkpoint, tokenizer, param_dtype=param_dtype, mesh=_mesh(mesh))
    result = bench.evaluate(loaded, str(paths.stage_in(data, "--data")), split, local_out,
                            layout=layout, tasks=tasks.split(",") if tasks else None,
                            max_per_task=max_per_task, batch_size=batch_size,
                            max_new_tokens=max_new_tokens)
    if result and remote_out:
      paths.stage_out(local_out, remote_out, last=("report.json",))
  except (load_lib.CheckpointError, FileNotFoundError, NotADirectoryError, ValueError, RuntimeError) as e:
    typer.echo(f"fifa eval: error: {e}", err=True)
    raise typer.Exit(code=2)
  if result:
    typer.echo((Path(local_out) / "report.md").read_text())
    typer.echo(f"wrote {out}/report.md, report.json, predictions.jsonl and overlays/")


@app.command()
def infer(
    checkpoint: str = typer.Option(..., help="Training workdir, WORKDIR/checkpoints/<step>, or a `fifa convert model` folder."),
    image: str = typer.Option(..., help="Face image (any format OpenCV reads), or a folder or glob of them, local or gs:// "
                                         "(then OUT/answers.jsonl: one line per image and task, resumable)."),
    task: str = typer.Option(..., help="det, cls, i-loc, r-loc, b-loc, i-toe, r-toe, b-toe, i-age, r-age, b-age, "
                                       "or all (one batch; needs --region and --box; writes OUT/<task>/)."),
    out: str = typer.Option(..., help="Folder (local or gs://) for answer.json and overlay.png (answers.jsonl for many images)."),
    region: Optional[str] = typer.Option(None, help="FICT concept, for r- tasks."),
    box: Optional[str] = typer.Option(None, help="x1,y1,x2,y2 in image pixels, for b- tasks."),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer folder (default: the checkpoint's)."),
    max_new_tokens: int = typer.Option(128, help="Answer length limit."),
    param_dtype: Optional[str] = typer.Option(None, help="Weights' dtype for decoding: float32, bfloat16 or float16 (default: the model's compute dtype, bf16 for the paper preset)."),
    batch_size: int = typer.Option(8, help="Questions per generation (many images)."),
    overlays: bool = typer.Option(False, "--overlays", help="Many images: also write OUT/overlays/<image>.<task>.png."),
    rle: str = typer.Option("fifa", help="Mask RLE in the JSON: fifa (row-major runs) or coco (pycocotools' compressed)."),
    progress: bool = typer.Option(True, help="Show a progress bar (many images)."),
    faces: str = typer.Option("none", help="Photos: none (the image is a face crop, as in training), "
                                           "largest (find the faces, answer about the largest), or all "
                                           "(each face; OUT/face-<k>/). Masks and boxes stay in the photo's pixels."),
    mesh: Optional[str] = typer.Option(None, help=MESH_HELP),
) -> None:
  """Ask a trained model about one face (prints the answer, writes JSON and a mask overlay),
  or about every face of a folder or glob (writes OUT/answers.jsonl)."""
  from fifa_jax import paths  # lazy: `--help` and the other commands load none of this

  remote_out = out if paths.is_url(out) else None  # written to a local copy, copied up at the end
  if remote_out:
    out = str(paths.local_copy_path(remote_out))
  try:
    image = paths.stage_in_pattern(image, "--image")
    _infer(checkpoint, image, task, out, region, box, tokenizer, max_new_tokens, param_dtype,
           batch_size, overlays, rle, progress, faces, mesh)
    if remote_out:
      paths.stage_out(out, remote_out, last=("answers.jsonl", "answer.json"))
  except paths.PathError as e:
    typer.echo(f"fifa infer: error: {e}", err=True)
    raise typer.Exit(code=2)
  if remote_out:
    typer.echo(f"copied {out} to {remote_out}")


def _infer(checkpoint, image, task, out, region, box, tokenizer, max_new_tokens, param_dtype,
           batch_size, overlays, rle, progress, faces, mesh) -> None:
  """`fifa infer` on local paths."""
  # lazy: `--help` and the other commands load none of this
  from fifa_jax.infer import load as load_lib
  from fifa_jax.infer import predict
  from fifa_jax.infer import run as infer_run

  if infer_run.is_many(image):
    try:
      counts = infer_run.run_many(checkpoint, image, task.lower(), out, region=region,
                                  box=infer_run.parse_box(box), tokenizer=tokenizer,
                                  max_new_tokens=max_new_tokens, param_dtype=param_dtype,
                                  batch_size=batch_size, overlays=overlays, rle=rle, progress=progress,
                                  faces=faces.lower(), mesh=_mesh(mesh))
    except (predict.QueryError, load_lib.CheckpointError, ValueError, FileNotFoundError) as e:
      typer.echo(f"fifa infer: error: {e}", err=True)
      raise typer.Exit(code=2)
    typer.echo(f"{counts['answered']} answered, {counts['failed']} failed (their lines say why), "
               f"{counts['skipped']} already in {out}/answers.jsonl")
    return
  try:
    results = infer_run.run(checkpoint, image, task.lower(), out, region=region,
                            box=infer_run.parse_box(box), tokenizer=tokenizer,
                            max_new_tokens=max_new_tokens, param_dtype=param_dtype, rle=rle,
                            faces=faces.lower(), mesh=_mesh(mesh))
  except (predict.QueryError, load_lib.CheckpointError, ValueError, FileNotFoundError) as e:
    typer.echo(f"fifa infer: error: {e}", err=True)
    raise typer.Exit(code=2)
  for result in results:
    face = result.get("face")
    where = "/".join([out] + ([f"face-{face['index']}"] if face and faces.lower() == "all" else [])
                     + ([result["task"]] if task.lower() == "all" else []))
    if face:
      x0, y0, side = face["crop"]
      typer.echo(f"face {face['index']} (crop {side}x{side} px at {x0},{y0}, detector score {face['score']:.2f}):")
    typer.echo(f"[{result['task']}] {result['answer']}")
    for g in result["grounded"]:
      typer.echo(f"  [SEG] {g['phrase']!r} -> {g['concept']}: {g['area']} px, score {g['score']:.2f}")
    typer.echo(f"  det head: fake {result['det_probs']['fake']:.3f}; wrote {where}/answer.json and overlay.png")


@app.command()
def plan(
    config: str = typer.Option(..., help="Recipe YAML (configs/...)."),
    overrides: list[str] = typer.Option([], "--set", help="key.path=value (YAML), repeatable."),
    devices: Optional[int] = typer.Option(None, help="Devices to plan for (default: the recipe's mesh, data=1 when -1)."),
    chip: Optional[str] = typer.Option(None, help="h800, h100, h200, v5e or v5p (default: from the recipe's name, else h100)."),
    memory_gib: Optional[float] = typer.Option(None, help="Memory per device to plan within (default: the chip's), e.g. to keep headroom."),
) -> None:
  """Compile the recipe's train step ahead of time on fake CPU devices (nothing allocated) and
  print per device: memory, model FLOPs, collectives and a roofline bound; exit 1 if it does not fit."""
  import dataclasses  # lazy, as the rest: `--help` loads none of this

  from fifa_jax import config as config_lib  # jax-free: the device count is set below, first

  try:
    cfg = config_lib.load(config, overrides, validate=False)  # the mesh, before jax starts
  except config_lib.ConfigError as e:
    typer.echo(f"fifa plan: config error: {e}", err=True)
    raise typer.Exit(code=2)
  known = [s for s in (cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor) if s != -1]
  n = devices or math.prod(known)
  name = (chip or next((c for c in ("v5e", "v5p", "h800", "h200") if c in cfg.name), "h100")).lower()
  if "jax" not in sys.modules:  # the fake devices must be set before jax starts
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
    os.environ["JAX_PLATFORMS"] = "cpu"
  # lazy: jax starts here, after XLA_FLAGS is set
  import jax
  from fifa_jax.train import plan as plan_lib

  if name not in plan_lib.CHIPS:
    typer.echo(f"fifa plan: unknown --chip {name!r}; choose from {', '.join(plan_lib.CHIPS)}", err=True)
    raise typer.Exit(code=2)
  if jax.device_count() != n:
    typer.echo(f"fifa plan: error: jax already started with {jax.device_count()} devices, not {n}", err=True)
    raise typer.Exit(code=2)
  try:
    cfg.validate()
    target = plan_lib.CHIPS[name]
    if memory_gib is not None:
      target = dataclasses.replace(target, memory_gib=memory_gib)
    result = plan_lib.plan(cfg, target)
  except config_lib.ConfigError as e:
    typer.echo(f"fifa plan: config error: {e}", err=True)
    raise typer.Exit(code=2)
  except plan_lib.PlanError as e:
    typer.echo(f"fifa plan: error: {e}", err=True)
    raise typer.Exit(code=2)
  typer.echo(plan_lib.format_plan(result))
  if not result["fits"]:
    typer.echo(f"fifa plan: {cfg.name} needs {result['total_gib']:.1f} GiB per device, more than a "
               f"{result['chip']}'s {result['chip_gib']:.1f} GiB: raise mesh.fsdp, set model.remat=true "
               "or train.grad_accum, or lower train.batch_size", err=True)
    raise typer.Exit(code=1)


@app.command()
def chat(
    checkpoint: str = typer.Option(..., help="Training workdir, WORKDIR/checkpoints/<step>, or a `fifa convert model` folder."),
    image: str = typer.Option(..., help="The face to talk about."),
    out: str = typer.Option("fifa_chat", help="Folder for each turn's overlay (turn-N.png)."),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer folder (default: the checkpoint's)."),
    max_new_tokens: int = typer.Option(128, help="Answer length limit."),
    param_dtype: Optional[str] = typer.Option(None, help="Weights' dtype: float32, bfloat16 or float16 (default: the compute dtype)."),
) -> None:
  """Questions in turn about one image. Type a question, or a task: `det`, `i-age`,
  `r-loc nose`, `b-toe 10,20,90,110`; `quit` (or an empty line at the end of input) ends."""
  # lazy: `--help` and the other commands load none of this
  from fifa_jax import api, tokens
  from fifa_jax.infer import load as load_lib
  from fifa_jax.infer import run as infer_run

  try:
    rgb = api.to_rgb(image)  # the image first: a bad one fails before the model loads
    model = api.FiFa.load(checkpoint, tokenizer=tokenizer, dtype=param_dtype, max_new_tokens=max_new_tokens)
  except (api.QueryError, load_lib.CheckpointError, ValueError, FileNotFoundError) as e:
    typer.echo(f"fifa chat: error: {e}", err=True)
    raise typer.Exit(code=2)
  conversation = model.chat(rgb)
  interactive = sys.stdin.isatty()
  typer.echo(f"fifa chat: {model.loaded.source}; ask about {image} (a question, or a task such as "
             "`i-loc`, `r-age nose`, `b-toe x1,y1,x2,y2`; `quit` ends)")
  turn = 0
  while True:
    try:
      line = input("you> " if interactive else "")
    except EOFError:
      break
    line = line.strip()
    if line.lower() in ("quit", "exit", ":q"):
      break
    if not line:
      continue
    word, _, rest = line.partition(" ")
    kwargs: dict = {"question": line}
    if word.lower() in tokens.TASKS:
      level = tokens.task_level(word.lower())
      kwargs = {"task": word.lower()}
      try:
        if level == "region":
          kwargs["region"] = rest.strip() or None
        elif level == "box":
          kwargs["box"] = infer_run.parse_box(rest.strip() or None)
      except api.QueryError as e:
        typer.echo(f"  {e}")
        continue
    try:
      answer = conversation.ask(**kwargs)
    except api.QueryError as e:  # a bad turn is said and skipped; the chat goes on
      typer.echo(f"  {e}")
      continue
    turn += 1
    typer.echo(f"fifa> {answer.plain_text}")
    typer.echo(f"      (det head: fake {answer.det_probs['fake']:.2f})")
    if answer.grounded:
      path = answer.save_overlay(Path(out) / f"turn-{turn}.png")
      for g in answer.grounded:
        typer.echo(f"      [SEG] {g.phrase!r} -> {g.concept}: {int(g.mask.sum())} px")
      typer.echo(f"      overlay: {path}")


@app.command()
def serve(
    checkpoint: str = typer.Option(..., help="Training workdir, WORKDIR/checkpoints/<step>, or a `fifa convert model` folder."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (127.0.0.1: this machine only)."),
    port: int = typer.Option(8000, help="TCP port."),
    tokenizer: Optional[str] = typer.Option(None, help="Tokenizer folder (default: the checkpoint's)."),
    max_new_tokens: int = typer.Option(128, help="Answer length limit."),
    param_dtype: Optional[str] = typer.Option(None, help="Weights' dtype: float32, bfloat16 or float16 (default: the compute dtype)."),
    max_batch: int = typer.Option(8, help="Questions answered together in one generation."),
    max_waiting: int = typer.Option(64, help="Questions queued before the server answers 503."),
    max_body_mb: float = typer.Option(16.0, help="Largest request body, MiB."),
    max_side: int = typer.Option(4096, help="Largest image side, pixels."),
    faces: str = typer.Option("none", help="Default of a request's `faces`: none (images are face crops), "
                                           "largest or all (find the faces of photos first)."),
    sample: Optional[str] = typer.Option(None, help="An image the web page offers as its sample face."),
) -> None:
  """An HTTP JSON API (POST /ask: image + task or question; GET /health, /info) and a web page at /."""
  # lazy: `--help` and the other commands load none of this
  from fifa_jax import api, serve as serve_lib
  from fifa_jax.infer import faces as faces_lib
  from fifa_jax.infer import load as load_lib

  try:
    faces_lib.check_mode(faces.lower())
    if sample is not None and not Path(sample).is_file():
      raise FileNotFoundError(f"--sample {sample!r} does not exist")
    model = api.FiFa.load(checkpoint, tokenizer=tokenizer, dtype=param_dtype, max_new_tokens=max_new_tokens)
  except (load_lib.CheckpointError, ValueError, FileNotFoundError) as e:
    typer.echo(f"fifa serve: error: {e}", err=True)
    raise typer.Exit(code=2)
  limits = serve_lib.Limits(max_body_bytes=int(max_body_mb * 2**20), max_side=max_side,
                            max_batch=max_batch, max_waiting=max_waiting, faces=faces.lower())
  typer.echo(f"fifa serve: {model.loaded.source} on http://{host}:{port} (the web page at /; "
             "POST /ask, GET /health, GET /info)")
  serve_lib.serve(model, host, port, limits, sample)


# ---------------------------------------------------------------------------
# agent: Deepfake-Agent (docs/agent.md)

AGENT_CONFIG_HELP = "Agent YAML: the experts and their endpoints (docs/agent.md)."
AGGREGATOR_HELP = ("Aggregators, comma-separated: vote, confidence, llm (the YAML's prompted aggregator), "
                   "learned (the GRPO-trained policy: --policy or the YAML's learned.policy).")


def _agent_errors():
  # lazy: `--help` and the other commands load none of this
  from fifa_jax import schema
  from fifa_jax.agent.reports import ReportError
  from fifa_jax.infer import load as load_lib
  from fifa_jax.infer import predict
  return (schema.ConfigError, ReportError, load_lib.CheckpointError, predict.QueryError,
          ValueError, FileNotFoundError)


def _aggregators(names: str) -> list[str]:
  from fifa_jax.agent import evaluate  # lazy: as above
  chosen = [n.strip() for n in names.split(",") if n.strip()]
  for n in chosen:
    if n not in evaluate.AGGREGATORS:
      raise ValueError(f"--aggregator {n!r} is not one of {', '.join(evaluate.AGGREGATORS)}")
  return chosen


@agent_app.command("run")
def agent_run(
    image: str = typer.Option(..., help="The image to judge (a photo: faces are found by the face expert)."),
    config: str = typer.Option(..., help=AGENT_CONFIG_HELP),
    out: str = typer.Option(..., help="Folder for reports.jsonl, verdict.json and evidence.png."),
    aggregator: str = typer.Option("vote,confidence", help=AGGREGATOR_HELP),
    policy: Optional[str] = typer.Option(None, help="The learned aggregator's policy folder (a `fifa agent train` workdir's policy/)."),
) -> None:
  """One image: each expert's report, the verification rounds, each aggregator's verdict."""
  from fifa_jax.agent import build, run as agent_run_lib  # lazy: as above

  try:
    if not Path(image).is_file():
      raise FileNotFoundError(f"--image {image!r} does not exist")
    cfg = build.load(config)
    aggregators = _aggregators(aggregator)
    result = agent_run_lib.run_one(build.experts(cfg, Path(config).parent), image, out, aggregators,
                                   cfg.accuracy, cfg.tie,
                                   build.llm_aggregator(cfg) if "llm" in aggregators else None,
                                   build.learned_aggregator(cfg, policy, Path(manifest).parent)
                               if "learned" in aggregators else None)
  except _agent_errors() as e:
    typer.echo(f"fifa agent run: error: {e}", err=True)
    raise typer.Exit(code=2)
  for r in result["reports"]:
    p = f", p_fake {r.p_fake:.3f}" if r.p_fake is not None else ""
    said = r.text or r.meta.get("reason", "")
    typer.echo(f"[{r.expert}] {r.label}{p}: {said[:300]}{'...' if len(said) > 300 else ''}")
    for rnd in r.meta.get("rounds", []):
      typer.echo(f"    round {rnd['round']}: {rnd['decision']}"
                 + (f", {rnd['verification']}" if "verification" in rnd else "")
                 + (f", box {rnd['box']}" if rnd.get("box") else ""))
    if "stop" in r.meta:
      typer.echo(f"    stopped: {r.meta['stop']}")
  for name, v in result["verdicts"].items():
    p = f" (p_fake {v['p_fake']:.3f})" if v["p_fake"] is not None else ""
    typer.echo(f"verdict by {name}: {v['label']}{p}")
  typer.echo(f"wrote {out}/reports.jsonl, verdict.json, evidence.png")


@agent_app.command("reports")
def agent_reports(
    manifest: str = typer.Option(..., help="JSONL, one image per line: {\"image\": path, \"label\": ..., \"domain\": ...}."),
    config: str = typer.Option(..., help=AGENT_CONFIG_HELP),
    out: str = typer.Option(..., help="Reports JSONL, appended as they come; a rerun asks only for what it lacks."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
  """Every expert's report on every image of a manifest (resumable)."""
  from fifa_jax.agent import build, run as agent_run_lib  # lazy: as above

  try:
    rows = agent_run_lib.read_manifest(manifest)
    cfg = build.load(config)
    experts = build.experts(cfg, Path(config).parent)
    counts = agent_run_lib.collect(experts, rows, out, progress=progress)
  except _agent_errors() as e:
    typer.echo(f"fifa agent reports: error: {e}", err=True)
    raise typer.Exit(code=2)
  typer.echo(f"{counts['written']} reports written ({counts['abstained']} abstentions), "
             f"{counts['skipped']} already in {out}")
  for expert in experts:  # what the endpoints cost: a rerun from the cache sends nothing
    for role, u in (expert.usage() if hasattr(expert, "usage") else {}).items():
      typer.echo(f"  {expert.name} {role}: {u['requests']} requests, {u['cache_hits']} from cache, "
                 f"{u['retries']} retries, {u['failures']} failed")


@agent_app.command("eval")
def agent_eval(
    manifest: str = typer.Option(..., help="JSONL with each image's \"label\" (real/fake) and \"domain\"."),
    reports: str = typer.Option(..., help="Reports JSONL (from `fifa agent reports`)."),
    out: str = typer.Option(..., help="Folder for report.md and report.json."),
    aggregator: str = typer.Option("vote,confidence", help=AGGREGATOR_HELP),
    config: Optional[str] = typer.Option(None, help="Agent YAML, for the experts' dev accuracy (confidence weighting) and the tie rule."),
    accuracy_from: Optional[str] = typer.Option(None, help="report.json of an earlier `fifa agent eval` on a development split: "
                                                           "each expert's Acc. there weighs it in confidence weighting."),
    policy: Optional[str] = typer.Option(None, help="The learned aggregator's policy folder (a `fifa agent train` workdir's policy/)."),
) -> None:
  """Acc., F1, Precision and Recall per domain, per expert and per aggregator (abstentions shown)."""
  from fifa_jax.agent import build, evaluate, reports as reports_lib, run as agent_run_lib  # lazy: as above

  try:
    rows = agent_run_lib.read_manifest(manifest, need_label=True)
    found = list(reports_lib.read_reports(reports))
    aggregators = _aggregators(aggregator)
    cfg = build.load(config) if config else None
    accuracy = dict(cfg.accuracy) if cfg else {}
    if accuracy_from:
      accuracy.update(evaluate.dev_accuracy(accuracy_from))
    result = evaluate.evaluate(rows, found, aggregators, accuracy, cfg.tie if cfg else "fake",
                               build.llm_aggregator(cfg) if "llm" in aggregators else None,
                               build.learned_aggregator(cfg, policy, Path(manifest).parent)
                               if "learned" in aggregators else None)
  except _agent_errors() as e:
    typer.echo(f"fifa agent eval: error: {e}", err=True)
    raise typer.Exit(code=2)
  evaluate.write(result, out)
  typer.echo(evaluate.markdown(result), nl=False)
  typer.echo(f"wrote {out}/report.md and report.json")


@agent_app.command("dataset")
def agent_dataset(
    manifest: str = typer.Option(..., help="JSONL with each image's \"label\" (real/fake) and \"domain\"."),
    reports: str = typer.Option(..., help="Reports JSONL (from `fifa agent reports`)."),
    out: str = typer.Option(..., help="Training records JSONL for `fifa agent train` (data: OUT)."),
    config: Optional[str] = typer.Option(None, help="Agent YAML: `learned.methods` (which expert is Method 1, 2, 3) "
                                                    "and `learned.domain_methods` (the expert expected per domain)."),
) -> None:
  """The learned aggregator's GRPO training records from a labelled manifest and the experts' reports."""
  from fifa_jax.agent import build, learned, reports as reports_lib, run as agent_run_lib  # lazy: as above

  try:
    rows = agent_run_lib.read_manifest(manifest, need_label=True)
    found = list(reports_lib.read_reports(reports))
    lcfg = build.load(config).learned if config else build.LearnedConfig()
    recs = learned.training_records(rows, found, lcfg.methods, lcfg.domain_methods)
  except _agent_errors() as e:
    typer.echo(f"fifa agent dataset: error: {e}", err=True)
    raise typer.Exit(code=2)
  tmp = Path(out + ".partial")
  tmp.write_text("".join(json.dumps(r) + "\n" for r in recs))
  tmp.replace(out)
  unmapped = sum(r["method"] == 0 for r in recs)
  typer.echo(f"wrote {len(recs)} records to {out} (Methods 1-{len(lcfg.methods)}: "
             f"{', '.join(lcfg.methods)}" + (f"; {unmapped} with a domain outside learned.domain_methods"
                                             if unmapped else "") + ")")


@agent_app.command("train")
def agent_train(
    workdir: str = typer.Option(..., help="Run folder: checkpoints/, metrics.jsonl, policy/ (resumed when it has checkpoints)."),
    config: Optional[str] = typer.Option(None, help="GRPO YAML (configs/agent/grpo_toy.yaml); default: the toy task's settings."),
    overrides: list[str] = typer.Option([], "--set", "-s", help="A dotted override, e.g. --set steps=200 (repeatable)."),
    stop_at: Optional[int] = typer.Option(None, help="Save and stop after this many steps in all (a rerun resumes)."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
  """Train the learned aggregator's policy with GRPO (an optional supervised cold start first)."""
  from fifa_jax import schema  # lazy: as above
  from fifa_jax.agent import trainer  # lazy: loads jax

  try:
    cfg = trainer.load_config(config, overrides)
    last = trainer.train(cfg, workdir, progress=progress, stop_at=stop_at)
  except (schema.ConfigError, ValueError, FileNotFoundError) as e:
    typer.echo(f"fifa agent train: error: {e}", err=True)
    raise typer.Exit(code=2)
  shown = ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k.startswith(("reward/", "sft/")))
  typer.echo(f"last logged: {shown}")
  if Path(workdir, "policy").is_dir() and (stop_at is None or stop_at >= cfg.sft_steps + cfg.steps):
    typer.echo(f"wrote {workdir}/policy (fifa agent eval --aggregator learned --policy {workdir}/policy)")
  else:
    typer.echo(f"stopped at step {stop_at}; rerun to resume")


# `fifa convert farl|llama|sam|model|peft|llava` live in fifa_jax/convert/cli.py.
from fifa_jax.convert.cli import register as _register_convert  # noqa: E402

_register_convert(convert_app)


def main() -> None:
  app(prog_name="fifa")


if __name__ == "__main__":
  sys.exit(main())
