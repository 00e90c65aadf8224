"""Small building blocks shared by the vision-side boxes of Figure 3.

Every parameter carries logical axis names (see fifa_jax/mesh.py); compute runs in
`dtype` (bf16 allowed), parameters are stored in `param_dtype`, and LayerNorm always
normalises in float32 because bf16 variance is too coarse for pre-LN residuals.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from fifa_jax import mesh as mesh_lib

Names = tuple[str | None, ...]

# PyTorch's nn.Linear / nn.Conv default (kaiming_uniform with a=sqrt(5)) is
# uniform(+-1/sqrt(fan_in)) = variance_scaling(1/3, fan_in, uniform).
torch_default = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def as_dtype(x: Any) -> jnp.dtype:
  """Configs carry dtypes as strings ("bfloat16") so they stay YAML-friendly."""
  return jnp.dtype(x)


def linear(din: int, dout: int, names: Names, *, rngs: nnx.Rngs, dtype: Any = "float32",
           param_dtype: Any = "float32", use_bias: bool = True,
           kernel_init=torch_default) -> nnx.Linear:
  """nnx.Linear (kernel [din, dout]) with logical axes `names` on the kernel."""
  return nnx.Linear(
    din, dout, use_bias=use_bias, dtype=as_dtype(dtype), param_dtype=as_dtype(param_dtype),
    kernel_init=mesh_lib.logical(kernel_init, names),
    bias_init=mesh_lib.logical(nnx.initializers.zeros_init(), names[-1:]),
    rngs=rngs)


class LayerNorm(nnx.Module):
  """LayerNorm computed in float32; the result is cast back to the input dtype."""

  def __init__(self, dim: int, *, eps: float, param_dtype: Any = "float32", rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(
      dim, epsilon=eps, dtype=jnp.float32, param_dtype=as_dtype(param_dtype),
      use_fast_variance=False,
      scale_init=mesh_lib.logical(nnx.initializers.ones_init(), ("norm",)),
      bias_init=mesh_lib.logical(nnx.initializers.zeros_init(), ("norm",)),
      rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.norm(x.astype(jnp.float32)).astype(x.dtype)


class Deconv(nnx.Module):
  """Transposed convolution whose stride equals its kernel (2x2, stride 2 here).

  With non-overlapping output patches it is exactly one matmul plus a reshape,
  which avoids the kernel-flip and padding conventions of lax.conv_transpose
  and maps to the MXU.  Kernel layout [kh, kw, in, out] (PyTorch's
  ConvTranspose2d weight [in, out, kh, kw] permuted by (2, 3, 0, 1)).
  """

  def __init__(self, din: int, dout: int, k: int = 2, *, rngs: nnx.Rngs, dtype: Any = "float32",
               param_dtype: Any = "float32", names: Names = ("conv_in", "conv_out")):
    self.k = k
    self.dtype = as_dtype(dtype)
    # PyTorch's ConvTranspose2d computes fan_in from weight dim 1 (= out * k * k).
    init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform", in_axis=(0, 1, 3),
                                             out_axis=2)
    self.kernel = nnx.Param(mesh_lib.logical(init, (None, None) + tuple(names))(
      rngs.params(), (k, k, din, dout), as_dtype(param_dtype)))
    self.bias = nnx.Param(mesh_lib.logical(nnx.initializers.zeros_init(), names[-1:])(
      rngs.params(), (dout,), as_dtype(param_dtype)))

  def __call__(self, x: jax.Array) -> jax.Array:
    """[B, H, W, Cin] -> [B, H*k, W*k, Cout]."""
    b, h, w, _ = x.shape
    kern = self.kernel[...].astype(self.dtype)
    y = jnp.einsum("bhwc,ijco->bhiwjo", x.astype(self.dtype), kern)
    y = y.reshape(b, h * self.k, w * self.k, kern.shape[-1])
    return y + self.bias[...].astype(self.dtype)


def gelu(x: jax.Array) -> jax.Array:
  """PyTorch's nn.GELU() default: the exact erf form, not the tanh approximation."""
  return jax.nn.gelu(x, approximate=False)


def quick_gelu(x: jax.Array) -> jax.Array:
  """OpenAI CLIP's activation (FaRL keeps it)."""
  return x * jax.nn.sigmoid(1.702 * x)
