"""Trains StyleKernel: python train.py --config configs/default.py --workdir DIR [--config.opt.lr=2e-4]

Running the same command again in the same workdir resumes from its latest complete
checkpoint. `--export OUT` writes the generator of the latest checkpoint for
`sk-jax stylize` instead of training (as `sk-jax export` does). Everything else lives
in sk_jax/train.py.
"""

import logging as py_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default.py", "training config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints, logs and samples")
_EXPORT = flags.DEFINE_string("export", None, "write the latest checkpoint's generator to this "
                              "directory and exit (no training)")


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split()) or type(e).__name__


def _parse_flags(argv):
  """absl's parser, but a malformed config or flag is one line on stderr and exit code 2."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # flags.Error, or whatever the config file raised while loading
    print(f"train.py: error: {_one_line(e)}", file=sys.stderr)
    sys.exit(2)


class _QuietLibraries(py_logging.Filter):
  """Drops the INFO chatter of Orbax, grain and JAX (several lines per save); warnings still show."""

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or not any(
        f"/{lib}/" in record.pathname for lib in ("orbax", "grain", "jax"))


def main(argv):
  if len(argv) > 1:
    print(f"train.py: error: unexpected arguments {' '.join(argv[1:])}", file=sys.stderr)
    sys.exit(2)
  if not _WORKDIR.value:
    print("train.py: error: --workdir is required", file=sys.stderr)
    sys.exit(2)
  # Imported here so that --help and flag errors do not wait for JAX.
  from sk_jax import checkpoint, cli, train

  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    with cli.exit_codes("train.py"):
      if _EXPORT.value:
        print(checkpoint.export_generator(_WORKDIR.value, _EXPORT.value))
      else:
        train.train(_CONFIG.value, _WORKDIR.value)
  except cli.Exit as e:
    sys.exit(e.code)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
