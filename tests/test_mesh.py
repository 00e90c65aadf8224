import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from fifa_jax import mesh as mesh_lib


def test_eight_host_devices():
  assert jax.device_count() == 8


def test_make_mesh_shapes_and_errors():
  m = mesh_lib.make_mesh(data=2, fsdp=2, tensor=2)
  assert dict(m.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  assert dict(mesh_lib.make_mesh(fsdp=4).shape) == {"data": 2, "fsdp": 4, "tensor": 1}
  with pytest.raises(ValueError, match="needs 12 devices"):
    mesh_lib.make_mesh(data=3, fsdp=2, tensor=2)
  with pytest.raises(ValueError, match="at most one"):
    mesh_lib.make_mesh(data=-1, fsdp=-1)


def test_logical_rules_map_and_never_reuse_an_axis():
  assert mesh_lib.logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
  assert mesh_lib.logical_to_spec(("batch", "length")) == P(("data", "fsdp"), None)
  # "batch" takes fsdp, so "embed" in the same array must not take it again.
  assert mesh_lib.logical_to_spec(("batch", "embed")) == P(("data", "fsdp"), None)
  assert mesh_lib.logical_to_spec(("unknown_name",)) == P(None)


def test_shard_model_places_params_by_logical_axes():
  m = mesh_lib.make_mesh(data=2, fsdp=2, tensor=2)
  init = mesh_lib.logical(nnx.initializers.lecun_normal(), ("embed", "mlp"))
  lin = nnx.Linear(8, 6, kernel_init=init, rngs=nnx.Rngs(0))
  before = np.asarray(lin.kernel[...])
  mesh_lib.shard_model(lin, m)
  assert lin.kernel[...].sharding.spec == P("fsdp", "tensor")
  np.testing.assert_array_equal(np.asarray(lin.kernel[...]), before)
  # 5 is not divisible by the tensor axis: that dimension stays replicated.
  odd = nnx.Linear(8, 5, kernel_init=init, rngs=nnx.Rngs(0))
  mesh_lib.shard_model(odd, m)
  assert odd.kernel[...].sharding.spec == P("fsdp", None)


def test_every_fifa_parameter_has_known_logical_axes():
  from fifa_jax.models import fifa

  model = nnx.eval_shape(lambda: fifa.FiFaMLLM(fifa.FiFaConfig.tiny(), rngs=nnx.Rngs(0)))
  known = {name for name, _ in mesh_lib.LOGICAL_AXIS_RULES}
  flat = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  assert len(flat) > 100
  for path, var in flat:
    names = var.get_metadata().get("out_sharding")
    where = "/".join(map(str, path))
    assert names is not None, f"{where} has no logical axis names"
    assert len(names) == len(var.shape), where
    unknown = [n for n in names if n is not None and n not in known]
    assert not unknown, f"{where}: logical names {unknown} are not in LOGICAL_AXIS_RULES"
