"""Small line and scatter plots drawn with Pillow, so the benchmarks need no matplotlib."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

COLORS = [
  (31, 119, 180),
  (255, 127, 14),
  (44, 160, 44),
  (214, 39, 40),
  (148, 103, 189),
  (140, 86, 75),
  (227, 119, 194),
  (127, 127, 127),
  (188, 189, 34),
  (23, 190, 207),
  (0, 0, 0),
  (90, 90, 200),
]
W, H, M = 560, 380, (70, 30, 20, 45)  # panel size; margins left, top, right, bottom


def _font():
  try:
    return ImageFont.load_default(size=12)
  except TypeError:  # Pillow < 10.1
    return ImageFont.load_default()


def _ticks(lo, hi, log):
  if log:
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ts = [t for t in (10.0**e * m for e in range(a, b + 1) for m in (1, 2, 5)) if lo <= t <= hi]
    if len(ts) >= 3:
      return ts
  step = 10 ** math.floor(math.log10((hi - lo) or 1.0))
  while (hi - lo) / step > 8:
    step *= 2
  while (hi - lo) / step < 4:
    step /= 2
  t = math.ceil(lo / step) * step
  out = []
  while t <= hi + 1e-12:
    out.append(round(t, 10))
    t += step
  return out


def _panel(draw, ox, oy, title, xs_all, ys_all, log_x, log_y, xlabel, font):
  x0, y0, x1, y1 = ox + M[0], oy + M[1], ox + W - M[2], oy + H - M[3]
  fx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
  fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
  xlo, xhi = min(xs_all), max(xs_all)
  ylo, yhi = min(ys_all), max(ys_all)
  if not log_y:
    pad = 0.05 * ((yhi - ylo) or 1.0)
    ylo, yhi = ylo - pad, yhi + pad
  else:
    ylo, yhi = ylo / 1.1, yhi * 1.1
  if log_x:
    xlo, xhi = xlo / 1.3, xhi * 1.3
  if xhi == xlo:
    xhi = xlo + 1
  sx = lambda v: x0 + (fx(v) - fx(xlo)) / (fx(xhi) - fx(xlo)) * (x1 - x0)
  sy = lambda v: y1 - (fy(v) - fy(ylo)) / ((fy(yhi) - fy(ylo)) or 1.0) * (y1 - y0)
  draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0))
  draw.text((x0, oy + 8), title, fill=(0, 0, 0), font=font)
  draw.text(((x0 + x1) // 2 - 40, y1 + 24), xlabel, fill=(0, 0, 0), font=font)
  for t in _ticks(ylo, yhi, log_y):
    y = sy(t)
    draw.line([x0, y, x1, y], fill=(225, 225, 225))
    draw.text((ox + 4, y - 6), f"{t:.3g}", fill=(0, 0, 0), font=font)
  for t in _ticks(xlo, xhi, log_x):
    x = sx(t)
    draw.line([x, y1, x, y1 + 4], fill=(0, 0, 0))
    draw.text((x - 10, y1 + 7), f"{t:g}", fill=(0, 0, 0), font=font)
  return sx, sy, (x0, y0, x1, y1)


def line_panels(path, panels, xlabel="step", title="", log_y=False, hlines=()):
  """panels: [(title, {name: (xs, ys)})], side by side with one legend below."""
  font = _font()
  names = list(dict.fromkeys(n for _, series in panels for n in series))
  legend_rows = math.ceil(len(names) / max(1, (W * len(panels) - 10) // 180))
  img = Image.new("RGB", (W * len(panels), H + 30 + 18 * legend_rows), "white")
  draw = ImageDraw.Draw(img)
  draw.text((10, 4), title, fill=(0, 0, 0), font=font)
  for i, (ptitle, series) in enumerate(panels):
    xs = [x for s in series.values() for x in s[0]]
    ys = [y for s in series.values() for y in s[1] if not log_y or y > 0] + list(hlines)
    sx, sy, box = _panel(draw, W * i, 14, ptitle, xs, ys, False, log_y, xlabel, font)
    for h in hlines:
      draw.line([box[0], sy(h), box[2], sy(h)], fill=(160, 160, 160), width=1)
    for name, (x, y) in series.items():
      pts = [(sx(a), sy(b)) for a, b in zip(x, y) if not log_y or b > 0]
      if len(pts) > 1:
        draw.line(pts, fill=COLORS[names.index(name) % len(COLORS)], width=2)
  _legend(draw, names, H + 20, font)
  img.save(path)


def scatter_panels(path, panels, xlabel="", title=""):
  """panels: [(title, [(name, kind, x, y)])]; log x; topk points joined by a line."""
  font = _font()
  names = list(dict.fromkeys(p[0] for _, pts in panels for p in pts))
  legend_rows = math.ceil(len(names) / max(1, (W * len(panels) - 10) // 180))
  img = Image.new("RGB", (W * len(panels), H + 30 + 18 * legend_rows), "white")
  draw = ImageDraw.Draw(img)
  draw.text((10, 4), title, fill=(0, 0, 0), font=font)
  for i, (ptitle, pts) in enumerate(panels):
    sx, sy, _ = _panel(
      draw, W * i, 14, ptitle, [p[2] for p in pts], [p[3] for p in pts], True, False, xlabel, font
    )
    topk = sorted((p for p in pts if p[1] == "topk"), key=lambda p: p[2])
    if len(topk) > 1:
      draw.line([(sx(p[2]), sy(p[3])) for p in topk], fill=(180, 180, 180), width=1)
    for name, kind, x, y in pts:
      c = COLORS[names.index(name) % len(COLORS)]
      r = 5
      if kind == "cgm":
        draw.polygon(
          [(sx(x), sy(y) - r - 1), (sx(x) + r + 1, sy(y) + r), (sx(x) - r - 1, sy(y) + r)], fill=c
        )
      elif kind == "full":
        draw.rectangle([sx(x) - r, sy(y) - r, sx(x) + r, sy(y) + r], fill=c)
      else:
        draw.ellipse([sx(x) - r, sy(y) - r, sx(x) + r, sy(y) + r], fill=c)
  _legend(draw, names, H + 20, font)
  img.save(path)


def _legend(draw, names, y, font):
  cols = max(1, (draw.im.size[0] - 10) // 180)
  for j, name in enumerate(names):
    x = 10 + (j % cols) * 180
    yy = y + 18 * (j // cols)
    draw.rectangle([x, yy + 3, x + 14, yy + 11], fill=COLORS[j % len(COLORS)])
    draw.text((x + 20, yy), name, fill=(0, 0, 0), font=font)
