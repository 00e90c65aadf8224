"""The endpoint client now lives in fifa_jax/endpoint.py (shared with Deepfake-Agent); this name stays."""

from fifa_jax.endpoint import ChatClient, ExplainError, Usage  # noqa: F401

__all__ = ["ChatClient", "ExplainError", "Usage"]
