"""fifa-jax: Fake-in-Facext (FiFa) in JAX/Flax.

Importing the package is cheap and imports no jax: `fifa_jax.fict`,
`fifa_jax.tokens` templates and `fifa_jax.data.records` encoders are shared with
data_prep, which runs in its own environment.
"""

__version__ = "0.1.0"
