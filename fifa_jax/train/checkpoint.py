"""Compatibility names: run checkpoints live in `fifa_jax.checkpoint`."""

from fifa_jax.checkpoint import (Checkpointer, DataStateHandler, DataStateRestore,  # noqa: F401
                                 DataStateSave, from_saveable, latest_step, load_params,
                                 saveable_abstract, to_saveable)
