"""Training in plain PyTorch: the reference that `sk-jax parity --train` holds sk_jax.train to.

Written from the paper (Sec. 3.3, Eqs. 5 and 7-9) and docs/method.md, NCHW, float32:

  losses        content, style (mean/std and Gram), REMD at given positions, reconstruction
                (pixel and feature identity losses), LSGAN and hinge adversarial terms
  MultiScaleDiscriminator  pix2pixHD's PatchGANs; module paths equal the Flax names
                (scale0.conv0 ...), so `sk_jax.port.discriminator_to_torch` loads strictly
  StraightThroughGate      Eq. 5's Sign with the surrogate gradient of sigmoid(diff / tau)
  TrainGenerator           torch_ref.Generator with the gate above (same state dict)
  Adam                     optax.adam's arithmetic, with E_f's update scale and the
                           global-norm clip of sk_jax.train.make_optimizer
  Trainer                  Eq. 7, the D loss and one train step, as sk_jax.train's step

Extending it: a new loss term is one entry of `terms` in `Trainer.generator_loss` and one of
LOSS_WEIGHTS (term -> the cfg.loss field that weights it); a change to the gate's threshold
(an offset on beta, say) goes into `TrainAlignment.threshold`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from sk_jax.interop import torch_ref
from sk_jax.nn import vgg as jax_vgg

CONTENT_LAYERS = ("relu4_1", "relu5_1")
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
REMD_LAYERS = ("relu3_1", "relu4_1")
REC_LAYERS = ("relu2_1", "relu3_1", "relu4_1", "relu5_1")
# Eq. 7: each term of the total generator loss and the cfg.loss field that weights it.
LOSS_WEIGHTS = {
  "adv_g": "adv",
  "rec": "rec",
  "content": "content",
  "style": "style",
  "remd": "remd",
}
_EPS = 1e-5


# ----------------------------------------------------------------------------- losses


def mean_std(x, eps: float = _EPS):
  """Spatial mean and std (biased variance, eps inside the sqrt) of (B, C, H, W): each (B, C)."""
  return x.mean(dim=(2, 3)), torch.sqrt(x.var(dim=(2, 3), unbiased=False) + eps)


def content_loss(feats_cs, feats_c, layers=CONTENT_LAYERS):
  """Per sample (B,): sum over layers of the MSE between instance-normalised features."""
  return sum(
    (torch_ref.instance_norm(feats_cs[l]) - torch_ref.instance_norm(feats_c[l]))
    .square()
    .mean(dim=(1, 2, 3))
    for l in layers
  )


def gram(x):
  """(B, C, C): F F^T / (C H W)."""
  b, c, h, w = x.shape
  f = x.reshape(b, c, h * w)
  return torch.bmm(f, f.transpose(1, 2)) / (c * h * w)


def style_loss(feats_cs, feats_s, layers=STYLE_LAYERS, form: str = "mean_std"):
  """Per sample (B,): mean/std form (AdaIN's, channel means) or Gram form (Johnson et al.)."""
  total = 0.0
  for l in layers:
    if form == "gram":
      total = total + (gram(feats_cs[l]) - gram(feats_s[l])).square().sum(dim=(1, 2))
    else:
      (mu_a, sd_a), (mu_b, sd_b) = mean_std(feats_cs[l]), mean_std(feats_s[l])
      total = total + (mu_a - mu_b).square().mean(-1) + (sd_a - sd_b).square().mean(-1)
  return total


def positions(x, idx=None):
  """(B, C, H, W) -> (B, N, C) feature vectors; idx (B, M) long picks M positions per image."""
  x = x.flatten(2).transpose(1, 2)
  return x if idx is None else torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


def remd(x, y, eps: float = 1e-8):
  """Eq. 9 per image, (B,): max of the two mean nearest-neighbour cosine distances."""
  x = x * torch.rsqrt(x.square().sum(-1, keepdim=True) + eps)
  y = y * torch.rsqrt(y.square().sum(-1, keepdim=True) + eps)
  cost = 1.0 - torch.bmm(x, y.transpose(1, 2))
  return torch.maximum(cost.min(dim=2).values.mean(1), cost.min(dim=1).values.mean(1))


def remd_loss(feats_cs, feats_s, indices, layers=REMD_LAYERS):
  """Eq. 9 summed over layers, batch mean; indices {layer: (idx_cs, idx_s)}, None = all positions."""
  total = 0.0
  for l in layers:
    idx_cs, idx_s = indices.get(l, (None, None))
    total = total + remd(positions(feats_cs[l], idx_cs), positions(feats_s[l], idx_s)).mean()
  return total


def reconstruction_loss(i_cc, i_c, i_ss, i_s, f_cc, f_c, f_ss, f_s, w_pixel, w_feature):
  """Eq. 8 (identity losses, "||.||_2" read as the MSE): (weighted sum, pixel, feature)."""
  pixel = F.mse_loss(i_cc, i_c) + F.mse_loss(i_ss, i_s)
  feature = sum(F.mse_loss(f_cc[l], f_c[l]) + F.mse_loss(f_ss[l], f_s[l]) for l in REC_LAYERS)
  return w_pixel * pixel + w_feature * feature, pixel, feature


def discriminator_loss(real_outputs, fake_outputs, kind: str = "lsgan"):
  """0.5 * sum over scales of the real and the fake term (pix2pixHD)."""
  total = 0.0
  for real, fake in zip(real_outputs, fake_outputs, strict=True):
    if kind == "lsgan":
      total = total + (real - 1.0).square().mean() + fake.square().mean()
    else:
      total = total + F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
  return 0.5 * total


def generator_adv_loss(fake_outputs, kind: str = "lsgan"):
  """Sum over scales: (D(G) - 1)^2 (lsgan) or -D(G) (hinge), patch means."""
  if kind == "lsgan":
    return sum((f - 1.0).square().mean() for f in fake_outputs)
  return sum(-f.mean() for f in fake_outputs)


# ----------------------------------------------------------------------------- discriminator


class PatchDiscriminator(nn.Module):
  """pix2pixHD's NLayerDiscriminator: 4x4 convolutions, zero padding 2, LeakyReLU 0.2."""

  def __init__(self, features: int, num_layers: int, norm: str):
    super().__init__()
    self.num_layers, self.norm = num_layers, norm
    self.conv0 = nn.Conv2d(3, features, 4, 2, padding=2)
    cin = features
    for i in range(1, num_layers + 1):
      nf = min(features * 2**i, 512)
      stride = 2 if i < num_layers else 1
      # No bias before instance norm, which would cancel it (as the JAX model).
      conv = nn.Conv2d(cin, nf, 4, stride, padding=2, bias=norm != "instance")
      setattr(self, f"conv{i}", conv)
      cin = nf
    setattr(self, f"conv{num_layers + 1}", nn.Conv2d(cin, 1, 4, 1, padding=2))

  def forward(self, x):
    x = F.leaky_relu(self.conv0(x), 0.2)
    for i in range(1, self.num_layers + 1):
      x = getattr(self, f"conv{i}")(x)
      if self.norm == "instance":
        x = torch_ref.instance_norm(x)
      x = F.leaky_relu(x, 0.2)
    return getattr(self, f"conv{self.num_layers + 1}")(x)


class MultiScaleDiscriminator(nn.Module):
  """PatchGANs on the image in [-1, 1] at full, 1/2, 1/4 ... resolution; list of (B, 1, h, w)."""

  def __init__(self, config):
    super().__init__()
    self.num_scales = config.num_scales
    for i in range(config.num_scales):
      setattr(
        self, f"scale{i}", PatchDiscriminator(config.features, config.num_layers, config.norm)
      )

  def forward(self, images):
    x, outputs = images * 2.0 - 1.0, []
    for i in range(self.num_scales):
      outputs.append(getattr(self, f"scale{i}")(x))
      if i + 1 < self.num_scales:
        x = F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False)
    return outputs


# ----------------------------------------------------------------------------- the gate


class StraightThroughGate(torch.autograd.Function):
  """Eq. 5's Sign: forward 1 where diff > 0 else 0 (or the decisions `hard`, if given);
  backward the derivative of sigmoid(diff / temperature). temperature None: no gradient."""

  @staticmethod
  def forward(ctx, diff, temperature, hard=None):
    ctx.save_for_backward(diff)
    ctx.temperature = temperature
    return (diff > 0).to(diff.dtype) if hard is None else hard.to(diff.dtype)

  @staticmethod
  def backward(ctx, grad):
    (diff,) = ctx.saved_tensors
    if ctx.temperature is None:
      return torch.zeros_like(diff), None, None
    s = torch.sigmoid(diff / ctx.temperature)
    return grad * s * (1.0 - s) / ctx.temperature, None, None


class TrainAlignment(torch_ref.StyleAlignment):
  """torch_ref.StyleAlignment whose CGM gate passes the straight-through gradient to E_f."""

  def threshold(self, attn, z_c, ns: int):
    """T (B, Nc) of Eqs. 3-4 from E_f's lambda and beta (beta in units of 1/Ns)."""
    lam, beta_ns = self.gate(z_c)
    b = z_c.shape[0]
    return torch_ref.gate_threshold(attn, lam.reshape(b, -1), (beta_ns / ns).reshape(b, -1))

  def forward(self, z_c, z_s, mask=None):
    cfg = self.config
    if cfg.attention != "cgm":
      return super().forward(z_c, z_s, mask)
    b, c, h, w = z_c.shape
    ns = z_s.shape[2] * z_s.shape[3]
    sharpness = torch.exp(self.log_sharpness) if cfg.learn_sharpness else cfg.attention_sharpness
    attn = torch_ref.cosine_attention(z_c, z_s, sharpness)
    thresh = self.threshold(attn, z_c, ns)
    # The surrogate's temperature is in units of 1/Ns: the gap is scaled by Ns.
    diff = (attn - thresh.unsqueeze(-1)) * ns
    gate = StraightThroughGate.apply(diff, cfg.gate_temperature, mask)
    gated = attn * gate
    if cfg.gate_renormalize:
      total = gated.sum(-1, keepdim=True)
      gated = gated / torch.where(total > 0, total, torch.ones_like(total))
    values = z_s.flatten(2).transpose(1, 2).float()
    z_cs = torch.bmm(gated, values).transpose(1, 2).reshape(b, c, h, w).to(z_s.dtype)
    own = (diff > 0).to(attn.dtype).detach()
    aux = {
      "attention": attn.detach(),
      "threshold": thresh.detach(),
      "own_mask": own,
      "mask": gate.detach(),
      "kept_fraction": gate.detach().mean(dim=(1, 2)),
    }
    return z_cs, aux


class TrainGenerator(torch_ref.Generator):
  """torch_ref.Generator with `TrainAlignment`; loads the same state dict."""

  def __init__(self, config):
    super().__init__(config)
    self.alignment = TrainAlignment(config)


# ----------------------------------------------------------------------------- Adam


def global_norm(tensors):
  return torch.sqrt(sum(t.square().sum() for t in tensors))


class Adam:
  """optax.chain(clip_by_global_norm?, adam, scale of E_f's updates) on named tensors, float32.

  mu = b1 mu + (1 - b1) g, nu = b2 nu + (1 - b2) g^2, t += 1,
  update = -lr (mu / (1 - b1^t)) / (sqrt(nu / (1 - b2^t)) + eps), times `scales[name]`.
  A step whose loss or gradient norm is not finite changes nothing (sk_jax.train).
  """

  def __init__(self, params: dict, lr, b1, b2, eps, grad_clip=0.0, scales=None):
    self.params, self.lr, self.b1, self.b2, self.eps = params, lr, b1, b2, eps
    self.grad_clip, self.scales = grad_clip, scales or {}
    self.mu = {n: torch.zeros_like(p) for n, p in params.items()}
    self.nu = {n: torch.zeros_like(p) for n, p in params.items()}
    self.count = 0

  @torch.no_grad()
  def step(self, grads: dict, loss) -> tuple[bool, float]:
    """Applies one update; returns (applied, gradient norm before clipping)."""
    norm = global_norm(list(grads.values()))
    if not (math.isfinite(float(loss.detach())) and math.isfinite(float(norm))):
      return False, float(norm)
    if self.grad_clip > 0 and not norm < self.grad_clip:
      grads = {n: g / norm * self.grad_clip for n, g in grads.items()}
    self.count += 1
    t = torch.tensor(self.count, dtype=torch.int32)
    bc1 = 1.0 - torch.tensor(self.b1, dtype=torch.float32) ** t
    bc2 = 1.0 - torch.tensor(self.b2, dtype=torch.float32) ** t
    for n, p in self.params.items():
      g = grads[n]
      self.mu[n] = (1.0 - self.b1) * g + self.b1 * self.mu[n]
      self.nu[n] = (1.0 - self.b2) * g.square() + self.b2 * self.nu[n]
      update = (self.mu[n] / bc1) / (torch.sqrt(self.nu[n] / bc2) + self.eps) * -self.lr
      p.add_(update * self.scales.get(n, 1.0))
    return True, float(norm)


# ----------------------------------------------------------------------------- the step


def _split(feats: dict, n: int):
  parts = {k: v.chunk(n) for k, v in feats.items()}
  return [{k: v[i] for k, v in parts.items()} for i in range(n)]


def is_gate(name: str) -> bool:
  """E_f's parameters, whose updates opt.gate_lr_scale scales (as train.scale_gate_updates)."""
  return "gate" in name.split(".")


class Trainer:
  """Generator, discriminator and frozen VGG-16 in PyTorch, with sk_jax.train's loss and step.

  cfg: the training ConfigDict (loss, opt, train groups); model, disc: its frozen configs.
  Images are (B, 3, H, W) float32 in [0, 1]; uint8 batches go through `to_unit`.
  """

  def __init__(self, cfg, model, disc, g_state: dict, d_state: dict, vgg_state: dict):
    self.cfg, self.loss_cfg = cfg, cfg.loss
    self.vgg = torch_ref.VGGEncoder()
    self.vgg.load_state_dict(vgg_state)
    self.vgg.requires_grad_(False)
    self.gen = TrainGenerator(model)
    self.gen.load_state_dict(g_state)
    self.disc = MultiScaleDiscriminator(disc)
    self.disc.load_state_dict(d_state)
    opt = cfg.opt
    scale = float(opt.get("gate_lr_scale", 1.0))
    g_params = dict(self.gen.named_parameters())
    self.g_opt = Adam(
      g_params,
      opt.lr,
      opt.b1,
      opt.b2,
      opt.eps,
      opt.grad_clip,
      {n: scale for n in g_params if is_gate(n)},
    )
    d_lr = opt.d_lr if opt.d_lr is not None else opt.lr
    self.d_opt = Adam(
      dict(self.disc.named_parameters()), d_lr, opt.b1, opt.b2, opt.eps, opt.grad_clip
    )
    self.step_count = 0

  @staticmethod
  def to_unit(images_u8):
    """(B, H, W, 3) uint8 numpy -> (B, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(images_u8.transpose(0, 3, 1, 2).copy()).float() / 255.0

  def generator_loss(self, content, style, remd_indices, mask=None):
    """Eq. 7 -> (total, {term: batch mean}, I_cs, generator aux).

    remd_indices: {layer: (idx_cs, idx_s)} positions per image (None: all); mask: gate
    decisions (3B, Nc, Ns) to use in the forward pass instead of the model's own.
    """
    lc, b = self.loss_cfg, content.shape[0]
    with torch.no_grad():
      feats_c, feats_s = _split(self.vgg(torch.cat([content, style]), jax_vgg.TAPS), 2)
    z_c, z_s = feats_c["relu4_1"], feats_s["relu4_1"]
    out, aux = self.gen(torch.cat([z_c, z_c, z_s]), torch.cat([z_s, z_c, z_s]), mask=mask)
    i_cs, i_cc, i_ss = out.chunk(3)
    f_cs, f_cc, f_ss = _split(self.vgg(out, jax_vgg.TAPS), 3)
    rec, pixel, feature = reconstruction_loss(
      i_cc, content, i_ss, style, f_cc, feats_c, f_ss, feats_s, lc.rec_pixel, lc.rec_feature
    )
    terms = {
      "content": content_loss(f_cs, feats_c).mean(),
      "style": style_loss(f_cs, feats_s, form=lc.style_form).mean(),
      "remd": remd_loss(f_cs, feats_s, remd_indices),
      "adv_g": generator_adv_loss(self.disc(i_cs), lc.gan),
      "rec": rec,
      "rec_pixel": pixel,
      "rec_feature": feature,
    }
    total = sum(lc[field] * terms[term] for term, field in LOSS_WEIGHTS.items())
    aux["kept_fraction_cs"] = aux["kept_fraction"][:b].mean()
    return total, terms, i_cs, aux

  def discriminator_loss(self, style, fake):
    return discriminator_loss(self.disc(style), self.disc(fake.detach()), self.loss_cfg.gan)

  def gradients(self, content, style, remd_indices, mask=None):
    """One batch: (G total, terms, {G param: grad}, D loss, {D param: grad}, G aux), no update."""
    total, terms, i_cs, aux = self.generator_loss(content, style, remd_indices, mask)
    names, params = zip(*self.gen.named_parameters())
    g_grads = dict(zip(names, torch.autograd.grad(total, params)))
    d_loss = self.discriminator_loss(style, i_cs)
    d_names, d_params = zip(*self.disc.named_parameters())
    d_grads = dict(zip(d_names, torch.autograd.grad(d_loss, d_params)))
    return total, terms, g_grads, d_loss, d_grads, aux

  def train_step(self, content, style, remd_indices, mask=None) -> dict:
    """sk_jax.train's step: a G update, and a D update on every train.d_every-th step
    (on real styles vs this step's I_cs, before the G update). Returns the step's metrics."""
    d_every = int(self.cfg.train.d_every)
    total, terms, i_cs, aux = self.generator_loss(content, style, remd_indices, mask)
    names, params = zip(*self.gen.named_parameters())
    g_grads = dict(zip(names, torch.autograd.grad(total, params)))
    metrics = {f"loss/{k}": float(v.detach()) for k, v in terms.items()}
    metrics["loss/total"] = float(total.detach())
    metrics["gate/kept_fraction"] = float(aux["kept_fraction_cs"])
    g_ok, metrics["grad_norm/g"] = self.g_opt.step(g_grads, total)
    d_ok, metrics["loss/d"] = True, 0.0
    if self.step_count % d_every == d_every - 1:
      d_loss = self.discriminator_loss(style, i_cs)
      d_names, d_params = zip(*self.disc.named_parameters())
      d_grads = dict(zip(d_names, torch.autograd.grad(d_loss, d_params)))
      d_ok, _ = self.d_opt.step(d_grads, d_loss)
      metrics["loss/d"] = float(d_loss.detach())
    metrics["skipped"] = int(not (g_ok and d_ok))
    self.step_count += 1
    return metrics
