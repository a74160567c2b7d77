"""JAX vs PyTorch, module by module: what `sk-jax parity` and the tests run.

Both frameworks run the whole pipeline (images -> VGG-16 -> alignment and gate ->
kernel head -> Eq. 6 -> decoder) from the same weights; every module's output is
compared. The encoders run on their own; the PyTorch generator then starts from JAX's
relu4_1 features, so that the generator's rows measure the generator and not the
encoder's rounding amplified: Eq. 6's instance norm divides each channel by its spatial
std, which for a channel with one nonzero value among 16 positions is about 4e-3, and
turned the encoders' 5e-5 absolute float32 differences into a 2.4e-4 relative Z_bar
difference on one 2-core CPU and not on another (docs/interop.md). The relative error of a tensor is max |jax - torch| divided by
max |torch| (its range, so that ReLU zeros do not turn noise into huge ratios).

One exception to "on their own": the hard gate. Where |A - T| / max(T, 1/Ns) is
below the band, either decision is rounding noise; the flips are counted and reported, and
the PyTorch reference then adopts JAX's decision on those entries only, so that
the rows after the gate measure arithmetic rather than a coin toss. A flip
outside the band fails. Tolerances and their reasons: docs/interop.md.

float32 matmul and convolution precision is pinned to "highest" on the JAX side
(`jax.default_matmul_precision`): JAX's default on GPU is TF32 and on TPU bf16
passes, about 1e-3 relative, which would hide real errors below that. On CPU it
changes nothing. The PyTorch reference always runs on the CPU, where float32 is
always full precision.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from sk_jax.inference.stylizer import Stylizer
from sk_jax.interop import port
from sk_jax.io import images
from sk_jax.nn import vgg

# Relative-error tolerance of every row, per compute dtype. float32: 10x above the
# worst seen (9e-6) over seeds and sizes 64-256; bfloat16: about 4 units in the last
# place (2^-7 = 7.8e-3) for single tensors, more after instance norm and the decoder.
# docs/interop.md gives the measurements and the reasons.
TOLERANCES = {
  "float32": {
    "encoder": 1e-4,
    "attention": 1e-4,
    "z_cs": 1e-4,
    "kernels": 1e-4,
    "z_bar": 1e-4,
    "image": 1e-4,
  },
  "bfloat16": {
    "encoder": 3e-2,
    "attention": 5e-2,
    "z_cs": 3e-2,
    "kernels": 3e-2,
    "z_bar": 1e-1,
    "image": 1e-1,
  },
}
# Gate band: a flipped decision is rounding noise when its gap |A - T| / max(T, 1/Ns)
# is below this (bfloat16: worst flip seen 0.10 at 256 px).
GATE_BAND = {"float32": 1e-4, "bfloat16": 2.5e-1}


@dataclasses.dataclass
class Row:
  name: str
  shape: tuple
  max_abs: float
  max_rel: float
  tolerance: float
  ok: bool
  note: str = ""


def _nchw_to_nhwc(t):
  return t.float().numpy().transpose(0, 2, 3, 1)


def _kern_to_jax(t):
  """torch_ref kernels (B, C, k, H, W) -> the JAX layout (B, H, W, C, k)."""
  return t.float().numpy().transpose(0, 3, 4, 1, 2)


_encoder_taps = jax.jit(vgg.vgg16_features, static_argnames=("taps", "dtype"))


def gate_gap(attn, thresh):
  """|A - T| / max(|T|, 1/Ns): how far each entry is from its threshold, relative to the threshold.

  attn (B, Nc, Ns), thresh (B, Nc). Both A and T carry relative rounding errors, so
  a decision is only as certain as this gap is large compared with the dtype's precision.
  """
  attn = np.asarray(attn, np.float64)
  thresh = np.asarray(thresh, np.float64)[..., None]
  return np.abs(attn - thresh) / np.maximum(np.abs(thresh), 1.0 / attn.shape[-1])


def _gate_agreement(jax_mask, t_aux, band):
  """The gate-mask row, and the mask PyTorch should use downstream (None: its own already agrees)."""
  jax_mask = np.asarray(jax_mask, np.float32)
  own = t_aux["own_mask"].numpy()
  gap = gate_gap(t_aux["attention"].numpy(), t_aux["threshold"].numpy())
  flipped = own != jax_mask
  n_flip = int(flipped.sum())
  worst = float(gap[flipped].max()) if n_flip else 0.0
  row = Row(
    "gate mask",
    tuple(jax_mask.shape),
    n_flip / jax_mask.size,
    worst,
    band,
    worst < band,
    f"{n_flip} of {jax_mask.size} decisions flipped; max gap of a flip {worst:.1e}",
  )
  adopted = np.where(flipped & (gap < band), jax_mask, own).astype(np.float32) if n_flip else None
  return row, adopted


def compare(params, vgg_params, config, content, style, alpha: float = 1.0) -> list[Row]:
  """Runs JAX and `sk_jax.interop.torch_ref` on (H, W, 3) content and style in [0, 1] (H, W multiples of 8).

  Returns one Row per module output, held to TOLERANCES[config.dtype].
  """
  import torch

  from sk_jax.interop import torch_ref  # imports torch

  tol, band = TOLERANCES[config.dtype], GATE_BAND[config.dtype]
  content = np.asarray(content, np.float32)[None]
  style = np.asarray(style, np.float32)[None]
  stylizer = Stylizer(params, config, vgg_params)
  with jax.default_matmul_precision("highest"):
    # The precision is part of jit's cache key, so these trace their own versions.
    taps = _encoder_taps(stylizer.vgg_params, content, taps=vgg.TAPS, dtype=config.compute_dtype)
    z_s = stylizer.encode_style(style)
    _, aux = stylizer.apply(content, z_s, alpha, return_aux=True)
    taps, z_s, aux = jax.device_get((taps, z_s, aux))
  image = aux["decoded"]

  tdtype = torch_ref.torch_dtype(config.dtype)
  enc = torch_ref.VGGEncoder(tdtype)
  enc.load_state_dict(port.vgg16_to_torch(vgg_params))
  gen = torch_ref.Generator(config)
  gen.load_state_dict(port.generator_to_torch(params))
  to_t = lambda x: torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    t_taps = enc(to_t(content), taps=vgg.TAPS)
    t_zs = enc(to_t(style), taps=("relu4_1",))["relu4_1"]
    # The generator from JAX's features (see the module docstring).
    feature = lambda x: to_t(np.asarray(x, np.float32)).to(tdtype)
    g_zc, g_zs = feature(taps["relu4_1"]), feature(z_s)
    t_image, t_aux = gen(g_zc, g_zs, alpha)
    gate_row = None
    if config.attention != "full":  # the CGM's gate, or topK's selection
      gate_row, adopted = _gate_agreement(aux["mask"], t_aux, band)
      if adopted is not None:  # rerun downstream with JAX's decisions inside the band
        t_image, t_aux = gen(g_zc, g_zs, alpha, mask=torch.from_numpy(adopted))

  rows = []

  def add(name, ours, ref, tolerance, note=""):
    ours = np.asarray(ours, np.float32)
    a, r = port.relative_error(ours, ref)
    rows.append(Row(name, tuple(ours.shape), a, r, tolerance, bool(r <= tolerance), note))

  for tap in vgg.TAPS:
    add(f"encoder {tap}", taps[tap], _nchw_to_nhwc(t_taps[tap]), tol["encoder"], "content")
  add("encoder relu4_1", z_s, _nchw_to_nhwc(t_zs), tol["encoder"], "style")
  add("attention A", aux["attention"], t_aux["attention"].numpy(), tol["attention"])
  if gate_row is not None:
    rows.append(gate_row)
  add("Z_cs", aux["z_cs"], _nchw_to_nhwc(t_aux["z_cs"]), tol["z_cs"])
  add("kernel F1 (k x 1)", aux["f_v"], _kern_to_jax(t_aux["f_v"]), tol["kernels"])
  add("kernel F2 (1 x k)", aux["f_h"], _kern_to_jax(t_aux["f_h"]), tol["kernels"])
  add("kernel bias B", aux["bias"], _nchw_to_nhwc(t_aux["bias"]), tol["kernels"])
  add("Z_bar (Eq. 6)", aux["z_bar"], _nchw_to_nhwc(t_aux["z_bar"]), tol["z_bar"])
  add("decoded image", image, _nchw_to_nhwc(t_image), tol["image"], "before clipping")
  return rows


def format_table(rows: list[Row]) -> str:
  lines = [
    f"{'module':<20}{'shape':<22}{'max abs err':>12}{'max rel err':>12}{'tolerance':>11}  result",
    "-" * 86,
  ]
  for r in rows:
    nums = f"{r.max_abs:>12.3e}{r.max_rel:>12.3e}{r.tolerance:>11.1e}"
    note = f"  ({r.note})" if r.note else ""
    lines.append(f"{r.name:<20}{str(r.shape):<22}{nums}  {'pass' if r.ok else 'FAIL'}{note}")
  return "\n".join(lines)


def prepare_image(image: np.ndarray, size: int) -> np.ndarray:
  """Short side to `size`, then centre-cropped to multiples of 8 (the encoder's stride)."""
  image = images.resize_short_side(image, size)
  h, w = image.shape[:2]
  h8, w8 = h - h % 8, w - w % 8
  top, left = (h - h8) // 2, (w - w8) // 2
  return np.ascontiguousarray(image[top : top + h8, left : left + w8])


def default_images():
  from skimage import data

  return data.astronaut().astype(np.float32) / 255.0, data.coffee().astype(np.float32) / 255.0
