"""The StyleKernel generator in plain PyTorch: the reference that `sk-jax parity` holds JAX to.

A line-by-line mirror of sk_jax/nn (ops.py, spatial.py and the modules), written the way
a PyTorch user would (NCHW, nn.Conv2d, F.pad), with the same casts: features and
convolutions in the compute dtype, attention, gate, kernels and Eq. 6 in float32.
Module paths equal the Flax names, so `sk_jax.interop.port.generator_to_torch(params)`
loads with `strict=True`:

  encoder.features.{0,2,...,28}            torchvision's VGG-16 layout
  generator.alignment.gate.conv{1,2}       E_f (lambda, beta), only when attention="cgm"
  generator.alignment.log_sharpness        only when learn_sharpness
  generator.kernel_head.conv{1,2}          F1, F2, B per position and channel
  generator.decoder.dec4_1 ... dec1_1

PyTorch is imported here, at module import; nothing else in sk_jax imports this
module unless asked (pip install 'sk-jax[torch]').
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sk_jax.nn import vgg as jax_vgg
from sk_jax.nn.decoder import LAYERS as DECODER_LAYERS

_EPS = 1e-5
FEATURE_CHANNELS = 512
# torchvision vgg16().features index of the ReLU that ends at each tap.
TAP_INDEX = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 18, "relu5_1": 25}


def torch_dtype(name: str):
  return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


class VGGEncoder(nn.Module):
  """torchvision's vgg16().features (through conv5_3), with ImageNet normalisation inside.

  Its state dict is torchvision's `features.*`, so `vgg16-397923af.pth` loads with
  strict=True once `classifier.*` is dropped. The forward pass stops at the deepest tap.

  forward(images (B, 3, H, W) in [0, 1], taps) -> {tap: (B, C, H/2^i, W/2^i)}.
  """

  def __init__(self, dtype=torch.float32):
    super().__init__()
    layers, cin = [], 3
    for name in jax_vgg.LAYERS:
      if name == "M":
        layers.append(nn.MaxPool2d(2, 2))
      else:
        cout = jax_vgg.CHANNELS[name.split("_")[0]]
        layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
        cin = cout
    self.features = nn.Sequential(*layers)
    self.dtype = dtype
    self.register_buffer(
      "mean", torch.tensor(jax_vgg.IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
    )
    self.register_buffer(
      "std", torch.tensor(jax_vgg.IMAGENET_STD).view(1, 3, 1, 1), persistent=False
    )

  def forward(self, images, taps=("relu4_1",)):
    last = max(TAP_INDEX[t] for t in taps)
    x = ((images.float() - self.mean) / self.std).to(self.dtype)
    out = {}
    for i, layer in enumerate(self.features):
      if isinstance(layer, nn.Conv2d):
        x = _conv(layer, x, 1)
      else:
        x = layer(x)
      for tap, idx in TAP_INDEX.items():
        if idx == i and tap in taps:
          out[tap] = x
      if i == last:
        break
    return out


def _conv(conv: nn.Conv2d, x, padding: int):
  """A convolution as JAX computes it in x's dtype (flax nn.Conv and vgg._conv alike).

  Weights are cast to x's dtype, the products are summed in float32 and rounded
  once to x's dtype, then the bias (also cast) is added in x's dtype: two
  roundings in bfloat16, as in `conv(x, w) + b` on the JAX side. Summing in
  float32 is what XLA, oneDNN and cuDNN do for bfloat16; writing it as a float32
  convolution of bfloat16 values also avoids PyTorch's bfloat16 CPU convolution,
  which took 40x longer than float32 on this machine's CPUs (no AVX512-BF16).
  flax's 'SAME' for a 3x3 kernel at stride 1 is a zero pad of 1.
  """
  w, b = conv.weight.to(x.dtype), conv.bias.to(x.dtype)
  if x.dtype == torch.float32:
    return F.conv2d(x, w, padding=padding) + b.view(1, -1, 1, 1)
  y = F.conv2d(x.float(), w.float(), padding=padding).to(x.dtype)
  return y + b.view(1, -1, 1, 1)


class GateNet(nn.Module):
  """E_f: (B, 512, H, W) -> lambda, beta (beta in units of 1/Ns), each (B, H, W) float32."""

  def __init__(self, hidden: int, lambda_form: str = "linear", center: bool = False):
    super().__init__()
    self.conv1 = nn.Conv2d(FEATURE_CHANNELS, hidden, 3)
    self.conv2 = nn.Conv2d(hidden, 2, 3)
    self.lambda_form = lambda_form
    self.center = center

  def forward(self, z_c):
    h = F.relu(_conv(self.conv1, z_c, 1))
    out = _conv(self.conv2, h, 1).float()
    lam = F.softplus(out[:, 0]) if self.lambda_form == "softplus" else out[:, 0]
    beta = out[:, 1]
    if self.center:
      # model.gate_center: lambda to mean 1, beta to mean 0 over each image's positions
      lam = lam - lam.mean(dim=(1, 2), keepdim=True) + 1.0
      beta = beta - beta.mean(dim=(1, 2), keepdim=True)
    return lam, beta


def cosine_attention(z_c, z_s, sharpness):
  """Eq. 1 as ops.cosine_attention: (B, C, H, W), (B, C, Hs, Ws) -> (B, Nc, Ns) float32."""
  q = z_c.flatten(2).transpose(1, 2).float()
  k = z_s.flatten(2).transpose(1, 2).float()
  q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-12)
  k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-12)
  return torch.softmax(sharpness * torch.bmm(q, k.transpose(1, 2)), dim=-1)


def gate_threshold(attn, lam, beta):
  """Eqs. 3-4: T(u) = lam(u) sum_v A(u, v) A_r(v) + beta(u); (B, Nc)."""
  a_r = attn.mean(dim=1)
  return lam * torch.bmm(attn, a_r.unsqueeze(-1)).squeeze(-1) + beta


def topk_threshold(attn, k: int):
  """The k-th largest weight of each row, (B, Nc); ops.topk_attention keeps A >= it."""
  return torch.topk(attn, min(k, attn.shape[-1]), dim=-1).values[..., -1]


class StyleAlignment(nn.Module):
  """Z_c, Z_s -> Z_cs (Eq. 1, then full / topK / CGM aggregation) and aux (attention, threshold, mask, kept fraction)."""

  def __init__(self, config):
    super().__init__()
    self.config = config
    if config.learn_sharpness:
      self.log_sharpness = nn.Parameter(torch.tensor(math.log(config.attention_sharpness)))
    if config.attention == "cgm":
      self.gate = GateNet(config.gate_hidden, config.gate_lambda, config.gate_center)
    if config.gate_controlled:
      # Moved by the trainer's controller, never by a gradient (sk_jax.train.step.control_gate_offset).
      self.beta_offset = nn.Parameter(torch.zeros(()), requires_grad=False)

  def forward(self, z_c, z_s, mask=None):
    """mask: (B, Nc, Ns) gate decisions to use instead of this module's own (see sk_jax.interop.parity)."""
    cfg = self.config
    b, c, h, w = z_c.shape
    sharpness = torch.exp(self.log_sharpness) if cfg.learn_sharpness else cfg.attention_sharpness
    attn = cosine_attention(z_c, z_s, sharpness)
    aux = {"attention": attn}
    if cfg.attention == "cgm":
      lam, beta = self.gate(z_c)
      if cfg.gate_controlled:
        beta = beta + self.beta_offset
      beta = beta / (z_s.shape[2] * z_s.shape[3])  # beta in units of 1/Ns, as in JAX
      thresh = gate_threshold(attn, lam.reshape(b, h * w), beta.reshape(b, h * w))
      # ops.gated_attention scales by Ns before the sign; kept for bit-equal decisions.
      own = ((attn - thresh.unsqueeze(-1)) * attn.shape[-1] > 0).to(attn.dtype)
    elif cfg.attention in ("topk", "quantile"):
      # "quantile" keeps round(k* Ns) weights of each row (ops.quantile_k), at least one.
      ns = attn.shape[-1]
      k = cfg.topk if cfg.attention == "topk" else max(1, min(ns, round(cfg.gate_target * ns)))
      thresh = topk_threshold(attn, k)
      own = (attn >= thresh.unsqueeze(-1)).to(attn.dtype)
    if cfg.attention != "full":
      aux.update(threshold=thresh, own_mask=own)
      mask = own if mask is None else mask.to(attn.dtype)
      gated = attn * mask
      if cfg.gate_renormalize:
        total = gated.sum(-1, keepdim=True)
        gated = gated / torch.where(total > 0, total, torch.ones_like(total))
    else:
      gated, mask = attn, torch.ones_like(attn)
    values = z_s.flatten(2).transpose(1, 2).float()
    z_cs = torch.bmm(gated, values).transpose(1, 2).reshape(b, c, h, w).to(z_s.dtype)
    aux.update(mask=mask, kept_fraction=mask.mean(dim=(1, 2)))
    return z_cs, aux


class KernelHead(nn.Module):
  """Z_cs -> F1 (B, C, k, H, W), F2 (B, C, k, H, W), B (B, C, H, W), float32.

  The 1x1 conv's output channel c * (2k+1) + j is channel c's j-th value: the
  Flax reshape (.., C, 2k+1), with F1 = [:k], F2 = [k:2k], B = [2k].
  """

  def __init__(self, channels: int, k: int, hidden: int):
    super().__init__()
    self.channels, self.k = channels, k
    self.conv1 = nn.Conv2d(channels, hidden, 3)
    self.conv2 = nn.Conv2d(hidden, channels * (2 * k + 1), 1)

  def forward(self, z_cs):
    k = self.k
    h = F.relu(_conv(self.conv1, z_cs, 1))
    out = _conv(self.conv2, h, 0).float()
    b, _, hh, ww = out.shape
    kern = out.reshape(b, self.channels, 2 * k + 1, hh, ww)
    return kern[:, :, :k], kern[:, :, k : 2 * k], kern[:, :, 2 * k]


def channel_shuffle(x, groups: int):
  """(B, g * C/g, H, W) -> channels reordered (C/g, g), as spatial.channel_shuffle on NHWC."""
  if groups <= 1:
    return x
  b, c, h, w = x.shape
  return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def instance_norm(x, eps: float = _EPS):
  mean = x.mean(dim=(2, 3), keepdim=True)
  var = x.var(dim=(2, 3), keepdim=True, unbiased=False)
  return (x - mean) / torch.sqrt(var + eps)


def separable_pixel_conv(x, f_v, f_h, bias):
  """Per-position separable conv with reflection: x (B, C, H, W), f (B, C, k, H, W), bias (B, C, H, W)."""
  k = f_v.shape[2]
  r = k // 2
  h, w = x.shape[2:]
  xp = F.pad(x, (0, 0, r, r), mode="reflect") if r else x
  y = sum(f_v[:, :, t] * xp[:, :, t : t + h] for t in range(k))
  yp = F.pad(y, (r, r, 0, 0), mode="reflect") if r else y
  z = sum(f_h[:, :, t] * yp[:, :, :, t : t + w] for t in range(k))
  return z + bias


def apply_style_kernels(z_c, f_v, f_h, bias, groups: int):
  """Eq. 6: Z_bar = IN(GS(Z_c)) * F1 * F2 + B, in float32."""
  return separable_pixel_conv(instance_norm(channel_shuffle(z_c.float(), groups)), f_v, f_h, bias)


class Decoder(nn.Module):
  """(B, 512, H, W) -> (B, 3, 8H, 8W): reflection pad 1, 3x3 conv, ReLU, nearest x2 upsampling."""

  def __init__(self, dtype=torch.float32):
    super().__init__()
    self.dtype = dtype
    cin = FEATURE_CHANNELS
    for name, cout, _ in DECODER_LAYERS:
      setattr(self, name, nn.Conv2d(cin, cout, 3))
      cin = cout

  def forward(self, x):
    x = x.to(self.dtype)
    for i, (name, _, up) in enumerate(DECODER_LAYERS):
      x = _conv(getattr(self, name), F.pad(x, (1, 1, 1, 1), mode="reflect"), 0)
      if i < len(DECODER_LAYERS) - 1:
        x = F.relu(x)
      if up:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
    return x.float()


class Generator(nn.Module):
  """relu4_1 features (B, 512, H, W), (B, 512, Hs, Ws) -> image (B, 3, 8H, 8W) float32, aux."""

  def __init__(self, config):
    super().__init__()
    self.config = config
    self.dtype = torch_dtype(config.dtype)
    k = config.kernel_size
    self.alignment = StyleAlignment(config)
    self.kernel_head = KernelHead(FEATURE_CHANNELS, k, config.kernel_hidden)
    self.decoder = Decoder(self.dtype)

  def forward(self, z_c, z_s, alpha=1.0, mask=None):
    z_c, z_s = z_c.to(self.dtype), z_s.to(self.dtype)
    z_cs, aux = self.alignment(z_c, z_s, mask)
    f_v, f_h, bias = self.kernel_head(z_cs)
    z_bar = apply_style_kernels(z_c, f_v, f_h, bias, self.config.shuffle_groups)
    z_mix = alpha * z_bar + (1.0 - alpha) * z_c.float()
    image = self.decoder(z_mix)
    aux.update(z_cs=z_cs, f_v=f_v, f_h=f_h, bias=bias, z_bar=z_bar)
    return image, aux


class StyleKernel(nn.Module):
  """Images in, image out: the encoder and the generator; loads `sk_jax.interop.torch_io.export_torch` files.

  forward(content (B, 3, H, W), style (B, 3, Hs, Ws) in [0, 1], H, W multiples of 8)
  -> (image (B, 3, H, W) clipped to [0, 1], aux).
  """

  def __init__(self, config):
    super().__init__()
    self.config = config
    self.encoder = VGGEncoder(torch_dtype(config.dtype))
    self.generator = Generator(config)

  def forward(self, content, style, alpha=1.0):
    z_c = self.encoder(content)["relu4_1"]
    z_s = self.encoder(style)["relu4_1"]
    image, aux = self.generator(z_c, z_s, alpha)
    return image.clamp(0.0, 1.0), aux
