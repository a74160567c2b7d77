"""The `sk-jax` command: argparse lives here and only here; the library never sees a Namespace.

Each module of this package registers its subcommands with `add_commands(subparsers)`;
every parser sets `func(args)`. Exit codes: 0 done, 1 a check failed (`parity`) or
training stopped on non-finite updates or a save failed (e.g. a full disk), 2 bad input (one line on stderr, nothing
written), 75 training stopped on SIGTERM / Ctrl-C / a preemption notice after saving (rerun to
resume), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys

from sk_jax.cli import evaluation, interop, serve, stylize, training
from sk_jax.errors import (
  EXIT_PREEMPTED,
  ArgumentError,
  InputError,
  NonFiniteError,
  ParityError,
  Preempted,
  SaveError,
  one_line,
)

COMMAND_MODULES = (stylize, interop, training, evaluation, serve)


class Exit(Exception):
  """Carries the exit code out of `exit_codes`."""

  def __init__(self, code: int):
    super().__init__(code)
    self.code = code


@contextlib.contextmanager
def exit_codes(prog: str):
  """Turns the library's errors into one line on stderr and an exit code (raised as Exit)."""
  try:
    yield
  except ArgumentError as e:
    # The library names the parameter; the command line has a flag for it.
    print(f"{prog}: error: {one_line(e.flag_message())}", file=sys.stderr)
    raise Exit(2) from None
  except InputError as e:
    print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
    raise Exit(2) from None
  except (ParityError, NonFiniteError, SaveError) as e:
    print(f"{prog}: {one_line(e)}", file=sys.stderr)
    raise Exit(1) from None
  except Preempted as e:
    print(f"{prog}: {one_line(e)}", file=sys.stderr)
    raise Exit(EXIT_PREEMPTED) from None
  except KeyboardInterrupt:
    print(f"{prog}: interrupted", file=sys.stderr)
    raise Exit(130) from None


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="sk-jax", description="StyleKernel style transfer in JAX")
  subparsers = parser.add_subparsers(dest="command", required=True)
  for module in COMMAND_MODULES:
    module.add_commands(subparsers)
  return parser


# A value such as -1,2 or -.5 that argparse would take for an option (it only knows -1 and -.5).
_NEGATIVE_VALUES = re.compile(r"^-(\d|\.\d)[\d.,eE+-]*$")


def attach_negative_values(argv) -> list[str]:
  """`--style-weights -1,2` -> `--style-weights=-1,2`: a negative number (list) after a long option
  is its value, so that the option's own check gives the one-line error rather than argparse's
  usage."""
  out = []
  for arg in argv:
    if out and out[-1].startswith("--") and "=" not in out[-1] and _NEGATIVE_VALUES.match(arg):
      out[-1] = f"{out[-1]}={arg}"
    else:
      out.append(arg)
  return out


def main(argv=None, prog: str | None = None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  if argv[:1] == ["train"]:
    # absl's flags (ml_collections' config flags), not argparse: sk_jax.cli.training.
    prog = prog or "sk-jax train"
    command = lambda: training.run_train(argv[1:], prog)
  else:
    args = build_parser().parse_args(attach_negative_values(argv))
    prog = prog or f"sk-jax {args.command}"
    command = lambda: args.func(args)
  try:
    with exit_codes(prog):
      command()
  except Exit as e:
    return e.code
  return 0


# Commands whose outputs are all written, closed and renamed into place when they return, so
# that the process may end without the interpreter's teardown (freeing JAX's runtime and every
# module: 0.3 CPU-seconds here, a sixth of a warm `sk-jax stylize`'s start-up; issue 21).
_EXIT_WITHOUT_TEARDOWN = ("stylize",)


def run() -> None:
  """Console-script entry point."""
  code = main()
  if sys.argv[1:2] and sys.argv[1] in _EXIT_WITHOUT_TEARDOWN:
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)
