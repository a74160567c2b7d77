"""`sk-jax export`: the generator of a training checkpoint, for `sk-jax stylize`."""

from __future__ import annotations

from sk_jax.io import artifacts
from sk_jax.train import checkpoints


def run_export(args) -> None:
  print(
    checkpoints.export_generator(args.workdir, args.output, args.step, overwrite=args.overwrite)
  )


def add_commands(subparsers) -> None:
  p = subparsers.add_parser(
    "export", help="write the generator of a training checkpoint for `sk-jax stylize`"
  )
  p.add_argument("--workdir", required=True, help="training workdir (holds checkpoints/)")
  p.add_argument("--output", required=True, help="generator checkpoint directory to write")
  p.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
  p.add_argument("--overwrite", action="store_true", help=artifacts.OVERWRITE_HELP)
  p.set_defaults(func=run_export)
