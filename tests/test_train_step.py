"""The sharded train step: what trains, 8 devices = 1 device, the non-finite policy,
gradient accumulation, checkpoints onto other meshes and onto the CPU alone."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fifa_jax import checkpoint as ckpt_lib, config, mesh as mesh_lib
from fifa_jax.data import pipeline, toy
from fifa_jax.train import loop, optim, state as state_lib, step as step_lib
from fifa_jax.train.losses import LossWeights

STEPS = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = toy.write_toy_dataset(tmp_path_factory.mktemp("toy"), n_images=4)
  cfg = config.load(loop.Path(__file__).parent.parent / "configs/tiny_cpu.yaml",
                    [f"data.root={root}", "train.steps=10", "model.lora_dropout=0.1"])
  fcfg = config.model_config(cfg)
  layout = pipeline.Layout.for_model(fcfg, cfg.data.buckets, None)
  it = pipeline.iterate(loop.pipeline_config(cfg, "train"), layout)
  batches = [next(it) for _ in range(STEPS)]
  return cfg, fcfg, batches


_SETUPS: dict = {}


def setup_on(run, n, grad_accum=1):
  """One setup and jitted step per (devices, grad_accum): each compiles once per module."""
  key = (id(run), n, grad_accum)
  if key not in _SETUPS:
    _SETUPS[key] = _make(run, n, grad_accum)
  return _SETUPS[key]


def _make(run, n, grad_accum):
  cfg, fcfg, _ = run
  mesh = mesh_lib.make_mesh(*((2, 2, 2) if n == 8 else (n, 1, 1)), devices=jax.devices()[:n])
  setup = state_lib.make_setup(cfg, fcfg, mesh)
  fn = step_lib.make_train_step(setup, LossWeights(), grad_accum, optim.schedule(cfg.optim, 10))
  return setup, fn


def train(run, n, grad_accum=1, batches=None):
  setup, fn = setup_on(run, n, grad_accum)
  state = state_lib.init_state(setup, 0)
  out = []
  with jax.set_mesh(setup.mesh):
    for b in batches or run[2]:
      state, m = fn(state, step_lib.to_global(setup.mesh, b))
      out.append(jax.device_get(m))
  return state, out


def test_frozen_llm_weights_have_no_optimizer_state(run):
  setup, _ = setup_on(run, 1)
  params, frozen = setup.abstract["params"], setup.abstract["frozen"]
  llm_train = jax.tree_util.tree_leaves_with_path(params["llm"])
  # Only adapters (and, with train_embeddings, embed_tokens / lm_head) train in the LLM.
  names = {jax.tree_util.keystr(p) for p, _ in llm_train}
  assert names and all(("lora_" in n) or ("embed_tokens" in n) or ("lm_head" in n) for n in names)
  assert "kernel" in str(jax.tree_util.tree_leaves_with_path(frozen["llm"])[0][0]) or frozen["llm"]
  # The Adam moments mirror the trainable params exactly: no base-weight moments.
  adam = setup.abstract["opt_state"][1][0]
  for moments in (adam.mu, adam.nu):
    assert jax.tree.structure(moments) == jax.tree.structure(params)
    paths = {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(moments)}
    assert not any("q_proj']['kernel']" in p or "mlp']" in p for p in paths if "['llm']" in p)
  base_q = frozen["llm"]["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"]
  assert base_q.shape == (64, 64)
  # Without the flag, embeddings and lm_head are frozen too; outside the LLM all trains.
  filt = optim.trainable_filter(False)
  model = nnx.eval_shape(lambda: state_lib.FiFaMLLM(run[1], rngs=nnx.Rngs(0)))
  _, p, f, _ = state_lib.split(model, filt)
  p = nnx.to_pure_dict(p)
  assert set(p) >= {"vit", "box_encoder", "decoder", "pixel_decoder", "image_projector", "llm"}
  assert "embed_tokens" not in p["llm"]["model"]
  assert not set(nnx.to_pure_dict(f)) - {"llm"}


@pytest.mark.slow
def test_eight_devices_match_one(run, capfd):
  s8, m8 = train(run, 8)
  # The step partitions without XLA replicating an activation to reshard it (the
  # embedding lookup and the <image>/<bbox> splices once did, see mesh.constrain).
  assert "Involuntary full rematerialization" not in capfd.readouterr().err
  s1, m1 = train(run, 1)
  spec = s8["frozen"]["llm"]["model"]["layers"][0]["mlp"]["up_proj"]["kernel"].sharding.spec
  assert spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  l8, l1 = [float(m["loss"]) for m in m8], [float(m["loss"]) for m in m1]
  np.testing.assert_allclose(l8, l1, rtol=0, atol=1e-5)
  a, b = jax.tree.leaves(s8["params"]), jax.tree.leaves(s1["params"])
  worst = max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a, b))
  print(f"8 devices vs 1 over {STEPS} steps: losses {l1}, max param diff {worst:.2e}")
  assert worst < 1e-4
  assert int(s1["step"]) == STEPS and all(bool(m["finite"]) for m in m1)
  assert set(m1[0]["per_task"]) >= {"text_sum", "samples", "tokens"}


def test_nonfinite_update_is_skipped(run):
  bad = dict(run[2][0])
  bad["pixels"] = np.full_like(bad["pixels"], np.nan)
  setup, fn = setup_on(run, 1)
  state = state_lib.init_state(setup, 0)
  before = jax.tree.map(np.asarray, state["params"])
  opt_before = jax.tree.map(np.asarray, state["opt_state"])
  with jax.set_mesh(setup.mesh):
    state, m = fn(state, step_lib.to_global(setup.mesh, bad))
  assert not bool(m["finite"]) and int(state["nonfinite"]) == 1 and int(state["step"]) == 1
  for x, y in zip(jax.tree.leaves(before), jax.tree.leaves(state["params"])):
    np.testing.assert_array_equal(x, np.asarray(y))
  for x, y in zip(jax.tree.leaves(opt_before), jax.tree.leaves(state["opt_state"])):
    np.testing.assert_array_equal(x, np.asarray(y))
  with jax.set_mesh(setup.mesh):
    state, m = fn(state, step_lib.to_global(setup.mesh, run[2][1]))
  assert bool(m["finite"]) and int(state["nonfinite"]) == 0


def test_micro_batches_keep_rows_on_their_devices():
  mesh = mesh_lib.make_mesh(2, 2, 2)
  x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  with jax.set_mesh(mesh):
    xs = jax.device_put(x, mesh_lib.batch_sharding(mesh, 2))
    micro = jax.jit(lambda b: step_lib._micro(b, 2, mesh))({"x": xs})["x"]
  np.testing.assert_array_equal(np.asarray(micro[0]), x[0::2])
  np.testing.assert_array_equal(np.asarray(micro[1]), x[1::2])
  assert tuple(micro.sharding.spec)[:2] == (None, ("data", "fsdp"))


@pytest.mark.slow
def test_checkpoint_restores_on_other_meshes_and_cpu(run, tmp_path):
  cfg, fcfg, _ = run
  setup8, _ = setup_on(run, 8)
  state = state_lib.init_state(setup8, 3)
  ck = ckpt_lib.Checkpointer(tmp_path / "ck", keep=2)
  ck.save(5, state, {"next_index": 5}, {"step": 5})
  ck.close()
  want = {jax.tree_util.keystr(k): np.asarray(jax.random.key_data(v) if ckpt_lib.is_key(v) else v)
          for k, v in jax.tree_util.tree_leaves_with_path(state)}
  for n in (1, 4):
    mesh = mesh_lib.make_mesh(devices=jax.devices()[:n])
    setup = state_lib.make_setup(cfg, fcfg, mesh)
    restored, data, meta = ckpt_lib.Checkpointer(tmp_path / "ck").restore(5, setup.abstract)
    assert data == {"next_index": 5} and meta["step"] == 5
    got = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(restored)}
    assert got.keys() == want.keys()
    for k, v in got.items():
      arr = jax.random.key_data(v) if ckpt_lib.is_key(v) else v
      assert len(v.sharding.device_set) == n, k
      np.testing.assert_array_equal(np.asarray(arr), want[k], err_msg=k)
  # Parameters alone, as NumPy, with no mesh at all.
  params = ckpt_lib.load_params(tmp_path / "ck")
  leaves = jax.tree.leaves(params)
  assert leaves and all(isinstance(x, np.ndarray) for x in leaves)
  np.testing.assert_array_equal(params["frozen"]["llm"]["model"]["layers"][0]["mlp"]["up_proj"]["kernel"],
                                want["['frozen']['llm']['model']['layers'][0]['mlp']['up_proj']['kernel']"])


def _stack_layers(tree):
  """Unrolled pure dict (llm.model.layers = {0: {...}, 1: {...}}) -> the scanned layout."""
  layers = tree["llm"]["model"]["layers"]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[layers[i] for i in sorted(layers)])
  return {**tree, "llm": {**tree["llm"], "model": {**tree["llm"]["model"], "layers": stacked}}}


@pytest.mark.slow
def test_scanned_llm_layers_train_like_unrolled(run):
  """model.llama.scan_layers (with remat): the same weights give the same losses and
  updates as the unrolled layers, step for step."""
  cfg, _, batches = run
  steps = {}
  for scan in (False, True):
    over = [f"data.root={cfg.data.root}", "train.steps=10", "model.lora_dropout=0.0", "model.remat=true"]
    if scan:
      over.append('model.llama={"scan_layers": true}')
    c = config.load(loop.Path(__file__).parent.parent / "configs/tiny_cpu.yaml", over)
    fcfg = config.model_config(c)
    assert fcfg.llama.scan_layers is scan
    mesh = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    setup = state_lib.make_setup(c, fcfg, mesh)
    steps[scan] = (setup, step_lib.make_train_step(setup, LossWeights(), 1, optim.schedule(c.optim, 10)))
  unrolled = state_lib.init_state(steps[False][0], 0)
  scanned = state_lib.init_state(steps[True][0], 0)
  copy = lambda t: jax.tree.map(lambda x: jnp.array(x, copy=True), t)  # steps donate their state
  # Buffers (SAM's random Fourier matrix) too: everything outside the LLM's layers.
  rest = {k: (scanned["rest"][k] if k == "llm" else copy(v)) for k, v in unrolled["rest"].items()}
  scanned = {**scanned, "params": copy(_stack_layers(unrolled["params"])),
             "frozen": copy(_stack_layers(unrolled["frozen"])), "rest": rest}
  assert jax.tree.structure(scanned["params"]) == jax.tree.structure(
      state_lib.init_state(steps[True][0], 0)["params"])
  losses = {}
  for scan, state in ((False, unrolled), (True, scanned)):
    setup, fn = steps[scan]
    with jax.set_mesh(setup.mesh):
      out = []
      for b in batches:
        state, m = fn(state, step_lib.to_global(setup.mesh, b))
        out.append(float(m["loss"]))
    losses[scan] = (out, state)
  np.testing.assert_allclose(losses[True][0], losses[False][0], rtol=0, atol=1e-5)
  want = _stack_layers(jax.device_get(losses[False][1]["params"]))
  got = jax.device_get(losses[True][1]["params"])
  worst = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
              for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
  print(f"scanned vs unrolled after {len(batches)} steps: losses {losses[True][0]}, max diff {worst:.1e}")
  assert worst < 5e-5  # Adam's update amplifies summation-order noise in tiny gradients


def test_micro_batches_keep_each_seg_with_its_row(run):
  """With grad_accum, micro-batch g holds rows g, g+n, ... and exactly their [SEG] slots."""
  cfg, fcfg, _ = run
  n = 2
  layout = pipeline.Layout.for_model(fcfg, cfg.data.buckets, None, seg_capacity=64, micro_batches=n)
  it = pipeline.iterate(loop.pipeline_config(cfg, "train"), layout)
  batch = next(it)
  mesh = mesh_lib.make_mesh(1, 1, 1, devices=jax.devices()[:1])
  with jax.set_mesh(mesh):
    micro = jax.jit(lambda b: step_lib._micro(b, n, mesh))(batch)
  seg_id = fcfg.seg_token_id
  total = 0
  for g in range(n):
    ids = np.asarray(micro["input_ids"][g])
    np.testing.assert_array_equal(ids, batch["input_ids"][g::n])
    valid = np.asarray(micro["seg_valid"][g])
    rows, cols = np.asarray(micro["seg_rows"][g])[valid], np.asarray(micro["seg_cols"][g])[valid]
    # Every valid slot points at a position that predicts a [SEG] of its own row ...
    assert (ids[rows, cols + 1] == seg_id).all()
    # ... and every [SEG] of the micro-batch has its slot, in row-major order.
    want = np.argwhere(ids[:, 1:] == seg_id)
    np.testing.assert_array_equal(np.stack([rows, cols], 1), want)
    total += int(valid.sum())
  assert total == int((batch["input_ids"] == seg_id).sum()) > 0
