"""Traced programs kept on disk (sk_jax.inference.programs): read back without tracing, equal to
the plain jitted call, and best effort (a torn entry or an unwritable directory is no error)."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from compile_events import compile_events

from sk_jax.inference.programs import Programs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@functools.partial(jax.jit, static_argnames=("power",))
def _poly(x, scale, power=2, shift=None):
  y = scale * x**power
  return y if shift is None else (y + shift, jnp.sum(shift))


def test_a_kept_program_is_read_back_without_tracing_and_equals_the_jitted_call(tmp_path):
  x, scale = jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), jnp.float32(1.5)
  want = _poly(x, scale, power=3, shift=x)
  with compile_events() as first:
    got = Programs(str(tmp_path))(_poly, {"power": 3}, x, scale, shift=x)
  assert ("jaxpr_trace_duration", "_poly") in first
  assert len(list(tmp_path.iterdir())) == 1
  jax.tree.map(np.testing.assert_array_equal, got, want)
  # A new Programs (as in a new process) reads the entry back: _poly is not traced again.
  with compile_events() as again:
    got = Programs(str(tmp_path))(_poly, {"power": 3}, x, scale, shift=x)
  assert "_poly" not in [name for _, name in again], again
  jax.tree.map(np.testing.assert_array_equal, got, want)
  # Another static value, shape or tree is another program.
  Programs(str(tmp_path))(_poly, {"power": 2}, x, scale, shift=x)
  Programs(str(tmp_path))(_poly, {"power": 3}, x[:2], scale, shift=x[:2])
  Programs(str(tmp_path))(_poly, {"power": 3}, x, scale)
  assert len(list(tmp_path.iterdir())) == 4


def test_a_torn_entry_is_traced_again_and_an_unwritable_directory_keeps_nothing(tmp_path):
  x, scale = jnp.arange(6.0), jnp.float32(2.0)
  Programs(str(tmp_path))(_poly, {"power": 2}, x, scale)
  (entry,) = tmp_path.iterdir()
  entry.write_bytes(entry.read_bytes()[:100])
  with compile_events() as events:
    got = Programs(str(tmp_path))(_poly, {"power": 2}, x, scale)
  assert ("jaxpr_trace_duration", "_poly") in events
  np.testing.assert_array_equal(got, _poly(x, scale))
  assert entry.stat().st_size > 100, "the torn entry should have been rewritten whole"
  blocked = tmp_path / "file"
  blocked.write_text("not a directory")
  got = Programs(str(blocked / "programs"))(_poly, {"power": 2}, x, scale)
  np.testing.assert_array_equal(got, _poly(x, scale))
  assert blocked.read_text() == "not a directory"
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_second_cli_run_traces_neither_the_encoder_nor_the_generator(
  tmp_path, photo, texture, tiny_checkpoint
):
  """`sk-jax stylize` twice with one cache directory: the second process loads both programs
  (the CLI's start-up, benchmarks/startup.py) and writes the same image."""
  from PIL import Image

  content, style = tmp_path / "c.png", tmp_path / "s.png"
  Image.fromarray((photo[:40, :56] * 255).astype(np.uint8)).save(content)
  Image.fromarray((texture[:48, :40] * 255).astype(np.uint8)).save(style)
  # Prints the functions traced in the process, after the CLI's own output.
  code = (
    "import sys, jax; seen = [];"
    "jax.monitoring.register_event_duration_secs_listener("
    "lambda e, d, **k: seen.append(k.get('fun_name')) if e.endswith('trace_duration') else None);"
    "from sk_jax.cli import main; rc = main(sys.argv[1:]); print('TRACED', sorted(set(seen)))"
  )
  cache = tmp_path / "cache"
  env = dict(os.environ, PYTHONPATH=ROOT, SK_JAX_CACHE_DIR=str(cache))
  traced, images = [], []
  for run in range(2):
    out = tmp_path / f"out{run}.png"
    args = ["stylize", "--checkpoint", tiny_checkpoint, "--size", "0"]
    args += ["--content", str(content), "--style", str(style)]
    r = subprocess.run(
      [sys.executable, "-c", code, *args, "--output", str(out)],
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    traced.append(r.stdout.rsplit("TRACED", 1)[1])
    images.append(np.asarray(Image.open(out)))
  assert "_apply" in traced[0] and "_encode" in traced[0], traced[0]
  assert "_apply" not in traced[1] and "_encode" not in traced[1], traced[1]
  assert len(list((cache / "programs").iterdir())) == 2
  np.testing.assert_array_equal(images[1], images[0])
