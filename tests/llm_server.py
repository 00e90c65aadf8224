"""The loopback OpenAI-compatible server the tests script (fifa_jax/endpoint.py's, under
the name the tests have used): `respond(body)` -> (HTTP status, reply text); `calls`
records (path, Authorization header, body) per request."""

from fifa_jax.endpoint import LocalChatServer as LoopbackLLM  # noqa: F401
