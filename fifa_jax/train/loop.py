"""The training loop: resume, step, log, evaluate, checkpoint, stop cleanly.

`train(cfg, workdir)` returns an exit status:
  0    finished `train.steps`;
  3    stopped by the non-finite policy (`train.max_nonfinite` consecutive
       skipped steps; the last checkpoint holds the last good state);
  143  stopped by SIGTERM (preemption) after a final, synchronous save; with several
       hosts, every host saves the same step and exits 143, whichever host got the
       signal (distributed.Preemption).
Resume is automatic: the latest complete checkpoint under WORKDIR/checkpoints
(model, optimizer, step, RNG streams, data-iterator position) is restored, and
the run continues with exactly the batches and random numbers it would have
had.  The dev evaluation is scheduled by global step, so it survives resume.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from fifa_jax import checkpoint as ckpt_lib, config as config_lib, mesh as mesh_lib, paths, tokens
from fifa_jax.data import pipeline
from fifa_jax.train import distributed, metrics as metrics_lib, optim
from fifa_jax.train import state as state_lib, step as step_lib

EXIT_OK, EXIT_NONFINITE, EXIT_PREEMPTED = 0, 3, 143


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, file=sys.stderr, flush=True)


def enable_compilation_cache() -> None:
  """Persist compiled programs ($FIFA_XLA_CACHE, default ~/.cache/fifa-jax/xla): a resumed
  run, a second host process or the next test does not compile the step again."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return
  path = os.environ.get("FIFA_XLA_CACHE", str(Path.home() / ".cache" / "fifa-jax" / "xla"))
  if path:
    jax.config.update("jax_compilation_cache_dir", path)


def pipeline_config(cfg: config_lib.Config, split: str, shuffle: bool = True) -> pipeline.PipelineConfig:
  d, t = cfg.data, cfg.train
  if t.batch_size % jax.process_count():
    raise config_lib.ConfigError(f"train.batch_size {t.batch_size} does not split over "
                                 f"{jax.process_count()} processes")
  return pipeline.PipelineConfig(root=d.root, qa_glob=d.qa_glob, masks=d.masks, tasks=d.tasks,
                                 split=split, seed=d.seed, local_batch=t.batch_size // jax.process_count(),
                                 workers=d.workers, worker_buffer=d.worker_buffer, shuffle=shuffle,
                                 group_by_length=d.group_by_length)


def agree_length(batch: dict, pad_id: int, layout: pipeline.Layout | None = None) -> dict:
  """All hosts pad to the largest bucket any host chose (global arrays need one shape),
  and to that bucket's [SEG] slots where they differ by bucket (length-grouped batches)."""
  if jax.process_count() == 1:
    return batch
  # lazy: multi-host only
  from jax.experimental import multihost_utils
  n = int(np.max(multihost_utils.process_allgather(np.int32(batch["input_ids"].shape[1]))))
  if layout is None or not layout.seg_capacity_by_bucket:
    return pipeline.pad_to_length(batch, n, pad_id)
  return pipeline.pad_to_length(batch, n, pad_id, layout.capacity(n), layout.micro_batches)


def make_layout(cfg: config_lib.Config, fcfg, mesh) -> pipeline.Layout:
  """The batch layout of a run; the [SEG] capacity of this host's batch from
  `data.seg_capacity` (global, split among the hosts) or from the data."""
  n = cfg.train.grad_accum
  local_shards = max(1, (mesh.shape["data"] * mesh.shape["fsdp"]) // jax.process_count())
  multiple = int(np.lcm(8, local_shards)) * n
  layout = pipeline.Layout.for_model(fcfg, cfg.data.buckets, cfg.model.tokenizer,
                                     micro_batches=n, augment=cfg.data.augment)
  if cfg.data.seg_capacity is None and cfg.data.group_by_length > 0:
    pc = pipeline_config(cfg, cfg.data.split)
    by_bucket = pipeline.seg_capacity_by_bucket(pc, layout, multiple)
    log("[SEG] slots per batch, by length bucket: "
        + ", ".join(f"{b} tokens: {c}" for b, c in by_bucket)
        + " (from the data; set data.seg_capacity to fix one for all)")
    return dataclasses.replace(layout, seg_capacity=max(c for _, c in by_bucket),
                               seg_capacity_by_bucket=by_bucket)
  if cfg.data.seg_capacity is None:
    pc = pipeline_config(cfg, cfg.data.split)
    local = pipeline.seg_capacity_for(pipeline.seg_counts(pc), pc.tasks, pc.local_batch, multiple)
    log(f"[SEG] slots per batch: {local} (from the data; set data.seg_capacity to fix it)")
  elif cfg.data.seg_capacity % multiple:
    raise config_lib.ConfigError(f"data.seg_capacity {cfg.data.seg_capacity} must be a multiple of "
                                 f"{multiple} (8, the batch's local devices and train.grad_accum)")
  else:
    local = cfg.data.seg_capacity // jax.process_count()
  return dataclasses.replace(layout, seg_capacity=local)


class _Compiled:
  """The step compiled once per batch shape (one per length bucket), with its model
  FLOPs per device."""

  def __init__(self, fn, llama=None, train_base: bool = False, timeout_s: int = 600):
    self.fn, self.cache, self.llama, self.train_base = fn, {}, llama, train_base
    self.timeout_s = timeout_s

  def __call__(self, state, batch):
    key = tuple((k, v.shape) for k, v in sorted(batch.items()))
    if key not in self.cache:
      compiled = self.fn.lower(state, batch).compile()
      flops = None
      if self.llama is not None:
        b, t = batch["input_ids"].shape
        flops = metrics_lib.model_flops(self.llama, b, t, train_base=self.train_base)
        flops /= jax.device_count()
      self.cache[key] = (compiled, flops)
      # Processes compile at their own pace; the step's first collective must not wait
      # on a peer still compiling (XLA's Gloo gives a peer 30 s to join a collective).
      distributed.barrier(f"fifa-compiled-{len(self.cache)}", self.timeout_s)
    compiled, flops = self.cache[key]
    self.flops = flops
    return compiled(state, batch)


def evaluate(cfg, setup, layout, eval_step, state, pad_id) -> dict[str, float]:
  """Teacher-forced losses on the first `train.eval_batches` dev batches (the same every time)."""
  pc = pipeline_config(cfg, cfg.data.dev_split)
  pc.workers = 0
  it = pipeline.iterate(pc, dataclasses.replace(layout, augment=False), jax.process_index(),
                        jax.process_count())
  acc = metrics_lib.Accumulator()
  for _ in range(cfg.train.eval_batches):
    batch = step_lib.to_global(setup.mesh, agree_length(next(it), pad_id, layout))
    m = eval_step(state, batch)
    m["finite"] = True
    acc.add(m)
  return acc.summary("dev")


def local_dir(workdir: str) -> Path:
  """Where metrics go: the workdir, or for a remote one (gs://...) ./fifa_metrics/<name>,
  copied into the remote workdir while the run goes (MetricsWriter's mirror)."""
  if "://" in workdir:
    return Path("fifa_metrics") / workdir.rstrip("/").rsplit("/", 1)[-1]
  return Path(workdir)


def stage_inputs(cfg: config_lib.Config) -> None:
  """Local copies of the run's inputs given as URLs (paths.py): the data folder, the
  QA shards and the mask store where they are given apart from it, the initial weights
  and the tokenizer.  Each host stages its own copy."""
  if paths.is_url(cfg.data.root):
    cfg.data.root = str(paths.stage_in(cfg.data.root, "data.root"))
  if paths.is_url(cfg.data.qa_glob):
    cfg.data.qa_glob = paths.stage_in_pattern(cfg.data.qa_glob, "data.qa_glob")
  if paths.is_url(cfg.data.masks):
    cfg.data.masks = str(paths.stage_in(cfg.data.masks, "data.masks"))
  if paths.is_url(cfg.model.init_from):
    cfg.model.init_from = str(paths.stage_in(cfg.model.init_from, "model.init_from"))
  if paths.is_url(cfg.model.tokenizer):
    cfg.model.tokenizer = str(paths.stage_in(cfg.model.tokenizer, "model.tokenizer"))


def train(cfg: config_lib.Config, workdir: str | Path) -> int:
  workdir = str(workdir)
  stage_inputs(cfg)
  enable_compilation_cache()
  distributed.maybe_initialize(cfg.distributed)
  mesh = mesh_lib.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  distributed.log_hosts(mesh)
  distributed.barrier("fifa-start", cfg.distributed.timeout_s)

  if cfg.model.max_segs is not None:
    log(f"model.max_segs={cfg.model.max_segs} is deprecated and ignored: every [SEG] gets its mask "
        "(the batch's [SEG] slots: data.seg_capacity)")
  tok = tokens.load_tokenizer(cfg.model.tokenizer)
  pad_id = tok.pad_token_id or 0
  fcfg = config_lib.model_config(cfg, tok)
  setup = state_lib.make_setup(cfg, fcfg, mesh)
  layout = make_layout(cfg, fcfg, mesh)
  if jax.process_index() == 0:
    local_dir(workdir).mkdir(parents=True, exist_ok=True)
    (local_dir(workdir) / "config.yaml").write_text(config_lib.dump(cfg))
  ckpt = ckpt_lib.Checkpointer(workdir.rstrip("/") + "/checkpoints", keep=cfg.checkpoint.keep,
                               async_save=cfg.checkpoint.async_save)

  latest = ckpt.latest_step()
  if latest is not None:
    state, data_state, meta = ckpt.restore(latest, setup.abstract)
    log(f"resumed from {ckpt.directory / str(latest)} (step {latest})")
  else:
    state, data_state, meta = state_lib.init_state(setup, cfg.train.seed, jit=True), None, {}
    if cfg.model.init_from:
      state = state_lib.load_initial_weights(setup, state, cfg.model.init_from)
    n_train, n_frozen = state_lib.count(state["params"]), state_lib.count(state["frozen"])
    log(f"initialised FiFa-MLLM ({cfg.model.preset}): {n_train:,} trainable, {n_frozen:,} frozen "
        f"parameters" + (f"; weights from {cfg.model.init_from}" if cfg.model.init_from else ""))
    if cfg.warmup.steps:
      from fifa_jax.train import warmup  # lazy: only runs from random weights use it
      masks = cfg.data.masks.format(root=cfg.data.root, split=cfg.data.split)
      state = warmup.run(cfg, setup, state, masks, log=log)
  start = int(jax.device_get(state["step"]))
  if start >= cfg.train.steps:
    log(f"nothing to do: step {start} >= train.steps {cfg.train.steps}")
    ckpt.close()
    return EXIT_OK

  it = pipeline.iterate(pipeline_config(cfg, cfg.data.split), layout, jax.process_index(),
                        jax.process_count(), state=data_state or None)
  # The first batch's length is agreed by a collective: start it together (see _Compiled).
  distributed.barrier("fifa-ready", cfg.distributed.timeout_s)
  sched = optim.schedule(cfg.optim, cfg.train.steps)
  weights = cfg.loss
  train_step = _Compiled(step_lib.make_train_step(setup, weights, cfg.train.grad_accum, sched),
                         fcfg.llama, train_base=cfg.model.train_llm,
                         timeout_s=cfg.distributed.timeout_s)
  eval_step = step_lib.make_eval_step(setup, weights) if cfg.train.eval_every else None
  writer = metrics_lib.MetricsWriter(local_dir(workdir),
                                     mirror=workdir if paths.is_url(workdir) else None)
  peak = metrics_lib.peak_tflops(cfg.bench.peak_tflops)

  preemption = distributed.Preemption()
  bar = None
  if cfg.train.progress and jax.process_index() == 0:
      bar = tqdm(total=cfg.train.steps, initial=start, desc=cfg.name, unit="step", dynamic_ncols=True)
  acc = metrics_lib.Accumulator()
  status = EXIT_OK
  step = start

  def book(done: int, m: dict) -> int:
    """Metrics, logging and the non-finite check of step `done`; called one step late,
    once the next step is dispatched, so that reading them never stalls the device
    (maxtext's metric logger does the same)."""
    acc.add(m)
    if bar is not None:
      bar.update(1)
    if done % cfg.train.log_every == 0 or done == cfg.train.steps:
      values = {**acc.summary(), **acc.throughput(train_step.flops, peak)}
      writer.write(done, values)
      if bar is not None:
        bar.set_postfix(loss=f"{values.get('train/loss', float('nan')):.4f}")
      acc.reset()
    nonfinite = int(jax.device_get(m["nonfinite"]))
    if nonfinite:
      log(f"step {done}: non-finite loss or gradient; update skipped ({nonfinite} in a row)")
    if nonfinite >= cfg.train.max_nonfinite:
      log(f"stopping: {nonfinite} consecutive non-finite steps (train.max_nonfinite); the last "
          f"checkpoint ({ckpt.latest_step()}) holds the last good state")
      return EXIT_NONFINITE
    return EXIT_OK

  pending = None  # (step, metrics) of the last dispatched step
  try:
    with jax.set_mesh(mesh):
      while step < cfg.train.steps:
        batch = agree_length(next(it), pad_id, layout)
        data_state = it.get_state()
        state, m = train_step(state, step_lib.to_global(mesh, batch))
        step += 1
        if pending is not None:
          status = book(*pending)
          if status != EXIT_OK:
            pending = None
            break
        pending = (step, m)
        if eval_step is not None and step % cfg.train.eval_every == 0:
          status, pending = book(*pending), None
          if status != EXIT_OK:
            break
          dev = evaluate(cfg, setup, layout, eval_step, state, pad_id)
          writer.write(step, dev)
          meta["last_eval"] = {"step": step, **dev}
          acc.t0 = time.perf_counter()  # throughput excludes the evaluation
        if preemption.reached(step):
          if pending is not None:
            status, pending = book(*pending), None
          ckpt.save(step, state, data_state, {**meta, "step": step, "time": time.time()}, force=True)
          ckpt.wait()
          log(f"SIGTERM: saved step {step} to {ckpt.directory}; exiting for a later resume")
          status = EXIT_PREEMPTED
          break
        if step % cfg.checkpoint.every == 0 or step == cfg.train.steps:
          ckpt.save(step, state, data_state, {**meta, "step": step, "time": time.time(),
                                              "name": cfg.name})
      if pending is not None:  # the last step's bookkeeping
        status = book(*pending)
  finally:
    preemption.close()
    if bar is not None:
      bar.close()
    writer.close()  # a gs:// workdir gets the last copy of the metrics here
    ckpt.close()
  if status == EXIT_OK:
    log(f"done: {step} steps; checkpoints in {ckpt.directory}")
  return status
