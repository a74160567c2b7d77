"""Training in plain PyTorch: the reference that `sk-jax parity --train` holds sk_jax.train to.

Written from the paper (Sec. 3.3, Eqs. 5 and 7) and docs/method.md, NCHW, float32, with the
losses and the discriminator of `sk_jax.torch_losses`:

  StraightThroughGate      Eq. 5's Sign with the surrogate gradient (sigmoid or linear)
  TrainGenerator           torch_ref.Generator with the gate above (same state dict), the
                           soft kept fraction of the budget term and the controller's offset
  Adam                     optax.adam's arithmetic, with E_f's update scale and the
                           global-norm clip of sk_jax.train.make_optimizer
  Trainer                  Eq. 7 (plus the gate's budget term), the D loss and one train step
                           (plus the gate's controller), as sk_jax.train's step

Extending it: a new loss term is one entry of `terms` in `Trainer.generator_loss` and one of
LOSS_WEIGHTS (term -> the cfg.loss field that weights it); a change to the gate's threshold
goes into `TrainAlignment.threshold`.
"""

from __future__ import annotations

import math

import torch

from sk_jax.interop import torch_ref
from sk_jax.interop.torch_losses import (
  MultiScaleDiscriminator,
  content_loss,
  discriminator_loss,
  generator_adv_loss,
  reconstruction_loss,
  remd_loss,
  style_loss,
)
from sk_jax.nn import vgg as jax_vgg

# Eq. 7: each term of the total generator loss and the cfg.loss field that weights it.
LOSS_WEIGHTS = {
  "adv_g": "adv",
  "rec": "rec",
  "content": "content",
  "style": "style",
  "remd": "remd",
}


# ----------------------------------------------------------------------------- the gate


class StraightThroughGate(torch.autograd.Function):
  """Eq. 5's Sign: forward 1 where diff > 0 else 0 (or the decisions `hard`, if given);
  backward the derivative of the surrogate at `temperature` (None: no gradient): sigmoid's,
  s (1 - s) / temperature, or "linear"'s constant 1 / (4 temperature), its value at 0."""

  @staticmethod
  def forward(ctx, diff, temperature, hard=None, surrogate="sigmoid"):
    ctx.save_for_backward(diff)
    ctx.temperature, ctx.surrogate = temperature, surrogate
    return (diff > 0).to(diff.dtype) if hard is None else hard.to(diff.dtype)

  @staticmethod
  def backward(ctx, grad):
    (diff,) = ctx.saved_tensors
    if ctx.temperature is None:
      return torch.zeros_like(diff), None, None, None
    if ctx.surrogate == "linear":
      return grad / (4.0 * ctx.temperature), None, None, None
    s = torch.sigmoid(diff / ctx.temperature)
    return grad * s * (1.0 - s) / ctx.temperature, None, None, None


class TrainAlignment(torch_ref.StyleAlignment):
  """torch_ref.StyleAlignment whose CGM gate passes the straight-through gradient to E_f."""

  def threshold(self, attn, z_c, ns: int):
    """T (B, Nc) of Eqs. 3-4 from E_f's lambda and beta (beta in units of 1/Ns)."""
    lam, beta_ns = self.gate(z_c)
    if self.config.gate_controlled:
      beta_ns = beta_ns + self.beta_offset
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
    gate = StraightThroughGate.apply(diff, cfg.gate_temperature, mask, cfg.gate_surrogate)
    gated = attn * gate
    if cfg.gate_renormalize:
      total = gated.sum(-1, keepdim=True)
      gated = gated / torch.where(total > 0, total, torch.ones_like(total))
    values = z_s.flatten(2).transpose(1, 2).float()
    z_cs = torch.bmm(gated, values).transpose(1, 2).reshape(b, c, h, w).to(z_s.dtype)
    own = (diff > 0).to(attn.dtype).detach()
    kept_rows = gate.detach().mean(-1)
    # The budget term's kept fraction: its value is the hard one, its gradient that of
    # -T Ns / 4 (ops.aligned_style_features' kept_st), which does not vanish when T is low.
    t_ns = thresh * ns
    aux = {
      "kept_st": (kept_rows - 0.25 * (t_ns - t_ns.detach())).mean(-1),
      "kept_std": kept_rows.std(-1, unbiased=False),
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
    self.cfg, self.loss_cfg, self.model = cfg, cfg.loss, model
    self.vgg = torch_ref.VGGEncoder()
    self.vgg.load_state_dict(vgg_state)
    self.vgg.requires_grad_(False)
    self.gen = TrainGenerator(model)
    self.gen.load_state_dict(g_state)
    self.disc = MultiScaleDiscriminator(disc)
    self.disc.load_state_dict(d_state)
    opt = cfg.opt
    g_params = dict(self.gen.named_parameters())
    scales = {n: float(opt.gate_lr_scale) for n in g_params if is_gate(n)}
    self.g_opt = Adam(g_params, opt.lr, opt.b1, opt.b2, opt.eps, opt.grad_clip, scales)
    d_lr = opt.d_lr if opt.d_lr is not None else opt.lr
    d_params = dict(self.disc.named_parameters())
    self.d_opt = Adam(d_params, d_lr, opt.b1, opt.b2, opt.eps, opt.grad_clip)
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
    if self.model.gate_budgeted:
      # The gate's restoring force as a loss term (docs/method.md, "The gate's equilibrium").
      terms["gate_budget"] = (aux["kept_st"][:b] - self.model.gate_target).square().mean()
      total = total + lc.gate_budget * terms["gate_budget"]
    aux["kept_fraction_cs"] = aux["kept_fraction"][:b].mean()
    return total, terms, i_cs, aux

  def discriminator_loss(self, style, fake):
    return discriminator_loss(self.disc(style), self.disc(fake.detach()), self.loss_cfg.gan)

  def gradients(self, content, style, remd_indices, mask=None):
    """One batch: (G total, terms, {G param: grad}, D loss, {D param: grad}, G aux), no update."""
    total, terms, i_cs, aux = self.generator_loss(content, style, remd_indices, mask)
    d_loss = self.discriminator_loss(style, i_cs)
    return total, terms, _grads(total, self.gen), d_loss, _grads(d_loss, self.disc), aux

  def train_step(self, content, style, remd_indices, mask=None) -> dict:
    """sk_jax.train's step: a G update (then the gate controller's, if the model has one), and
    a D update on every train.d_every-th step (on real styles vs this step's I_cs, before the
    G update). Returns the step's metrics."""
    d_every = int(self.cfg.train.d_every)
    total, terms, i_cs, aux = self.generator_loss(content, style, remd_indices, mask)
    g_grads = _grads(total, self.gen)
    metrics = {f"loss/{k}": float(v.detach()) for k, v in terms.items()}
    metrics["loss/total"] = float(total.detach())
    metrics["gate/kept_fraction"] = float(aux["kept_fraction_cs"])
    g_ok, metrics["grad_norm/g"] = self.g_opt.step(g_grads, total)
    if g_ok and self.model.gate_controlled:
      # beta_offset += rate sign(kept - k*): no gradient (sk_jax.train.control_gate_offset).
      rate = float(self.cfg.opt.gate_offset_rate)
      with torch.no_grad():
        kept = aux["kept_fraction_cs"].float()
        self.gen.alignment.beta_offset.add_(rate * torch.sign(kept - self.model.gate_target))
    d_ok, metrics["loss/d"] = True, 0.0
    if self.step_count % d_every == d_every - 1:
      d_loss = self.discriminator_loss(style, i_cs)
      d_ok, _ = self.d_opt.step(_grads(d_loss, self.disc), d_loss)
      metrics["loss/d"] = float(d_loss.detach())
    metrics["skipped"] = int(not (g_ok and d_ok))
    self.step_count += 1
    return metrics


def _grads(loss, net) -> dict:
  """{name: d loss / d param} over all of net's parameters; zeros for those without a gradient
  (the controller's offset), as JAX's gradient of a stop_gradient input."""
  named = dict(net.named_parameters())
  train = [n for n, p in named.items() if p.requires_grad]
  grads = dict(zip(train, torch.autograd.grad(loss, [named[n] for n in train])))
  return {n: grads[n] if n in grads else torch.zeros_like(p) for n, p in named.items()}
