"""What a training step costs, per logged interval, and a profiler trace of chosen steps.

`StepClock` turns wall time, the time spent waiting for the data iterators and the analytic
FLOPs of one step (sk_jax.train.flops.train_step_flops) into the `throughput/...` metrics:
  steps_per_s, images_per_s            the whole run (all devices)
  step_s, data_wait_s                  host seconds per step, and the part of it spent in
                                       next() of the data iterators and building the global batch
  data_wait_share                      data_wait_s / step_s (near 0: the input keeps up)
  images_per_s_per_device
  tflops_per_device                    model TFLOP/s per device (analytic, the same on any backend)
  mfu                                  tflops_per_device / the device's peak (sk_jax.train.hardware),
                                       or "unknown" where the table has no peak (the CPU)
Steps are dispatched asynchronously: the host waits for the device when it reads the metrics
of a logged step, so over an interval the wall time is the device's plus whatever the device
sat idle for data, which is what data_wait_share bounds.

`Profile` writes a jax.profiler trace of steps START..STOP-1 (`log.profile="START:STOP"`,
counted as the loop counts: step START is the (START + 1)-th update) into WORKDIR/profile.
"""

from __future__ import annotations

import contextlib
import os
import time

from sk_jax.config import parse_profile

PROFILE_DIR = "profile"


class StepClock:
  @classmethod
  def for_run(cls, cfg, model, disc, mesh) -> StepClock:
    """The clock of a training run of `cfg` on `mesh` (the first device's peak)."""
    import jax

    from sk_jax.train import flops, hardware

    peak, _ = hardware.peak_flops(
      mesh.devices.flat[0], model.dtype, jax.config.jax_default_matmul_precision
    )
    return cls(sum(flops.train_step_flops(cfg, model, disc).values()), mesh.size, peak)

  def __init__(self, flops_per_step: float, num_devices: int, peak_flops: float | None):
    self.flops, self.devices, self.peak = flops_per_step, num_devices, peak_flops
    self.t0, self.steps, self.wait = time.perf_counter(), 0, 0.0

  @contextlib.contextmanager
  def data_wait(self):
    t = time.perf_counter()
    try:
      yield
    finally:
      self.wait += time.perf_counter() - t

  def step_done(self) -> None:
    self.steps += 1

  def interval(self, batch_size: int) -> dict:
    """The metrics of the steps since the last call, and a new interval begins."""
    now = time.perf_counter()
    elapsed, steps = now - self.t0, max(self.steps, 1)
    steps_per_s = steps / elapsed
    tflops = self.flops * steps_per_s / self.devices / 1e12
    m = {
      "throughput/steps_per_s": steps_per_s,
      "throughput/images_per_s": steps_per_s * batch_size,
      "throughput/step_s": elapsed / steps,
      "throughput/data_wait_s": self.wait / steps,
      "throughput/data_wait_share": self.wait / elapsed,
      "throughput/images_per_s_per_device": steps_per_s * batch_size / self.devices,
      "throughput/tflops_per_device": tflops,
      "throughput/mfu": tflops * 1e12 / self.peak if self.peak else "unknown",
    }
    self.t0, self.steps, self.wait = now, 0, 0.0
    return m


class Profile:
  """A jax.profiler trace of the steps [START, STOP) into WORKDIR/profile (process 0 only)."""

  def __init__(self, spec, workdir: str, enabled: bool):
    self.window = parse_profile(spec) if enabled else None
    self.dir = os.path.join(workdir, PROFILE_DIR)
    self.active = False

  def before(self, step: int) -> None:
    if self.window and step == self.window[0] and not self.active:
      import jax

      jax.profiler.start_trace(self.dir)
      self.active = True

  def after(self, done: int, state) -> None:
    if self.active and done >= self.window[1]:
      self.stop(state)

  def stop(self, state=None) -> None:
    if not self.active:
      return
    import jax
    from absl import logging

    if state is not None:
      jax.block_until_ready(state)  # the traced steps' device work belongs in the trace
    jax.profiler.stop_trace()
    self.active = False
    logging.info("profile of steps %d:%d written to %s", *self.window, self.dir)
