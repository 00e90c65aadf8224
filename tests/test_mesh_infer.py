"""Mesh-sharded inference and evaluation on 8 CPU devices: the model is built into a
(data, fsdp, tensor) mesh by the training's logical-axis rules, the generation batch is
split over data x fsdp, and the answers are token-identical to one device's, with
masks and head probabilities equal to 1e-5."""

from __future__ import annotations

import jax
import numpy as np
import pytest

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
