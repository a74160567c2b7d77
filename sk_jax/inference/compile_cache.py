"""The persistent XLA compilation cache: a program compiled once is read back by later runs.

    import sk_jax
    sk_jax.enable_compile_cache()            # SK_JAX_CACHE_DIR, or the per-user directory
    sk_jax.enable_compile_cache("/tmp/c")    # a directory of your own; "off" leaves it off

`sk-jax stylize`, `stylize-video` and `Stylizer` turn it on by default (`--compile-cache`,
`Stylizer(compile_cache=...)`). Where: `--compile-cache DIR`, else `$SK_JAX_CACHE_DIR`, else a
directory JAX was already given (`JAX_COMPILATION_CACHE_DIR`, which the tests set), else
`$XDG_CACHE_HOME/sk-jax/xla` (`~/.cache/sk-jax/xla`). "off" or an empty `SK_JAX_CACHE_DIR`
turns it off for the process. A directory that cannot be created or written (read-only, a full disk) leaves
the cache off, silently: it only saves time. Entries are read and written under JAX's file
lock (it locks when the cache has a size limit), so concurrent runs share one directory; the
least recently used entries go beyond `MAX_BYTES`.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings

import jax

ENV = "SK_JAX_CACHE_DIR"
OFF = ("", "off")
DEFAULT = "default"
MAX_BYTES = 2 * 2**30
# JAX warns (once per program) when an entry cannot be written or read back (a full disk, a
# torn file); the cache is best effort, so that is not the user's concern.
_JAX_WARNINGS = r"Error (writing|reading) persistent compilation cache entry"


def default_dir() -> str:
  """$XDG_CACHE_HOME/sk-jax/xla, or ~/.cache/sk-jax/xla."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "sk-jax", "xla")


def _jax_dir() -> str | None:
  """The directory JAX's own configuration names (`JAX_COMPILATION_CACHE_DIR`), if any."""
  return jax.config.jax_compilation_cache_dir or None


def resolve(path: str | None = DEFAULT) -> str | None:
  """The directory `enable_compile_cache(path)` would use (not checked), or None for off."""
  if path is None or path.strip().lower() in OFF:
    return None
  if path != DEFAULT:
    return os.path.abspath(os.path.expanduser(path))
  if ENV in os.environ:
    return resolve(os.environ[ENV] or "off")
  return _jax_dir() or default_dir()


def _configured_by_user(path: str | None) -> bool:
  """Whether "default" falls back on a directory JAX was given outside sk-jax (whose settings
  are then left as they are)."""
  return path == DEFAULT and ENV not in os.environ and _jax_dir() is not None


def _writable(path: str) -> bool:
  try:
    os.makedirs(path, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=path, prefix=".probe-")
    try:
      os.write(fd, b"0" * 4096)
    finally:
      os.close(fd)
      os.remove(probe)
    return True
  except OSError:
    return False


def enable_compile_cache(path: str | None = DEFAULT) -> str | None:
  """Points JAX's persistent compilation cache at `path` (see the module docstring for
  "default" and "off"); returns the directory in use, or None when the cache is off. Every
  compiled program is kept (no minimum compile time or size). A directory JAX was given
  before (`JAX_COMPILATION_CACHE_DIR`) is used with the settings it was given."""
  from jax.experimental.compilation_cache import compilation_cache

  directory = resolve(path)
  if directory is None or not _writable(directory):
    if jax.config.jax_compilation_cache_dir:
      jax.config.update("jax_compilation_cache_dir", None)
      compilation_cache.reset_cache()
    return None
  if _configured_by_user(path):
    return directory
  if jax.config.jax_compilation_cache_dir != directory:
    jax.config.update("jax_compilation_cache_dir", directory)
    # JAX opens its cache at the first compilation; a later change of directory needs a reset.
    compilation_cache.reset_cache()
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  if importlib.util.find_spec("filelock") is not None:
    # A size limit turns on JAX's eviction, and with it the file lock around reads and writes.
    jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
  warnings.filterwarnings("ignore", message=_JAX_WARNINGS)
  return directory
