"""Interop commands: `port-vgg16`, `export-torch`, `import-torch`, `parity` (PyTorch) and
`export-model` (StableHLO, ONNX, bfloat16 Orbax)."""

from __future__ import annotations

import dataclasses
import os

import jax

from sk_jax.cli import common
from sk_jax.errors import InputError, ParityError
from sk_jax.export import function as export_fn
from sk_jax.export import onnx as onnx_export
from sk_jax.export import stablehlo
from sk_jax.inference import bundled
from sk_jax.interop import parity, port, torch_io, train_report
from sk_jax.io import artifacts, files, images, weights


def run_port_vgg16(args) -> None:
  # before the conversion
  files.check_outputs([files.checkpoint(args.output_dir)], [args.input], args.overwrite)
  params = torch_io.vgg16_from_torch(args.input)
  rows = None
  if args.verify:
    rows = port.compare_encoders(
      torch_io.torch_vgg_state_dict(args.input), params, port.default_image(args.verify_size)
    )
    print(
      f"verify: JAX vs PyTorch VGG-16 on the astronaut at {args.verify_size}px, float32, "
      f"matmul precision 'highest'; tolerance: relative error <= {port.VERIFY_TOLERANCE:g}"
    )
    print(f"{'tap':<9}{'shape':<22}{'max abs err':>13}{'max rel err':>13}  ok")
    for r in rows:
      ok = r["max_rel"] <= port.VERIFY_TOLERANCE
      print(
        f"{r['tap']:<9}{str(r['shape']):<22}{r['max_abs']:>13.3e}{r['max_rel']:>13.3e}  "
        f"{'pass' if ok else 'FAIL'}"
      )
    bad = [r["tap"] for r in rows if not r["max_rel"] <= port.VERIFY_TOLERANCE]
    if bad:  # nothing is written for weights that do not reproduce PyTorch
      raise InputError(
        f"{args.input}: --verify failed at {', '.join(bad)} (relative error above "
        f"{port.VERIFY_TOLERANCE:g}); nothing written"
      )
  print(
    artifacts.save_vgg16_dir(
      args.output_dir, params, source=os.path.abspath(args.input), overwrite=args.overwrite
    )
  )


def _inputs(args) -> list[str]:
  """The files and directories a command reads (the bundled generator lies in the package)."""
  paths = [getattr(args, "checkpoint", None), getattr(args, "vgg", None)]
  return [p for p in paths if p and not bundled.is_bundled(p)]


def run_export_torch(args) -> None:
  files.check_outputs(
    [files.export(args.output, torch_io.is_export, "export-torch file")],
    _inputs(args),
    args.overwrite,
  )
  params, config = bundled.resolve(args.checkpoint)
  vgg_params = weights.load_vgg16(args.vgg or config.vgg_weights)
  print(torch_io.export_torch(params, config, vgg_params, args.output))


def run_import_torch(args) -> None:
  outputs = [files.checkpoint(args.output_dir), files.checkpoint(args.vgg_output or None)]
  files.check_outputs([o for o in outputs if o.path], [args.input], args.overwrite)
  params, config, vgg_params = torch_io.read_export(args.input)
  if args.vgg_output:
    print(
      artifacts.save_vgg16_dir(
        args.vgg_output, vgg_params, source=os.path.abspath(args.input), overwrite=args.overwrite
      )
    )
  print(artifacts.save_generator(args.output_dir, params, config, overwrite=args.overwrite))


def run_parity(args) -> None:
  try:
    import torch  # noqa: F401
  except ImportError:
    raise InputError("parity needs PyTorch: pip install 'sk-jax[torch]' (torch==2.13.0)") from None
  if args.train:
    return run_parity_train(args)
  args.size = args.size or 128
  if args.size < 16:
    raise InputError(f"--size must be at least 16, got {args.size}")
  params, config = bundled.resolve(args.checkpoint)
  config = dataclasses.replace(config, dtype=args.dtype or config.dtype)
  vgg_params = weights.load_vgg16(args.vgg or config.vgg_weights)
  content, style = parity.default_images()
  if args.content:
    content = images.load_image(args.content)
  if args.style:
    style = images.load_image(args.style)
  content, style = parity.prepare_image(content, args.size), parity.prepare_image(style, args.size)
  rows = parity.compare(params, vgg_params, config, content, style, args.alpha)
  print(
    f"sk-jax parity: JAX {jax.__version__} ({jax.default_backend()}) vs PyTorch reference "
    f"(sk_jax.interop.torch_ref, CPU), dtype {config.dtype}, content {content.shape[1]}x{content.shape[0]}, "
    f"style {style.shape[1]}x{style.shape[0]}, float32 matmul precision 'highest'"
  )
  print(
    "max rel err = max |jax - torch| / max |torch|.  gate mask row: abs = fraction of decisions "
    "flipped, rel = largest gap |A-T|/max(T,1/Ns) of a flip, which must be below the band"
  )
  print(parity.format_table(rows))
  bad = [r.name for r in rows if not r.ok]
  if bad:
    raise ParityError(f"parity failed ({config.dtype}) at: {', '.join(bad)}")
  print(f"all {len(rows)} rows within tolerance")


def run_parity_train(args) -> None:
  """`parity --train`: loss terms, gradients per group and K train steps (sk_jax.interop.train_parity)."""
  import json

  from sk_jax.interop import train_parity

  size = args.size or 64
  if size < 32 or size % 16:
    raise InputError(f"--size must be a multiple of 16 and at least 32 for --train, got {size}")
  if args.steps < 1 or args.batch < 1:
    raise InputError(f"--steps and --batch must be >= 1, got {args.steps} and {args.batch}")
  if args.dtype not in (None, "float32"):
    raise InputError("--train compares float32 training only")
  for path in (args.json, args.plot):
    if path and os.path.isdir(path):
      raise InputError(f"{path}: is a directory, expected a file name")
  params, config = bundled.resolve(args.checkpoint)
  if config.dtype != "float32":
    raise InputError(
      f"{args.checkpoint}: --train compares float32 training, the model is {config.dtype}"
    )
  cfg = train_parity.train_config(config, args.batch, size, args.config)
  vgg_params = weights.load_vgg16(args.vgg or config.vgg_weights)
  batches = train_parity.parity_batches(args.steps, args.batch, size, args.seed)
  result = train_parity.compare_train(params, config, vgg_params, cfg, batches, seed=args.seed)
  print(
    f"sk-jax parity --train: JAX {result['jax']} vs PyTorch {result['torch']} (sk_jax.interop.torch_train, "
    f"CPU), float32, matmul precision 'highest', batch {args.batch}, {size}x{size} crops, "
    f"{args.steps} steps, seed {args.seed}"
  )
  print(train_report.format_train_report(result))
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)
    print(args.json)
  if args.plot:
    os.makedirs(os.path.dirname(os.path.abspath(args.plot)), exist_ok=True)
    print(train_report.plot_train(result, args.plot))
  if not result["ok"]:
    raise ParityError("parity --train failed: a tolerance was missed (FAIL above)")
  print(f"all within tolerance ({result['seconds']:.0f} s)")


def run_export_model(args) -> None:
  fmt = args.format
  if fmt not in export_fn.FORMATS:
    raise InputError(f"--format must be one of {', '.join(export_fn.FORMATS)}, got {fmt!r}")
  platforms = stablehlo.check_platforms(args.platforms.split(","))
  if args.dtype not in ("float32", "bfloat16"):
    raise InputError(f"--dtype must be float32 or bfloat16, got {args.dtype!r}")
  if args.dtype != "float32" and fmt != "orbax":
    raise InputError(
      "--dtype bfloat16 applies to --format orbax (a smaller checkpoint); "
      "the StableHLO and ONNX stylizers embed float32 weights"
    )
  if fmt == "onnx" and not onnx_export.onnx_available():
    raise InputError(onnx_export.ONNX_EXTRA_HINT)
  export_fn.check_output(args.output, fmt, _inputs(args), args.overwrite)
  params, config = bundled.resolve(args.checkpoint)

  if fmt == "orbax":
    print(
      artifacts.save_generator(
        args.output, params, config, dtype=args.dtype, overwrite=args.overwrite
      )
    )
    return
  vgg_params = weights.load_vgg16(args.vgg or config.vgg_weights)
  if fmt == "stablehlo":
    path = stablehlo.save_stablehlo(
      args.output, stablehlo.export_stablehlo(params, vgg_params, config, platforms)
    )
  else:
    path = onnx_export.save_onnx(args.output, onnx_export.export_onnx(params, vgg_params, config))
  print(path)


def add_commands(subparsers) -> None:
  p = subparsers.add_parser(
    "port-vgg16",
    help="convert a PyTorch VGG-16 checkpoint into encoder weights for --vgg",
    formatter_class=common.HelpFormatter,
    description="Reads torchvision's VGG-16 (e.g. vgg16-397923af.pth), a state dict nested under "
    "'state_dict'/'model', 'module.'-prefixed keys, a bare nn.Sequential, or .safetensors, "
    "and writes an Orbax directory that --vgg and model.vgg_weights accept.",
  )
  p.add_argument("input", help="PyTorch checkpoint: .pth/.pt/.bin or .safetensors")
  p.add_argument("output_dir", help="directory to write: new or empty (or ours, with --overwrite)")
  p.add_argument("--overwrite", action="store_true", help=common.OVERWRITE_HELP)
  p.add_argument(
    "--verify",
    action="store_true",
    help="run the PyTorch and JAX encoders on one image and fail above the tolerance",
  )
  p.add_argument("--verify-size", type=int, default=128, help="image size for --verify")
  p.set_defaults(func=run_port_vgg16)

  p = subparsers.add_parser(
    "export-torch",
    help="write a generator checkpoint as a PyTorch file for sk_jax.interop.torch_ref",
    formatter_class=common.HelpFormatter,
  )
  p.add_argument("--checkpoint", required=True, help='generator checkpoint directory, or "bundled"')
  p.add_argument("--output", required=True, help="file to write: .pth or .safetensors")
  p.add_argument("--vgg", help="encoder weights to include (default: the checkpoint's)")
  p.add_argument(
    "--overwrite", action="store_true", help="replace an existing export-torch file at --output"
  )
  p.set_defaults(func=run_export_torch)

  p = subparsers.add_parser(
    "import-torch",
    help="read an export-torch file (e.g. after training in "
    "PyTorch) back into a generator checkpoint",
  )
  p.add_argument("input", help="a .pth or .safetensors file written by export-torch")
  p.add_argument("output_dir", help="generator checkpoint directory to write")
  p.add_argument("--vgg-output", help="also write its encoder weights to this directory")
  p.add_argument("--overwrite", action="store_true", help=common.OVERWRITE_HELP)
  p.set_defaults(func=run_import_torch)

  p = subparsers.add_parser(
    "parity",
    help="compare JAX with the PyTorch reference, module by module",
    formatter_class=common.HelpFormatter,
  )
  p.add_argument("--checkpoint", required=True, help='generator checkpoint directory, or "bundled"')
  p.add_argument(
    "--size", type=int, help="short side of both images (default 128); --train: crop (default 64)"
  )
  p.add_argument(
    "--dtype", choices=("float32", "bfloat16"), help="compute dtype (default: the checkpoint's)"
  )
  p.add_argument("--content", help="content image (default: scikit-image's astronaut)")
  p.add_argument("--style", help="style image (default: scikit-image's coffee)")
  p.add_argument("--alpha", type=float, default=1.0, help="content-style trade-off")
  p.add_argument("--vgg", help="encoder weights (default: the checkpoint's)")
  p.add_argument(
    "--train",
    action="store_true",
    help="compare training instead: loss terms, gradients per group, --steps train steps",
  )
  p.add_argument("--steps", type=int, default=10, help="--train: train steps in both frameworks")
  p.add_argument("--batch", type=int, default=2, help="--train: batch size")
  p.add_argument("--seed", type=int, default=0, help="--train: batches, D init and REMD draws")
  p.add_argument("--config", help="--train: training config (default: configs/default.py)")
  p.add_argument("--json", help="--train: write the figures as JSON here")
  p.add_argument("--plot", help="--train: write a PNG plot of the per-step losses here")
  p.set_defaults(func=run_parity)

  p = subparsers.add_parser(
    "export-model",
    help="write the stylizer as StableHLO or ONNX, or rewrite a generator checkpoint",
    formatter_class=common.HelpFormatter,
    description="Serializes the whole stylizer (encoder, generator, decoder; weights embedded, "
    "alpha 1) as (content, style) -> stylized, float32 NHWC in [0, 1], sizes multiples "
    "of 8 (see docs/interop.md). --format orbax rewrites the generator checkpoint "
    "itself, optionally in bfloat16.",
  )
  p.add_argument("--checkpoint", required=True, help='generator checkpoint directory, or "bundled"')
  p.add_argument("--format", required=True, help=f"one of {', '.join(export_fn.FORMATS)}")
  p.add_argument("--output", required=True, help="file to write (a directory for --format orbax)")
  p.add_argument(
    "--platforms",
    default="cpu",
    help=f"StableHLO: comma-separated, among {', '.join(stablehlo.PLATFORMS)}",
  )
  p.add_argument("--dtype", default="float32", help="orbax: parameter dtype, float32 or bfloat16")
  p.add_argument(
    "--vgg",
    help="VGG-16 weights to embed (an Orbax dir from port-vgg16); default: the checkpoint's",
  )
  p.add_argument(
    "--overwrite",
    action="store_true",
    help="replace an existing sk-jax export of this format at --output (anything else is never "
    "replaced)",
  )
  p.set_defaults(func=run_export_model)
