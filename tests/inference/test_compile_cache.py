"""The persistent compilation cache of `sk-jax stylize` (sk_jax/compile_cache.py) and what the
command imports: real subprocesses, as a user runs them."""

import json
import os
import subprocess
import sys

import pytest

from sk_jax.inference import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What `sk-jax stylize` with the bundled generator must not import (each costs start-up time).
HEAVY = (
  "torch",
  "tensorflow",
  "tensorflow_datasets",
  "grain",
  "orbax",
  "optax",
  "matplotlib",
  "tensorboardX",
  "ml_collections",
  "onnxruntime",
)
_RUN = (
  "import json, sys\n"
  "from sk_jax.cli import main\n"
  "rc = main(sys.argv[1:])\n"
  f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
  "sys.exit(rc)\n"
)


def _start(tmp_path, cache: str, name: str) -> subprocess.Popen:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env.update(SK_JAX_CACHE_DIR=cache, PYTHONPATH=ROOT, XLA_FLAGS="")
  args = ["--content", "skimage:astronaut", "--style", "skimage:brick", "--size", "16"]
  return subprocess.Popen(
    [sys.executable, "-c", _RUN, "stylize", *args, "--output", str(tmp_path / f"{name}.png")],
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def _finish(proc: subprocess.Popen) -> list[str]:
  """Waits; asserts a clean run (exit 0, only the kept-fraction line on stderr); returns the
  heavy modules the run imported."""
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err
  assert [line for line in err.splitlines() if "kept fraction" not in line] == [], err
  return json.loads(out.splitlines()[-1])


def _entries(cache) -> set[str]:
  return {n for n in os.listdir(cache) if n.endswith("-cache")}


@pytest.mark.slow
def test_runs_share_the_cache_concurrently_and_an_unwritable_one_is_off(tmp_path):
  cache = tmp_path / "xla"
  first = [_start(tmp_path, str(cache), f"a{i}") for i in range(2)]
  for proc in first:
    _finish(proc)
  written = _entries(cache)
  assert written, "the first runs wrote no compiled programs"
  # A file where the directory should be: the cache cannot be created, the run goes on without.
  (tmp_path / "file").write_text("")
  blocked = _start(tmp_path, str(tmp_path / "file" / "xla"), "blocked")
  again = _start(tmp_path, str(cache), "again")
  assert _finish(again) == [], "sk-jax stylize imported modules it does not need"
  _finish(blocked)
  # The second run found every program it needed: it added none.
  assert _entries(cache) == written


def test_resolve_follows_flag_then_environment_then_xdg(monkeypatch, tmp_path):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  monkeypatch.delenv(compile_cache.ENV, raising=False)
  monkeypatch.setattr(compile_cache, "_jax_dir", lambda: None)
  assert compile_cache.resolve() == str(tmp_path / "xdg" / "sk-jax" / "xla")
  monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "env"))
  assert compile_cache.resolve() == str(tmp_path / "env")
  assert compile_cache.resolve(str(tmp_path / "flag")) == str(tmp_path / "flag")
  for off in ("off", "OFF", ""):
    monkeypatch.setenv(compile_cache.ENV, off)
    assert compile_cache.resolve() is None
  assert compile_cache.resolve("off") is None
