"""`sk-jax train` (the top-level train.py is the same command) and `sk-jax export`.

  sk-jax train --config configs/default.py[:ARG] --workdir DIR [--config.opt.lr=2e-4 ...]
  sk-jax train --workdir DIR --export OUT [--overwrite]

Running the same command again in the same workdir resumes from its latest complete checkpoint;
`--export OUT` writes the generator of the latest checkpoint instead of training (as `sk-jax
export`). The flags are absl's: ml_collections' config flags load the file and apply typed
`--config.FIELD=VALUE` overrides, and a typo in a field fails. sk_jax.train.loop does the work.
"""

from __future__ import annotations

import logging as py_logging
import os
import sys

from absl import flags, logging

from sk_jax.cli import common
from sk_jax.config import DEFAULT_CONFIG, importable
from sk_jax.errors import InputError, is_disk_full

# ml_collections, Orbax and grain are imported by the functions that use them, so that the other
# commands (`sk-jax stylize` above all) never load them.

TRAIN_HELP = "train (or resume) in a workdir from a configs/*.py file (absl flags; see --help)"
TRAIN_USAGE = (
  "usage: {prog} --config FILE[:ARG] --workdir DIR [--config.FIELD=VALUE ...] "
  "[--export OUT [--overwrite]] [--verbosity N]"
)


def _define_flags(fv: flags.FlagValues, argv=()):
  from ml_collections import config_flags

  # The config is loaded here already, with the --config.* overrides of argv.
  config = config_flags.DEFINE_config_file(
    "config",
    DEFAULT_CONFIG,
    "training config file",
    flag_values=fv,
    lock_config=True,
    sys_argv=["train", *argv],
  )
  flags.DEFINE_string(
    "workdir", None, "directory for checkpoints, logs and samples", flag_values=fv
  )
  flags.DEFINE_string(
    "export",
    None,
    "write the latest checkpoint's generator to this directory and exit (no training)",
    flag_values=fv,
  )
  flags.DEFINE_bool("overwrite", False, f"with --export: {common.OVERWRITE_HELP}", flag_values=fv)
  flags.DEFINE_integer(
    "verbosity", None, "absl logging verbosity (default: INFO, libraries quiet)", flag_values=fv
  )
  return config


def _config_path(argv) -> str:
  """The --config file named on the command line (without a ':ARG' suffix), else the default."""
  path = DEFAULT_CONFIG
  for i, arg in enumerate(argv):
    if arg == "--config" and i + 1 < len(argv):
      path = argv[i + 1]
    elif arg.startswith("--config="):
      path = arg.split("=", 1)[1]
  return path.split(":", 1)[0]


def _chain(e: BaseException | None) -> list[BaseException]:
  chain, seen = [], set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    chain.append(e)
    e = e.__cause__ or e.__context__
  return chain


def _flag_error(e: BaseException, argv) -> InputError:
  """One line for what absl raised while parsing: an unknown config field (with ml_collections'
  suggestion), a config file that raised while loading, or absl's own message."""
  chain = _chain(e)
  for x in chain:
    if isinstance(x, KeyError) and x.args:
      first, _, hint = str(x.args[0]).partition("\n")
      key = first.strip("'\"")
      names = [a[len("--config.") :].split("=", 1)[0] for a in argv if a.startswith("--config.")]
      name = next((n for n in names if key in n.split(".")), None)
      if name is not None:
        # ml_collections: 'Did you mean "lr" instead of "lrr"?'
        close = hint.split('"')[1] if hint.count('"') >= 2 else None
        prefix = name.rsplit(".", 1)[0] + "." if "." in name else ""
        more = f"; close matches: {prefix}{close}" if close else ""
        return InputError(f"unknown config field '{name}'{more}")
  if isinstance(chain[-1], SyntaxError):
    return InputError(f"{_config_path(argv)}: malformed config (SyntaxError: {chain[-1]})")
  if any("Error whilst parsing config file" in str(x) for x in chain):
    inner, path = chain[-1], _config_path(argv)
    if "Error whilst parsing config file" in str(inner):
      return InputError(f"{path}: malformed config ({str(inner).strip().splitlines()[-1]})")
    return InputError(f"{path}: malformed config ({type(inner).__name__}: {inner})")
  return InputError(str(e))


def _load_config(config, fv: flags.FlagValues):
  """The --config file, loaded here (absl loads it lazily): a missing or broken one is one line."""
  from ml_collections import config_flags

  try:
    cfg = config.value
    # absl's stand-in for a config that failed to load raises here
    cfg.keys()
    return cfg
  except Exception as e:
    path = config_flags.get_config_filename(fv["config"]).split(":", 1)[0]
    if not os.path.isfile(path):
      raise InputError(f"{path}: no such config file (pass --config configs/NAME.py)") from None
    raise InputError(f"{path}: malformed config ({e})") from None


class _QuietLibraries(py_logging.Filter):
  """Drops the INFO chatter of Orbax, grain and JAX (several lines per save); warnings still show,
  except Orbax's tracebacks of a full disk, which the run reports in one line as it stops."""

  def filter(self, record):
    if "/orbax/" in record.pathname and (
      "No space left" in record.getMessage()
      or (record.exc_info and is_disk_full(record.exc_info[1]))
    ):
      return False
    return record.levelno >= py_logging.WARNING or not any(
      f"/{lib}/" in record.pathname for lib in ("orbax", "grain", "jax")
    )


def _quiet_closed_loop_callbacks() -> None:
  """After a failed asynchronous save, TensorStore completes its remaining writes into Orbax's
  closed event loop, and each reports one traceback (hundreds); they say nothing the one-line error
  does not, so they are dropped. Every other unraisable exception is printed as usual."""
  # TensorStore reports them as unraisable exceptions.
  default = sys.unraisablehook

  def hook(unraisable):
    if not (
      unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
    ):
      default(unraisable)

  sys.unraisablehook = hook


def _set_up_logging(verbosity: int | None) -> None:
  """What absl's app.run would do, with the libraries' chatter filtered unless --verbosity."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  logging.use_absl_handler()
  if verbosity is not None:
    logging.set_verbosity(verbosity)
    return
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  _quiet_closed_loop_callbacks()


def run_train(argv, prog: str) -> None:
  from sk_jax.train import checkpoints

  """`sk-jax train ARGV` (absl flags); errors are raised for `sk_jax.cli.exit_codes`."""
  if any(a in ("-h", "--help", "--helpshort") for a in argv):
    fv = flags.FlagValues()
    _define_flags(fv)
    print(TRAIN_USAGE.format(prog=prog) + "\n\n" + __doc__.strip() + "\n\n" + fv.get_help())
    return
  fv = flags.FlagValues()
  # The config folder's package (configs/) is importable while absl loads the file.
  with importable(_config_path(argv)):
    try:
      config = _define_flags(fv, argv)
      rest = fv([prog, *argv])
    except Exception as e:
      raise _flag_error(e, argv) from None
    if len(rest) > 1:
      raise InputError(f"unexpected arguments {' '.join(rest[1:])}")
    if not fv.workdir:
      raise InputError("--workdir is required")
    cfg = None if fv.export else _load_config(config, fv)
  _set_up_logging(fv.verbosity)
  if fv.export:
    print(checkpoints.export_generator(fv.workdir, fv.export, overwrite=fv.overwrite))
    return
  # Imported here so that --help and flag errors do not wait for JAX.
  from sk_jax.train import loop

  loop.train(cfg, fv.workdir)


def run_export(args) -> None:
  from sk_jax.train import checkpoints

  print(
    checkpoints.export_generator(args.workdir, args.output, args.step, overwrite=args.overwrite)
  )


def add_commands(subparsers) -> None:
  # Parsed by absl in run_train (sk_jax.cli.main hands it the arguments); listed here for --help.
  subparsers.add_parser("train", help=TRAIN_HELP, add_help=False)
  p = subparsers.add_parser(
    "export", help="write the generator of a training checkpoint for `sk-jax stylize`"
  )
  p.add_argument("--workdir", required=True, help="training workdir (holds checkpoints/)")
  p.add_argument("--output", required=True, help="generator checkpoint directory to write")
  p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
  p.add_argument("--overwrite", action="store_true", help=common.OVERWRITE_HELP)
  p.set_defaults(func=run_export)
