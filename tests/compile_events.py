"""A test helper: the jit traces and XLA compilations that happen inside a block."""

import contextlib

import jax

_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration")


@contextlib.contextmanager
def compile_events():
  """[(event, function name)] of every jit trace and XLA compilation inside the block."""
  seen = []

  def listen(event, duration, **kwargs):
    del duration
    if event in _EVENTS:
      seen.append((event.rsplit("/", 1)[-1], kwargs.get("fun_name")))

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield seen
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
