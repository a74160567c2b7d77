"""Relative errors between two sets of parameters (or gradients), per parameter group.

A group is a part of the network named by its torch-style parameter names: gate (E_f),
alignment (the controller's offset), kernel_head, decoder, and each discriminator scale.
"""

from __future__ import annotations

import numpy as np

from sk_jax.interop import port


def group_of(name: str) -> str:
  """A parameter's group from its torch-style name: gate, alignment, kernel_head, decoder, D scaleI."""
  parts = name.split(".")
  if parts[0].startswith("scale"):
    return f"D {parts[0]}"
  if parts[0] == "alignment":
    return "gate" if "gate" in parts else "alignment"
  return parts[0]


def flat(tree) -> dict:
  """Flax params -> {torch-style name: float64 numpy in torch's layout}."""
  return {k: v.double().numpy() for k, v in port.generator_to_torch(tree).items()}


def group_errors(ours: dict, ref: dict, start: dict | None = None) -> dict:
  """Per group: norm(ours - ref) / norm(ref) (or / norm(ref - start) with `start`), and norms."""
  acc: dict = {}
  for name, r in ref.items():
    d = np.asarray(ours[name], np.float64) - r
    base = r if start is None else r - start[name]
    a = acc.setdefault(group_of(name), [0.0, 0.0, 0.0])
    a[0] += float(np.sum(d * d))
    a[1] += float(np.sum(base * base))
    a[2] = max(a[2], float(np.max(np.abs(d))) if d.size else 0.0)
  return {
    g: {"rel": (s[0] ** 0.5) / max(s[1] ** 0.5, 1e-30), "norm": s[1] ** 0.5, "max_abs": s[2]}
    for g, s in acc.items()
  }


def adam_disagreement(ours: dict, ref: dict) -> dict:
  """Per group: relative difference of Adam's first update g / (|g| + eps) from two gradients."""
  eps = 1e-8
  step = lambda g: {k: v / (np.abs(v) + eps) for k, v in g.items()}
  return {g: e["rel"] for g, e in group_errors(step(ours), step(ref)).items()}


def grad_band(trainer, c, s, t_idx, mask, g_grads, d_grads) -> dict:
  """Per group: norm(g' - g) / norm(g) for the PyTorch gradients g' after every generator and
  discriminator parameter is moved by one float32 ulp (random sign): their own float32 band."""
  import torch

  nets = (trainer.gen, trainer.disc)
  saved = [{k: v.clone() for k, v in net.state_dict().items()} for net in nets]
  rng = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for p in (p for net in nets for p in net.parameters()):
      sign = torch.randint(0, 2, p.shape, generator=rng).float() * 2 - 1
      p.copy_(torch.nextafter(p, sign * torch.inf))
  _, _, g_moved, _, d_moved, _ = trainer.gradients(c, s, t_idx, mask)
  for net, state in zip(nets, saved):
    net.load_state_dict(state)
  to_np = lambda grads: {k: v.double().numpy() for k, v in grads.items()}
  band = {}
  for moved, ref in ((g_moved, g_grads), (d_moved, d_grads)):
    band.update({g: e["rel"] for g, e in group_errors(to_np(moved), to_np(ref)).items()})
  return band
