"""The report of an evaluation: metrics.md (Tables 1-3 as markdown) and the image grids."""

from __future__ import annotations

import os

from PIL import Image, ImageOps

from sk_jax.io import images


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
