"""fifa-jax: Fake-in-Facext (FiFa) in JAX/Flax.

Importing the package is cheap and imports no jax: `fifa_jax.fict`,
`fifa_jax.tokens` templates and `fifa_jax.data.records` encoders are shared with
data_prep, which runs in its own environment.  `fifa_jax.FiFa` (the Python API,
`fifa_jax/api.py`) loads jax when first named.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
  if name in ("FiFa", "Answer", "Grounded"):
    # lazy: `import fifa_jax` stays free of jax for data_prep and `fifa --help`
    from fifa_jax import api
    return getattr(api, name)
  raise AttributeError(f"module 'fifa_jax' has no attribute {name!r}")
