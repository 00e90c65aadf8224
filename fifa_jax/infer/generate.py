"""Compatibility alias: generation lives with the models (`fifa_jax.models.generate`),
which use it; this name stays for code written against it."""

from fifa_jax.models.generate import (GenerateOutput, GenerationConfig, filter_logits,  # noqa: F401
                                      generate, select_token)
