"""The StyleKernel generator: VGG-16 features -> SAE + CGM -> SKG -> Eq. 6 -> decoder."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from sk_jax.errors import InputError
from sk_jax.nn import ops, spatial, vgg
from sk_jax.nn.alignment import GATE_LAMBDAS, StyleAlignment
from sk_jax.nn.decoder import Decoder
from sk_jax.nn.fields import ConfigFields
from sk_jax.nn.kernels import KernelHead, apply_style_kernels

FEATURE_TAP = "relu4_1"
FEATURE_CHANNELS = 512
STRIDE = 8  # relu4_1 is at 1/8 of the image size
# How the CGM is held at model.gate_target (docs/method.md, "The gate's equilibrium"):
# "controller" moves a beta offset by sign(kept - k*) each step, "budget" adds a loss term.
GATE_FORCES = ("controller", "budget")


@dataclasses.dataclass(frozen=True)
class ModelConfig(ConfigFields):
  """Everything that fixes the generator's parameters and its forward pass."""

  GROUP = "model"
  attention_sharpness: float = 10.0  # alpha of Eq. 1
  learn_sharpness: bool = False
  attention: str = "cgm"  # "full" (Eq. 2), "topk" (Fig. 3's SANet + topK), "cgm" (Eqs. 3-5)
  topk: int = 16  # K of "topk"
  gate_renormalize: bool = False  # divide the kept attention by its sum ("topk" and "cgm")
  gate_lambda: str = "linear"  # lambda from E_f: "linear" (as printed) or "softplus" (kept > 0)
  gate_temperature: float = 1.0  # straight-through surrogate, in units of 1/Ns
  gate_hidden: int = 128
  # k*: the kept fraction a restoring force holds the CGM at, and the fraction "quantile"
  # keeps; None: no force (the paper's equations alone)
  gate_target: float | None = None
  # the restoring force of "cgm" with a gate_target (GATE_FORCES)
  gate_force: str = "controller"
  # the straight-through backward of "cgm": "sigmoid" or "linear" (never saturates)
  gate_surrogate: str = "sigmoid"
  # E_f's lambda centred to mean 1 and beta to mean 0 over each image's content positions: E_f
  # shapes the threshold across positions, the controller's offset alone sets its level
  gate_center: bool = False
  # the attention's matmuls: "highest" (float32 everywhere) or "default"
  attention_precision: str = "highest"
  kernel_size: int = 3  # k of the k x 1 and 1 x k style kernels
  kernel_hidden: int = 256
  kernel_init_std: float = 1e-3
  shuffle_groups: int = 4  # GS groups; 1 disables the shuffle
  dtype: str = "float32"  # compute dtype: float32 or bfloat16
  vgg_weights: str = "bundled"  # "bundled" or an Orbax dir from `sk-jax port-vgg16`

  def __post_init__(self):
    if self.attention not in ops.ATTENTIONS:
      raise InputError(
        f"model.attention must be one of {', '.join(ops.ATTENTIONS)}, got {self.attention!r}"
      )
    if self.attention_precision not in ops.PRECISIONS:
      raise InputError(
        f"model.attention_precision must be one of {', '.join(ops.PRECISIONS)}, "
        f"got {self.attention_precision!r}"
      )
    if self.gate_target is not None and not 0.0 < self.gate_target <= 1.0:
      raise InputError(f"model.gate_target must be in (0, 1] or None, got {self.gate_target}")
    if self.attention == "quantile" and self.gate_target is None:
      raise InputError('model.attention="quantile" needs model.gate_target, the kept fraction')
    if self.gate_force not in GATE_FORCES:
      raise InputError(
        f"model.gate_force must be one of {', '.join(GATE_FORCES)}, got {self.gate_force!r}"
      )
    if self.gate_surrogate not in ops.SURROGATES:
      raise InputError(
        f"model.gate_surrogate must be one of {', '.join(ops.SURROGATES)}, "
        f"got {self.gate_surrogate!r}"
      )
    if self.topk < 1:
      raise InputError(f"model.topk must be >= 1, got {self.topk}")
    if self.gate_lambda not in GATE_LAMBDAS:
      raise InputError(
        f"model.gate_lambda must be one of {', '.join(GATE_LAMBDAS)}, got {self.gate_lambda!r}"
      )
    if self.kernel_size not in (1, 3, 5):
      raise InputError(f"model.kernel_size must be 1, 3 or 5, got {self.kernel_size}")
    if self.shuffle_groups < 1 or FEATURE_CHANNELS % self.shuffle_groups:
      raise InputError(
        f"model.shuffle_groups must divide {FEATURE_CHANNELS}, got {self.shuffle_groups}"
      )
    if self.dtype not in ("float32", "bfloat16"):
      raise InputError(f"model.dtype must be float32 or bfloat16, got {self.dtype!r}")
    if self.attention_sharpness <= 0:
      raise InputError(
        f"model.attention_sharpness must be positive, got {self.attention_sharpness}"
      )

  @classmethod
  def from_dict(cls, d, source: str | None = None) -> "ModelConfig":
    """As ConfigFields.from_dict, with the one migration of saved configs: sk-jax 0.1 wrote a
    `gate` switch where `attention` now stands (true: "cgm", false: "full"), beside `attention`
    once that existed (then `gate` only repeated it)."""
    d = dict(d)
    if "gate" in d:
      gate = d.pop("gate")
      d.setdefault("attention", "cgm" if gate else "full")
    return super().from_dict(d, source)

  @property
  def gate_controlled(self) -> bool:
    """Whether the CGM carries a beta offset that the trainer's controller moves."""
    return (
      self.attention == "cgm" and self.gate_target is not None and self.gate_force == "controller"
    )

  @property
  def gate_budgeted(self) -> bool:
    """Whether training adds the budget term loss.gate_budget (kept - k*)^2."""
    return self.attention == "cgm" and self.gate_target is not None and self.gate_force == "budget"

  @property
  def compute_dtype(self):
    return jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32


class Generator(nn.Module):
  """relu4_1 features of content and style -> stylized RGB image, in three explicit stages.

  `align` (SAE + CGM, Eqs. 1-5): Z_c, Z_s -> Z_cs and the attention statistics;
  `kernels` (SKG): Z_cs -> (F_v, F_h, B); `render` (Eq. 6, alpha's blend with Z_c, the
  decoder): Z_c, kernels, alpha -> image. `__call__(z_c (B, H, W, 512), z_s (B, Hs, Ws, 512),
  alpha)` runs all three and returns the image (B, 8H, 8W, 3) and an aux dict (attention,
  mask, kept fraction, z_cs, kernels, z_bar); `generate` below is the one function that runs
  them with the controls (style mixing, kernel smoothing, several alphas). query_chunk
  (content positions at a time in the attention; None: all at once) changes memory, not
  results (ops.aligned_style_features).
  """

  config: ModelConfig
  query_chunk: int | None = None
  fuse_upsampling: bool = True  # the decoder's (Decoder.fuse_upsampling)

  def setup(self):
    cfg = self.config
    dtype = cfg.compute_dtype
    self.alignment = StyleAlignment(
      cfg.attention_sharpness,
      cfg.learn_sharpness,
      cfg.attention,
      cfg.gate_renormalize,
      cfg.gate_temperature,
      cfg.gate_hidden,
      dtype,
      topk=cfg.topk,
      gate_lambda=cfg.gate_lambda,
      gate_target=cfg.gate_target,
      gate_offset=cfg.gate_controlled,
      gate_surrogate=cfg.gate_surrogate,
      gate_center=cfg.gate_center,
      precision=cfg.attention_precision,
      query_chunk=self.query_chunk,
    )
    self.kernel_head = KernelHead(
      FEATURE_CHANNELS, cfg.kernel_size, cfg.kernel_hidden, cfg.kernel_init_std, dtype
    )
    self.decoder = Decoder(dtype, self.fuse_upsampling)

  def align(self, z_c, z_s, content_hw=None, style_hw=None):
    """Z_cs (B, H, W, 512) and the attention statistics (ops.aligned_style_features' aux);
    content_hw, style_hw: the true sizes of features padded to a size bucket."""
    dtype = self.config.compute_dtype
    return self.alignment(z_c.astype(dtype), z_s.astype(dtype), content_hw, style_hw)

  def kernels(self, z_cs):
    """The style kernels (F_v, F_h (B, H, W, 512, k), B (B, H, W, 512)) of Z_cs."""
    return self.kernel_head(z_cs)

  def render(self, z_c, kernels, alpha=1.0, hw=None):
    """Eq. 6 on Z_c, blended with Z_c by alpha (1: full style), decoded: (image, Z_bar);
    hw: Z_c's true size inside a size bucket."""
    z_c = z_c.astype(self.config.compute_dtype)
    z_bar = apply_style_kernels(z_c, *kernels, self.config.shuffle_groups, hw)
    z_mix = alpha * z_bar + (1.0 - alpha) * z_c.astype(jnp.float32)
    return self.decoder(z_mix, hw), z_bar

  def __call__(self, z_c, z_s, alpha=1.0):
    z_cs, aux = self.align(z_c, z_s)
    f_v, f_h, bias = self.kernels(z_cs)
    image, z_bar = self.render(z_c, (f_v, f_h, bias), alpha)
    return image, dict(aux, z_cs=z_cs, f_v=f_v, f_h=f_h, bias=bias, z_bar=z_bar)


def generate(
  params,
  config: ModelConfig,
  z_c,
  z_styles,
  style_weights=None,
  alpha=1.0,
  previous=None,
  smooth=0.0,
  query_chunk=None,
  content_hw=None,
  style_hw=None,
  fuse_upsampling=True,
):
  """The one forward pass of the generator, with the stylize controls; pure, jit it outside.

  Args:
    z_c: (B, H, W, 512) content features.
    z_styles: (B, Hs, Ws, 512) style features, or a tuple of S of them, mixed in Z_cs as
      sum_s w_s Z_cs(Z_c, Z_s) with `style_weights` (B, H, W, S) (docs/method.md, "Controls").
    alpha: a scalar, or (A,) alphas rendered from one alignment and one set of kernels
      (vmap over `render`): the image gains a leading axis A.
    previous, smooth: kernels of the previous frame; the kernels used are
      smooth * previous + (1 - smooth) * this frame's (temporal smoothing of a clip).
    content_hw, style_hw: for features zero-padded to a size bucket (docs/method.md, "Size
      buckets"), their true sizes at 1/8 (int (2,); for several styles a tuple of them).
      Inside them the results equal those of the unpadded features; outside, the image is
      not meaningful (crop it).
    fuse_upsampling: the decoder's upsampling inside its convolutions (inference, the default)
      or before them (training: the form whose gradients docs/interop.md holds to PyTorch).

  Returns the image (B, 8H, 8W, 3), or (A, B, 8H, 8W, 3), before clipping, and the aux dict
  of `Generator.__call__` (for several styles: the first style's attention statistics, the
  kept fraction weighted by each style's share of the positions).
  """
  gen, variables = Generator(config, query_chunk, fuse_upsampling), {"params": params}
  if isinstance(z_styles, (tuple, list)) and len(z_styles) == 1:
    z_styles = z_styles[0]
    style_hw = style_hw[0] if isinstance(style_hw, (tuple, list)) else style_hw
  align = lambda z_s, hw: gen.apply(variables, z_c, z_s, content_hw, hw, method=Generator.align)
  if isinstance(z_styles, (tuple, list)):
    hws = style_hw if style_hw is not None else (None,) * len(z_styles)
    outs = [align(z_s, hw) for z_s, hw in zip(z_styles, hws)]
    w = style_weights.astype(jnp.float32)
    z_cs = sum(w[..., i : i + 1] * z.astype(jnp.float32) for i, (z, _) in enumerate(outs))
    z_cs = z_cs.astype(outs[0][0].dtype)
    # (B, S): each style's share of the (true) positions
    if content_hw is None:
      share = w.mean(axis=(1, 2))
    else:
      share = jnp.sum(spatial.zero_outside(w, content_hw), axis=(1, 2)) / jnp.prod(content_hw)
    kept = sum(share[:, i] * a["kept_fraction"] for i, (_, a) in enumerate(outs))
    aux = dict(outs[0][1], kept_fraction=kept)
  else:
    z_cs, aux = align(z_styles, style_hw)
  kernels = gen.apply(variables, z_cs, method=Generator.kernels)
  if previous is not None:
    kernels = tuple(
      (smooth * p + (1.0 - smooth) * k.astype(jnp.float32)).astype(k.dtype)
      for p, k in zip(previous, kernels)
    )
  render = lambda a: gen.apply(variables, z_c, kernels, a, content_hw, method=Generator.render)
  image, z_bar = render(alpha) if jnp.ndim(alpha) == 0 else jax.vmap(render)(alpha)
  f_v, f_h, bias = kernels
  return image, dict(aux, z_cs=z_cs, f_v=f_v, f_h=f_h, bias=bias, z_bar=z_bar)


def encode(vgg_params, images, dtype=jnp.float32, hw=None):
  """relu4_1 of (B, H, W, 3) images in [0, 1]; H and W must be multiples of 8. Frozen.
  hw: the true size (multiples of 8) of images zero-padded to a size bucket; the features
  are then 0 outside hw / 8 and equal the unpadded images' inside."""
  feats = vgg.vgg16_features(vgg_params, images, taps=(FEATURE_TAP,), dtype=dtype, hw=hw)
  return jax.lax.stop_gradient(feats[FEATURE_TAP])


def pad_to_stride(images, stride: int = STRIDE):
  """Reflection-pads H and W up to multiples of `stride`; returns the padded images and (H, W)."""
  h, w = images.shape[1:3]
  ph, pw = -h % stride, -w % stride
  if ph or pw:
    mode = "reflect" if min(h, w) > max(ph, pw) else "edge"
    images = jnp.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)), mode=mode)
  return images, (h, w)


def init_params(config: ModelConfig, rng, feature_hw=(4, 4)):
  """Random generator parameters (the encoder is not among them)."""
  z = jnp.zeros((1, *feature_hw, FEATURE_CHANNELS), jnp.float32)
  return Generator(config).init(rng, z, z)["params"]


def stylize_images(
  params, vgg_params, config: ModelConfig, content, style, alpha=1.0, query_chunk=None
):
  """Images in, image out: (B, H, W, 3) content and (B, Hs, Ws, 3) style in [0, 1].

  Any H and W: inputs are reflection-padded to multiples of 8 and the output is
  cropped back. Returns (B, H, W, 3) in [0, 1] and the generator's aux dict.
  """
  content, (h, w) = pad_to_stride(content)
  style, _ = pad_to_stride(style)
  dtype = config.compute_dtype
  z_c, z_s = encode(vgg_params, content, dtype), encode(vgg_params, style, dtype)
  image, aux = generate(params, config, z_c, z_s, alpha=alpha, query_chunk=query_chunk)
  return jnp.clip(image[..., :h, :w, :], 0.0, 1.0), aux
