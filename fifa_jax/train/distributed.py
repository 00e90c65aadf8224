"""Multi-host start-up with clear failures: `jax.distributed.initialize` and barriers, both timed."""

from __future__ import annotations

import os
import signal
import socket
import sys

import jax

from fifa_jax.config import DistributedConfig


class DistributedError(RuntimeError):
  pass


def launched_by_cluster() -> bool:
  """True under a multi-process SLURM job or on a multi-host TPU slice."""
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def maybe_initialize(dc: DistributedConfig) -> bool:
  """Call jax.distributed.initialize when asked (or, with 'auto', when a cluster launched us)."""
  if dc.initialize == "false" or (dc.initialize == "auto" and not launched_by_cluster()
                                  and dc.coordinator is None):
    return False
  kw = {k: v for k, v in (("coordinator_address", dc.coordinator),
                          ("num_processes", dc.num_processes), ("process_id", dc.process_id))
        if v is not None}
  try:
    jax.distributed.initialize(initialization_timeout=dc.timeout_s, **kw)
  except Exception as e:  # noqa: BLE001 - re-raised with what to check
    raise DistributedError(
        f"jax.distributed.initialize did not complete within {dc.timeout_s}s "
        f"(coordinator={dc.coordinator or 'auto-detected'}, num_processes={dc.num_processes or 'auto'}, "
        f"process_id={dc.process_id if dc.process_id is not None else 'auto'}, host={socket.gethostname()}): "
        f"{e}. Check that every host runs the same command and can reach the coordinator's port.") from e
  return True


def barrier(name: str, timeout_s: int) -> None:
  """Wait until every process arrives, or fail after `timeout_s` naming the barrier."""
  if jax.process_count() == 1:
    return
  # lazy: multi-process only (jax keeps its client in a private module)
  from jax._src import distributed as _dist

  client = _dist.global_state.client
  try:
    client.wait_at_barrier(name, timeout_in_ms=int(timeout_s * 1000))
  except Exception as e:  # noqa: BLE001
    raise DistributedError(f"barrier {name!r}: not all {jax.process_count()} processes arrived within "
                           f"{timeout_s}s (this is process {jax.process_index()} on "
                           f"{socket.gethostname()}): {e}") from e


class Preemption:
  """SIGTERM, agreed on by every host: `reached(step)` is True at the same step everywhere.

  One process: a Python SIGTERM handler sets a flag, read at the next step.  Several
  processes: jax's preemption service (started by jax.distributed.initialize) catches
  SIGTERM on whichever host receives it, tells the others through the coordinator, and
  names the first step every host can still reach; each host saves that step
  (`multihost_utils.reached_preemption_sync_point`, what orbax's `reached_preemption`
  uses).  The service's handler is its own (C++), so no Python handler is installed
  then: one would replace it.
  """

  def __init__(self):
    # lazy: multi-process only (jax keeps its client in a private module)
    from jax._src import distributed as _dist
    self.multi = jax.process_count() > 1 and _dist.global_state.preemption_sync_manager is not None
    self.flag = False
    self.previous = None
    if not self.multi:
      self.previous = signal.signal(signal.SIGTERM, self._set)

  def _set(self, *_):
    self.flag = True

  def reached(self, step: int) -> bool:
    """Call at every step, on every host, with the same (increasing) step numbers."""
    if not self.multi:
      return self.flag
    from jax.experimental import multihost_utils  # lazy: as above
    return bool(multihost_utils.reached_preemption_sync_point(step))

  def close(self) -> None:
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)
      self.previous = None


def describe_host(mesh) -> str:
  local = ", ".join(f"{d.platform}:{d.id}" for d in jax.local_devices())
  return (f"[process {jax.process_index()}/{jax.process_count()} on {socket.gethostname()}] "
          f"local devices ({jax.local_device_count()}): {local}; global devices {jax.device_count()} "
          f"({jax.devices()[0].device_kind}); mesh {dict(mesh.shape)}")


def log_hosts(mesh) -> None:
  """Every host prints its own line before the first step (stderr, flushed)."""
  print(describe_host(mesh), file=sys.stderr, flush=True)
