"""Traced programs kept on disk (`jax.export`), so that a later process does not trace them again.

    programs = Programs("/path/to/cache/programs")   # None: off (plain jit calls)
    out = programs(_apply, {"config": config, "query_chunk": None}, params, z, image, alpha=a)

The persistent XLA cache (`compile_cache`) saves the compilation; tracing the generator through
Flax and lowering it still cost about a CPU-second per `sk-jax stylize` call here
(benchmarks/startup.py). Each program is exported once per signature (the function, its static
arguments, the tree, shapes and dtypes of the array arguments, jax's version, the platform and
a digest of sk_jax's sources) and read back by later processes; `jax.jit(exported.call)` then
lowers a call of the kept module (0.4 CPU-seconds here, against 0.9 for tracing and lowering
the network) and compiles it, which the XLA cache answers. The cache only saves time: an entry
that cannot be written or read back (a full or read-only disk, a torn file) is traced again,
with no error. Entries are written whole (a temporary file, then a rename).
"""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import tempfile

import jax

_PACKAGE = pathlib.Path(__file__).resolve().parents[1]


@functools.cache
def source_digest() -> str:
  """sha256 of sk_jax's Python sources: an edited checkout never reads a stale program."""
  digest = hashlib.sha256()
  for path in sorted(_PACKAGE.rglob("*.py")):
    digest.update(str(path.relative_to(_PACKAGE)).encode())
    digest.update(path.read_bytes())
  return digest.hexdigest()


def _signature(fn, statics: dict, args, kwargs) -> str:
  leaves, tree = jax.tree.flatten((args, kwargs))
  parts = [
    getattr(fn, "__qualname__", repr(fn)),
    repr(sorted(statics.items())),
    str(tree),
    repr([(x.shape, str(x.dtype)) for x in leaves]),
    jax.__version__,
    jax.default_backend(),
    os.environ.get("XLA_FLAGS", ""),
    source_digest(),
  ]
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()


class Programs:
  """Calls of jitted functions, each exported to `directory` once and loaded back after."""

  def __init__(self, directory: str | None):
    self.directory = directory
    self._loaded: dict[str, object] = {}

  def __call__(self, fn, statics: dict, *args, **kwargs):
    """fn(*args, **statics, **kwargs) for a jitted fn: statics are its static arguments (by
    name), args and kwargs arrays or pytrees of them. With no directory, that plain call."""
    return self.get(fn, statics, *args, **kwargs)(*args, **kwargs)

  def get(self, fn, statics: dict, *args, **kwargs):
    """The callable (*args, **kwargs) -> fn(*args, **statics, **kwargs): the kept program,
    jitted (exported now if it was not kept); with no directory, fn with its statics bound."""
    if self.directory is None:
      return functools.partial(fn, **statics)
    key = _signature(fn, statics, args, kwargs)
    if key not in self._loaded:
      self._loaded[key] = self._load(key, fn, statics, args, kwargs)
    return self._loaded[key]

  def _load(self, key: str, fn, statics: dict, args, kwargs):
    path = os.path.join(self.directory, key + ".jax_export")
    try:
      with open(path, "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    except Exception:  # absent, unreadable or torn: export it (again)
      exported = jax.export.export(jax.jit(functools.partial(fn, **statics)))(*args, **kwargs)
      self._write(path, exported.serialize())
    return jax.jit(exported.call)

  def _write(self, path: str, data: bytes) -> None:
    try:
      os.makedirs(self.directory, exist_ok=True)
      fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
      try:
        with os.fdopen(fd, "wb") as f:
          f.write(data)
        os.replace(tmp, path)
      except BaseException:
        os.remove(tmp)
        raise
    except OSError:
      pass  # a full or read-only disk: the program is simply not kept
