"""Trains StyleKernel: python train.py --config configs/default.py --workdir DIR [--config.opt.lr=2e-4]

Running the same command again in the same workdir resumes from its latest complete
checkpoint. `--export OUT` writes the generator of the latest checkpoint for
`sk-jax stylize` instead of training (as `sk-jax export` does). Everything else lives
in sk_jax/train.py.
"""

import difflib
import logging as py_logging
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split()) or type(e).__name__


def _config_path(argv) -> str:
  """The --config file named on the command line (without a ':ARG' suffix), else the default."""
  path = _DEFAULT_CONFIG
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
    elif arg.startswith("--config="):
      path = arg.split("=", 1)[1]
  return path.split(":", 1)[0]


def _unknown_field(argv, key: str) -> str | None:
  """ "unknown config field 'opt.lrr'; close matches: ..." for the override that names `key`."""
  names = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  name = next((n for n in names if key in n.split(".")), None)
  if name is None:
    return None
  fields = []
  try:  # the config's fields, for the suggestions
    from sk_jax.config import load_config

    def walk(d, prefix=""):
      for k, v in d.items():
        fields.append(prefix + k)
        if hasattr(v, "items"):
          walk(v, f"{prefix}{k}.")

    walk(load_config(_config_path(argv)))
  except Exception:
    pass
  close = difflib.get_close_matches(name, fields, n=3, cutoff=0.6)
  return f"unknown config field '{name}'" + (
    f"; close matches: {', '.join(close)}" if close else ""
  )


def _config_error(e: BaseException, argv) -> str | None:
  """ "FILE: malformed config (ValueError: boom)" when loading the config file raised: the
  innermost exception that ml_collections' "Error whilst parsing config file" wraps."""
  chain, seen = [], set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    chain.append(e)
    e = e.__cause__ or e.__context__
  if not any("Error whilst parsing config file" in str(x) for x in chain):
    return None
  inner = chain[-1]
  path = _config_path(argv)
  if "Error whilst parsing config file" in str(inner):  # nothing underneath: its last line
    text = str(inner).strip().splitlines()[-1]
    return f"{path}: malformed config ({text})"
  return f"{path}: malformed config ({type(inner).__name__}: {_one_line(inner)})"


def _flag_error(e: BaseException, argv):
  cause = e if isinstance(e, KeyError) else e.__context__ or e.__cause__
  key = (
    str(cause.args[0]).splitlines()[0].strip("'\"")
    if isinstance(cause, KeyError) and cause.args
    else None
  )
  message = _unknown_field(argv, key) if key else None
  if message is None:
    message = _config_error(e, argv)
  print(f"train.py: error: {message or _one_line(e)}", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv):
  """absl's parser, but a malformed config or flag is one line on stderr and exit code 2."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # flags.Error, or whatever the config file raised while loading
    _flag_error(e, argv)


# The default is found from any working directory.
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")
try:  # the default config is loaded here already, with the --config.* overrides of sys.argv
  _CONFIG = config_flags.DEFINE_config_file(
    "config", _DEFAULT_CONFIG, "training config file", lock_config=True
  )
except Exception as e:
  _flag_error(e, sys.argv)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and samples")
_EXPORT = flags.DEFINE_string(
  "export", None, "write the latest checkpoint's generator to this directory and exit (no training)"
)
_OVERWRITE = flags.DEFINE_bool(
  "overwrite",
  False,
  "with --export: replace an existing sk-jax checkpoint "
  "directory (anything else is never replaced)",
)


def _load_config():
  """The --config file, loaded here (absl loads it lazily): a missing or broken one is one line, exit 2."""
  try:
    cfg = _CONFIG.value
    cfg.keys()  # absl's stand-in for a config that failed to load raises here
    return cfg
  except Exception as e:
    path = config_flags.get_config_filename(flags.FLAGS["config"]).split(":", 1)[0]
    if not os.path.isfile(path):
      print(
        f"train.py: error: {path}: no such config file (pass --config configs/NAME.py)",
        file=sys.stderr,
      )
    else:
      print(f"train.py: error: {path}: malformed config ({_one_line(e)})", file=sys.stderr)
    sys.exit(2)


class _QuietLibraries(py_logging.Filter):
  """Drops the INFO chatter of Orbax, grain and JAX (several lines per save); warnings still show,
  except Orbax's tracebacks of a full disk, which the run reports in one line as it stops."""

  def filter(self, record):
    if "/orbax/" in record.pathname and (
      "No space left" in record.getMessage()
      or (record.exc_info and _is_disk_full(record.exc_info[1]))
    ):
      return False
    return record.levelno >= py_logging.WARNING or not any(
      f"/{lib}/" in record.pathname for lib in ("orbax", "grain", "jax")
    )


def _is_disk_full(e) -> bool:
  from sk_jax.errors import is_disk_full

  return is_disk_full(e)


def _quiet_closed_loop_callbacks() -> None:
  """After a failed asynchronous save, TensorStore completes its remaining writes into Orbax's
  closed event loop, and each reports one traceback (hundreds); they say nothing the one-line error
  does not, so they are dropped. Every other unraisable exception is printed as usual."""
  default = sys.unraisablehook  # TensorStore reports them as unraisable exceptions

  def hook(unraisable):
    if not (
      unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
    ):
      default(unraisable)

  sys.unraisablehook = hook


def main(argv):
  if len(argv) > 1:
    print(f"train.py: error: unexpected arguments {' '.join(argv[1:])}", file=sys.stderr)
    sys.exit(2)
  if not _WORKDIR.value:
    print("train.py: error: --workdir is required", file=sys.stderr)
    sys.exit(2)
  # Imported here so that --help and flag errors do not wait for JAX.
  cfg = None if _EXPORT.value else _load_config()
  from sk_jax import cli
  from sk_jax.train import checkpoints
  from sk_jax.train import loop as train

  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_QuietLibraries())
    _quiet_closed_loop_callbacks()
  try:
    with cli.exit_codes("train.py"):
      if _EXPORT.value:
        print(
          checkpoints.export_generator(_WORKDIR.value, _EXPORT.value, overwrite=_OVERWRITE.value)
        )
      else:
        train.train(cfg, _WORKDIR.value)
  except cli.Exit as e:
    sys.exit(e.code)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
