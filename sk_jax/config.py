"""Loading configs/*.py files outside absl (the `sk-jax` CLI); train.py uses absl's config flags."""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from sk_jax.errors import InputError


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Runs `get_config()` of a Python config file; any failure is an InputError naming the file."""
  if not os.path.isfile(path):
    raise InputError(f"{path}: no such config file")
  try:
    spec = importlib.util.spec_from_file_location("_sk_jax_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config(arg) if arg is not None else module.get_config()
  except Exception as e:
    raise InputError(f"{path}: malformed config ({type(e).__name__}: {e})") from None
  if not isinstance(cfg, ml_collections.ConfigDict) or "model" not in cfg:
    raise InputError(f"{path}: get_config() must return a ConfigDict with a 'model' group")
  return cfg
