"""StableHLO export: the stylizer serialized with `jax.export`, all five sizes symbolic and checked
when called (a size that is not a multiple of 8 is refused); sk_jax.export.function has the
calling convention."""

from __future__ import annotations

import os
import pathlib

import jax

from sk_jax.errors import ArgumentError, InputError
from sk_jax.export.function import input_specs, stylizer_fn, write_file
from sk_jax.io import files

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def check_platforms(platforms) -> tuple[str, ...]:
  platforms = tuple(p.strip().lower() for p in platforms if p.strip())
  if not platforms:
    raise ArgumentError("platforms", f": name at least one of {', '.join(PLATFORMS)}")
  bad = [p for p in platforms if p not in PLATFORMS]
  if bad:
    raise ArgumentError(
      "platforms", f": unknown platform {bad[0]!r}; choose from {', '.join(PLATFORMS)}"
    )
  return tuple(dict.fromkeys(platforms))


def export_stablehlo(params, vgg_params, config, platforms=("cpu",)) -> jax.export.Exported:
  """Exports the stylizer with `jax.export`: symbolic batch and sizes, weights embedded.

  Args:
    params, vgg_params, config: as for `stylizer_fn`.
    platforms: any of "cpu", "cuda", "rocm", "tpu"; one artifact serves all of them.

  Returns:
    The `jax.export.Exported`; `.serialize()` gives the bytes that `save_stablehlo` writes.
  """
  platforms = check_platforms(platforms)
  return jax.export.export(jax.jit(stylizer_fn(params, vgg_params, config)), platforms=platforms)(
    *input_specs()
  )


def save_stablehlo(path: str, exported: jax.export.Exported) -> str:
  """Writes `exported.serialize()` to `path` atomically; returns the absolute path."""
  blob = exported.serialize()
  write_file(path, lambda tmp: pathlib.Path(tmp).write_bytes(blob))
  return os.path.abspath(path)


def load_stablehlo(path: str) -> jax.export.Exported:
  """Reads a serialized stylizer: `jax.export.deserialize` of the file's bytes (needs only jax).

  Call it as `exported.call(content, style)`.
  """
  files.check_input(path, "a serialized StableHLO file")
  with open(path, "rb") as f:
    blob = f.read()
  try:
    return jax.export.deserialize(bytearray(blob))
  except Exception as e:  # flatbuffer and version errors have no common type
    raise InputError(f"{path}: not a serialized jax.export artifact ({type(e).__name__})") from None
