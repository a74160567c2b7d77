"""Training configs: loading configs/*.py (`load_config`; `sk-jax train` and train.py parse them
with absl's config flags instead) and checking them before anything compiles.

configs/ is a package: a variant imports the default as `from configs import default`.
`importable(path)` puts the folder above such a package on sys.path while a config loads, so
that this works from any working directory, also for configs outside the checkout.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from typing import TYPE_CHECKING

from sk_jax.errors import InputError
from sk_jax.io import files
from sk_jax.nn.discriminator import DiscriminatorConfig
from sk_jax.nn.generator import ModelConfig

# ml_collections is imported where a config is loaded: the commands that load none (`sk-jax
# stylize`) never import it.
if TYPE_CHECKING:
  import ml_collections

# The checkout's default config (absent from an installed package: pass --config then).
DEFAULT_CONFIG = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.py"
)


@contextlib.contextmanager
def importable(path: str):
  """While it lasts, the package that holds config file `path` (a folder with __init__.py, such
  as configs/) can be imported by its name."""
  folder = os.path.dirname(os.path.abspath(path))
  root = os.path.dirname(folder)
  added = os.path.isfile(os.path.join(folder, "__init__.py")) and root not in sys.path
  if added:
    sys.path.insert(0, root)
  try:
    yield
  finally:
    if added:
      sys.path.remove(root)


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Runs `get_config()` of a Python config file; any failure is an InputError naming the file."""
  import ml_collections

  if not os.path.lexists(path):
    raise InputError(f"{path}: no such config file")
  files.check_input(path, "a config file (configs/*.py)")
  try:
    with importable(path):
      spec = importlib.util.spec_from_file_location("_sk_jax_config", path)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      cfg = module.get_config(arg) if arg is not None else module.get_config()
  except Exception as e:
    raise InputError(f"{path}: malformed config ({type(e).__name__}: {e})") from None
  if not isinstance(cfg, ml_collections.ConfigDict) or "model" not in cfg:
    raise InputError(f"{path}: get_config() must return a ConfigDict with a 'model' group")
  return cfg


# The groups training reads.
GROUPS = ("model", "disc", "loss", "opt", "data", "train", "ckpt", "log", "eval", "mesh")

# Per-step metrics a checkpoint can be ranked by (ckpt.best_metric).
STEP_METRICS = tuple(
  f"loss/{k}"
  for k in ("total", "content", "style", "remd", "rec", "rec_pixel", "rec_feature", "adv_g", "d")
) + ("grad_norm/g", "grad_norm/d", "gate/kept_fraction")


# Metrics of evaluation while training (sk_jax.train.train_eval; needs eval.every > 0).
EVAL_METRICS = tuple(
  f"eval/{k}"
  for k in ("content_loss", "style_loss", "style_loss_gram", "ssim", "cfsd", "kept_fraction")
)


def validate_config(cfg) -> tuple[ModelConfig, DiscriminatorConfig]:
  """Checks the fields training reads; returns the frozen model configs. Raises InputError."""
  missing = [g for g in GROUPS if not hasattr(cfg, "keys") or g not in cfg]
  if missing:
    raise InputError(
      f"config: no {', '.join(repr(g) for g in missing)} group (see configs/default.py; "
      "variants call its get_config() and change a few fields)"
    )
  model = ModelConfig.from_dict(cfg.model)
  disc = DiscriminatorConfig.from_dict(cfg.disc)
  checks = [
    (
      cfg.loss.style_form in ("mean_std", "gram"),
      f"loss.style_form must be 'mean_std' or 'gram', got {cfg.loss.style_form!r}",
    ),
    (
      cfg.loss.gan in ("lsgan", "hinge"),
      f"loss.gan must be 'lsgan' or 'hinge', got {cfg.loss.gan!r}",
    ),
    (cfg.loss.remd_max_positions >= 0, "loss.remd_max_positions must be >= 0 (0: no cap)"),
    (cfg.opt.lr > 0, f"opt.lr must be positive, got {cfg.opt.lr}"),
    (cfg.opt.max_nonfinite >= 1, "opt.max_nonfinite must be >= 1"),
    (cfg.train.steps >= 1, f"train.steps must be >= 1, got {cfg.train.steps}"),
    (cfg.train.d_every >= 1, f"train.d_every must be >= 1, got {cfg.train.d_every}"),
    (cfg.data.batch_size >= 1, f"data.batch_size must be >= 1, got {cfg.data.batch_size}"),
    (cfg.ckpt.every >= 1 and cfg.ckpt.keep >= 1, "ckpt.every and ckpt.keep must be >= 1"),
    (
      cfg.ckpt.best_mode in ("min", "max"),
      f"ckpt.best_mode must be 'min' or 'max', got {cfg.ckpt.best_mode!r}",
    ),
    (
      cfg.ckpt.best_metric in (None, "", *STEP_METRICS, *EVAL_METRICS),
      f"ckpt.best_metric {cfg.ckpt.best_metric!r} is not one of "
      f"{', '.join(STEP_METRICS + EVAL_METRICS)}",
    ),
    (
      cfg.log.every >= 1 and cfg.log.image_every >= 0,
      "log.every must be >= 1 and log.image_every >= 0",
    ),
  ]
  for ok, message in checks:
    if not ok:
      raise InputError(f"config: {message}")
  parse_profile(cfg.log.get("profile"))
  if cfg.ckpt.best_metric in EVAL_METRICS and not cfg.eval.every:
    raise InputError(f"config: ckpt.best_metric={cfg.ckpt.best_metric} needs eval.every > 0")
  return model, disc


def parse_profile(spec) -> tuple[int, int] | None:
  """ "START:STOP" -> (START, STOP), "" or None -> None; anything else is an InputError."""
  if not spec:
    return None
  try:
    start, stop = (int(x) for x in str(spec).split(":"))
  except ValueError:
    start = stop = -1
  if not 0 <= start < stop:
    raise InputError(
      f"config: log.profile must be 'START:STOP' with 0 <= START < STOP (steps), got {spec!r}"
    )
  return start, stop
