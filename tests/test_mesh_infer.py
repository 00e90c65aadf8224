"""Mesh-sharded inference and evaluation on 8 CPU devices: the model is built into a
(data, fsdp, tensor) mesh by the training's logical-axis rules, the generation batch is
split over data x fsdp, and the answers are token-identical to one device's, with
masks and head probabilities equal to 1e-5."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from fifa_jax import mesh as mesh_lib
from fifa_jax.infer import load as load_lib
from fifa_jax.infer import predict

pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 host devices (conftest sets them)")

N = 12


def queries():
  rng = np.random.default_rng(0)
  faces = [rng.integers(0, 255, (64, 64, 3), np.uint8) for _ in range(3)]
  asked = [("det", None, None), ("i-age", None, None), ("r-loc", "nose", None), ("b-age", None, (8, 8, 40, 40))]
  # 6 queries: not a multiple of data x fsdp = 4, so the batch is filled up to it
  return [predict.Query(f, t, region=r, box=b) for f, (t, r, b) in zip(faces * 2, asked + asked[:2])]


@pytest.mark.slow
@pytest.mark.parametrize("sizes", [(1, 4, 2), (2, 2, 2)])
def test_sharded_answers_equal_one_devices(workdir, sizes):
  one = load_lib.load(workdir[0], param_dtype="float32")
  mesh = mesh_lib.make_mesh(*sizes)
  sharded = load_lib.load(workdir[0], param_dtype="float32", mesh=mesh)
  specs = {str(x.sharding.spec) for x in jax.tree.leaves(sharded.model)
           if hasattr(x, "sharding") and hasattr(x.sharding, "spec")}
  assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs), specs
  qs = queries()
  want = predict.predict(one, qs, max_new_tokens=N)
  got = predict.predict(sharded, qs, max_new_tokens=N)
  assert len(got) == len(qs)
  for w, g in zip(want, got):
    assert g.text == w.text
    np.testing.assert_allclose(g.det_probs, w.det_probs, atol=1e-5)
    np.testing.assert_allclose(g.cls_probs, w.cls_probs, atol=1e-5)
    assert len(g.artifact_masks) == len(w.artifact_masks)
    for a, b in zip(g.artifact_masks + g.region_masks, w.artifact_masks + w.region_masks):
      assert np.array_equal(a, b)


def test_mesh_option_is_checked():
  assert mesh_lib.parse_mesh("data=2, tensor=4") == {"data": 2, "fsdp": 1, "tensor": 4}
  for bad, message in [("data=2,pipe=2", "'pipe' is not one of data, fsdp, tensor"),
                       ("fsdp=x", "fsdp='x' is not a whole number"), ("tensor=0", "tensor must be positive"),
                       ("", "expected data=N,fsdp=N,tensor=N")]:
    with pytest.raises(ValueError, match=message):
      mesh_lib.parse_mesh(bad)


def test_weights_are_read_into_their_shards(workdir, tmp_path, monkeypatch):
  """No array passes whole through one device or the host: the run's checkpoint is read
  straight into each leaf's shards, the decoding layout is made by one sharded program,
  and a `fifa convert model` folder is read the same way."""
  from fifa_jax import checkpoint
  mesh = mesh_lib.make_mesh(1, 4, 2)
  read = {}

  def spy(*args, **kw):
    out = real(*args, **kw)
    read.update(checkpoint.flat_leaves(out))
    return out

  real = checkpoint.load_params
  monkeypatch.setattr(checkpoint, "load_params", spy)
  monkeypatch.setattr(mesh_lib, "shard_model", lambda *a, **k: pytest.fail("placed after loading"))

  def check(model, arrays=None):
    want = checkpoint.flat_leaves(nnx.to_pure_dict(mesh_lib.state_shardings(nnx.state(model), mesh)))
    got = arrays if arrays is not None else checkpoint.flat_leaves(nnx.to_pure_dict(nnx.state(model)))
    split = 0
    for k, x in got.items():
      key = k if arrays is None else k[1:]  # the checkpoint's parts: params/frozen/rest
      assert isinstance(x, jax.Array) and x.sharding.is_equivalent_to(want[key], x.ndim), k
      split += x.addressable_shards[0].data.size < x.size
    assert split > len(got) // 4  # most weights are split, each device holding a part

  training = load_lib.load(workdir[0], layout="training", mesh=mesh)
  assert read and all(str(x.sharding.mesh.shape) == str(mesh.shape) for x in read.values())
  check(training.model, read)
  check(load_lib.load(workdir[0], param_dtype="float32", mesh=mesh).model)

  one = load_lib.load(workdir[0], layout="training")
  checkpoint.save_model(one.model, tmp_path / "folder", "fifa", one.config)
  folder = load_lib.load(tmp_path / "folder", layout="training", mesh=mesh)
  check(folder.model)
  weights = lambda m: checkpoint.flat_leaves(nnx.to_pure_dict(nnx.state(m, checkpoint.WEIGHTS)))
  for (k, a), b in zip(weights(one.model).items(), weights(folder.model).values()):
    np.testing.assert_array_equal(np.asarray(jax.device_get(b)), np.asarray(a), err_msg=str(k))
