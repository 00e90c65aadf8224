"""The device mesh and the logical-axis rules: the one place that knows devices.

Every parameter is created with *logical* axis names (`logical(init, ("embed",
"mlp"))`); `LOGICAL_AXIS_RULES` maps those names to the axes of a
(data, fsdp, tensor) mesh.  Changing how the model is sharded means editing this
table, never a model file.  Names not in the table are replicated.

Parameters are declared with `logical(init, names)`: created unsharded (or
abstractly under `nnx.eval_shape`) and placed later by `shard_model`/`jit`
out-shardings, never eagerly, which lets the same model code run on one CPU or a
pod slice.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated).
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # activations
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    # parameters
    ("embed", "fsdp"),  # model width of the LLM (and encoders): ZeRO-3 style
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),  # q heads * head_dim, fused in the HF layout
    ("kv_heads", "tensor"),
    ("lora_rank", None),
    ("layers", None),  # the stacked axis of scanned LLM layers
    ("vit_embed", "fsdp"),
    ("vit_mlp", "tensor"),
    ("vit_heads", "tensor"),
    ("decoder_embed", None),  # the two-way decoder is small: replicate
    ("decoder_mlp", None),
    ("conv_in", None),
    ("conv_out", None),
    ("patch", None),
    ("pos", None),
    ("norm", None),
)


def logical(init, names: Sequence[str | None]):
  """`init` whose parameters carry the logical axis `names` (see LOGICAL_AXIS_RULES).

  Not eagerly sharded: a model is built without a mesh (or abstractly) and placed
  by the caller, so model code never needs to know the devices.
  """
  return nnx.with_partitioning(init, tuple(names), eager_sharding=False)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh over `devices` (all by default).

  One of the sizes may be -1: it takes what the others leave.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not split into fsdp*tensor={known}")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                     f"have {len(devices)}")
  grid = np.asarray(devices, dtype=object).reshape(sizes)
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def parse_mesh(spec: str) -> dict[str, int]:
  """"data=2,fsdp=2,tensor=2" -> {"data": 2, "fsdp": 2, "tensor": 2} (axes left out are 1;
  one may be -1: what the others leave)."""
  sizes = {}
  for part in (p.strip() for p in spec.split(",") if p.strip()):
    name, _, value = part.partition("=")
    name = name.strip()
    if name not in MESH_AXES:
      raise ValueError(f"--mesh {spec!r}: {name!r} is not one of {', '.join(MESH_AXES)}")
    try:
      sizes[name] = int(value)
    except ValueError:
      raise ValueError(f"--mesh {spec!r}: {name}={value!r} is not a whole number") from None
    if sizes[name] == 0 or sizes[name] < -1:
      raise ValueError(f"--mesh {spec!r}: {name} must be positive (or -1)")
  if not sizes:
    raise ValueError(f"--mesh {spec!r}: expected data=N,fsdp=N,tensor=N")
  return {a: sizes.get(a, 1) for a in MESH_AXES}


def logical_to_spec(names: Sequence[str | None] | None,
                    rules=LOGICAL_AXIS_RULES) -> P:
  """PartitionSpec for a tuple of logical axis names."""
  if names is None:
    return P()
  table = dict(rules)
  used: set[str] = set()
  out = []
  for name in names:
    axis = table.get(name) if name is not None else None
    # A mesh axis may shard only one dimension of an array.
    flat = (axis,) if isinstance(axis, str) else tuple(axis or ())
    if any(a in used for a in flat):
      axis = None
    else:
      used.update(flat)
    out.append(axis)
  return P(*out)


# [batch, length, width] activations: rows split over data x fsdp, width whole.
ACTIVATIONS = ("batch", "length", "act_embed")


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Pin an activation's sharding by logical names inside a jit traced under
  `jax.set_mesh`; a no-op without a mesh (one device, eager code).

  Without it, XLA may carry a weight's feature-axis sharding into the
  activations and then has to regather them fully before a per-row gather.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, _fit(logical_to_spec(names), x.shape, mesh))


def _fit(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Drop sharding on a dimension the mesh axes do not divide evenly."""
  out = []
  for dim, axis in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    flat = (axis,) if isinstance(axis, str) else tuple(axis or ())
    n = int(np.prod([mesh.shape[a] for a in flat])) if flat else 1
    out.append(axis if n > 1 and dim % n == 0 else None)
  return P(*out)


def state_shardings(state, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """NamedShardings for an nnx State (concrete or abstract) from its metadata."""

  def one(x):
    if isinstance(x, nnx.Variable):
      names = x.get_metadata().get("out_sharding")
      value = x.get_value() if hasattr(x, "get_value") else x.value
      return x.replace(NamedSharding(mesh, _fit(logical_to_spec(names, rules), value.shape, mesh)))
    return NamedSharding(mesh, P())

  return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> nnx.Module:
  """Place every parameter of `model` on `mesh` by its logical axes (in place)."""
  state = nnx.state(model)
  shardings = state_shardings(state, mesh, rules)
  nnx.update(model, jax.device_put(state, shardings))
  return model


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Leading (batch) dimension over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp"), *([None] * (ndim - 1))))


def describe(mesh: Mesh) -> str:
  return (f"mesh {dict(mesh.shape)} over {mesh.devices.size} {mesh.devices.flat[0].platform} devices; "
          f"process {jax.process_index()}/{jax.process_count()}")
