"""Stopping a run cleanly: SIGTERM, Ctrl-C and the preemption notices of a cluster.

SIGTERM (a preemption notice, `docker stop`, a scheduler's time limit) and the first SIGINT
(Ctrl-C) ask the trainer to finish the step it is on, save a checkpoint at that step
synchronously and exit with `EXIT_PREEMPTED`; running the same command again resumes there.
A second SIGINT stops at once (KeyboardInterrupt, exit 130, nothing saved).

Which step: on one process the request is a flag set by the handler, checked after every
step. With several processes (`jax.distributed`) all of them must save the same step, so the
agreement goes through JAX's preemption service: its notifier owns SIGTERM (it is installed
by `jax.distributed.initialize` and reports the notice to the coordination service), and
Orbax's `CheckpointManager.reached_preemption(step)` (JAX's
`multihost_utils.reached_preemption_sync_point`) is True on every process at the same step,
one past the furthest any of them had reached. A SIGINT on one process is passed on to that
notifier as a SIGTERM. Cluster preemption notices that reach the coordination service (TPU
VMs) take the same path.
"""

from __future__ import annotations

import os
import signal

import jax
from absl import logging

from sk_jax.errors import EXIT_PREEMPTED, Preempted

__all__ = ["EXIT_PREEMPTED", "Preempted", "StopRequests", "exit_on_lost_peer"]


class StopRequests:
  """Installs the signal handlers for the duration of a `with` block (main thread only)."""

  def __init__(self):
    self.signal_name: str | None = None
    self.multiprocess = jax.process_count() > 1
    self._previous = {}

  def __enter__(self):
    import threading

    if threading.current_thread() is not threading.main_thread():
      return self  # signals are delivered to the main thread; a trainer in a thread has none
    self._install(signal.SIGINT)
    if not self.multiprocess:  # with several processes JAX's notifier owns SIGTERM
      self._install(signal.SIGTERM)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous.clear()
    return False

  def _install(self, sig) -> None:
    self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame) -> None:
    name = signal.Signals(signum).name
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # the second Ctrl-C: stop now
    first = self.signal_name is None
    self.signal_name = self.signal_name or name
    if first:
      logging.warning("%s: finishing this step, then saving a checkpoint and exiting", name)
    if self.multiprocess and signum == signal.SIGINT and first:
      # Through the preemption service, so that every process stops at the same step.
      os.kill(os.getpid(), signal.SIGTERM)

  def should_stop(self, mngr, step: int) -> bool:
    """True when the run must save `step` and stop (the same answer on every process)."""
    if mngr.reached_preemption(step):
      self.signal_name = self.signal_name or "a preemption notice"
      return True
    return not self.multiprocess and self.signal_name is not None

  def message(self, mngr, step: int, saved: int | None) -> str:
    """The one line of a stop: what stopped it, the step and its checkpoint."""
    where = f"{mngr.directory}/{saved}" if saved is not None else "none"
    return (
      f"stopped by {self.signal_name} after step {step}; checkpoint {where}; "
      "run the same command again to resume"
    )


def exit_on_lost_peer(error: BaseException, mngr, step: int) -> None:
  """A failed collective of a multi-process run (a killed or crashed peer): one line on stderr
  naming the last committed checkpoint, then exit 1 at once. Nothing is saved, and the usual
  clean-up (waiting for a save in flight, Orbax's and JAX's shutdown barriers) is skipped: it
  would wait for the dead peer. If no collective fails first, JAX's coordination service stops
  this process after mesh.heartbeat_timeout_s."""
  import sys

  print(
    # On a line of its own: the progress bar is not closed.
    f"\ntrain.py: lost a peer process at step {step} ({str(error).splitlines()[0][:200]}); "
    f"last committed checkpoint: {mngr.directory}/{mngr.latest_step()}; "
    "run the same command on every host to resume",
    file=sys.stderr,
    flush=True,
  )
  os._exit(1)
