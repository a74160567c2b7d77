"""The `sk-jax` command. Each topic module registers its subcommands with `add_commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

from sk_jax.errors import InputError

# Modules that define `add_commands(subparsers)`; each parser sets `func(args)`.
COMMAND_MODULES = ("sk_jax.stylize", "sk_jax.port", "sk_jax.parity", "sk_jax.video", "sk_jax.train",
                   "sk_jax.deploy")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="sk-jax", description="StyleKernel style transfer in JAX")
  subparsers = parser.add_subparsers(dest="command", required=True)
  for name in COMMAND_MODULES:
    importlib.import_module(name).add_commands(subparsers)
  return parser


def main(argv=None) -> int:
  args = build_parser().parse_args(argv)
  try:
    args.func(args)
  except InputError as e:
    print(f"sk-jax {args.command}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"sk-jax {args.command}: interrupted", file=sys.stderr)
    return 130
  return 0


def run() -> None:
  """Console-script entry point."""
  sys.exit(main())


if __name__ == "__main__":
  run()
