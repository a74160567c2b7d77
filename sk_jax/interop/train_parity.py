"""JAX vs PyTorch for training: loss terms, gradients per parameter group, and K train steps.

`compare_train` runs sk_jax.train's own generator loss and jitted train step against the plain
PyTorch mirror `sk_jax.torch_train` from the same weights (the generator's; a discriminator
drawn once and copied) and the same uint8 batches. The only random choice of a step, REMD's
position subsampling, is drawn on the JAX side (`remd_indices`, the keys sk_jax.train derives
from its seed and the step) and handed to PyTorch. As in `sk_jax.parity`, a gate decision whose
gap |A - T| / max(T, 1/Ns) lies inside float32's band may flip; the flips are counted, PyTorch
then takes JAX's decision on those entries, and a flip outside the band fails.

Relative errors here are norm(jax - torch) / norm(torch) over a whole parameter group (and
|jax - torch| / |torch| for a loss term). Tolerances and their reasons: docs/interop.md.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from sk_jax.errors import InputError
from sk_jax.interop import parity, port
from sk_jax.nn import losses, vgg
from sk_jax.nn.discriminator import MultiScaleDiscriminator, init_discriminator
from sk_jax.nn.generator import Generator
from sk_jax.train import step as train

# float32 on the CPU; the reasons and the measurements are in docs/interop.md.
# Loss terms: sums of <= 1e5 float32 values, measured <= 2e-6.
LOSS_TOLERANCE = 1e-5
# Gradients per group: max(GRAD_TOLERANCE, BAND_FACTOR * band), where the band is how far the
# PyTorch gradient itself moves when every generator parameter is moved by one float32 ulp
# (`_grad_band`). Where ReLU kinks meet instance norm's 1 / sqrt(var + 1e-5) on nearly dead
# channels (the content loss of a random-init generator) both frameworks are 1e-3 away from a
# float64 reference, and no float32 computation can agree better than that band.
GRAD_TOLERANCE = 1e-4
BAND_FACTOR = 4.0
# Parameters after K steps, per group: norm(jax - torch) / norm(torch - start). Adam's first
# update is g / (|g| + eps) ~ sign(g): an element whose gradient is smaller than its rounding
# error gets a full step of either sign. `_adam_disagreement` measures that on the one-batch
# gradients (r0). Each later step adds at most about as much again, and the two trajectories
# feed their differences back (another I_cs, another D), so the bound is linear in K:
# min(1, PARAM_FACTOR * r0 * K), at least PARAM_FLOOR. 1 would mean unrelated updates.
PARAM_FLOOR = 1e-3
PARAM_FACTOR = 4.0
# Per-step losses follow the parameters and are held to the same bound.
GATE_BAND = parity.GATE_BAND["float32"]
# Spatial stride of each VGG-16 tap (REMD's positions live at relu3_1 and relu4_1).
TAP_STRIDE = {"relu1_1": 1, "relu2_1": 2, "relu3_1": 4, "relu4_1": 8, "relu5_1": 16}


DEFAULT_CONFIG = os.path.join(
  os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "configs", "default.py"
)


def train_config(model, batch: int, crop: int, config_path: str | None = None):
  """The training ConfigDict of `config_path` (default: the checkout's configs/default.py) with
  the generator's own model group, batch size and crop."""
  from sk_jax.config import load_config

  path = config_path or DEFAULT_CONFIG
  if config_path is None and not os.path.isfile(path):
    raise InputError(f"{path}: not found (an installed package); give --config configs/default.py")
  cfg = load_config(path)
  cfg.model = model.to_dict()
  cfg.data.batch_size, cfg.data.crop = int(batch), int(crop)
  return cfg


def remd_indices(key, batch: int, crop: int, max_positions: int, layers=losses.REMD_LAYERS):
  """The positions `losses.remd_loss(..., key, max_positions)` draws for (batch, crop, crop)
  images: {layer: (idx_cs, idx_s)}, each (batch, M) int64 numpy, or None (all positions)."""
  out = {}
  for i, l in enumerate(layers):
    n = (crop // TAP_STRIDE[l]) ** 2
    pair = []
    for k in jax.random.split(jax.random.fold_in(key, i)):
      if max_positions <= 0 or n <= max_positions:
        pair.append(None)
        continue
      draw = jax.vmap(lambda kk: jax.random.choice(kk, n, (max_positions,), replace=False))
      pair.append(np.asarray(draw(jax.random.split(k, batch)), np.int64))
    out[l] = tuple(pair)
  return out


def group_of(name: str) -> str:
  """A parameter's group from its torch-style name: gate, alignment, kernel_head, decoder, D scaleI."""
  parts = name.split(".")
  if parts[0].startswith("scale"):
    return f"D {parts[0]}"
  if parts[0] == "alignment":
    return "gate" if "gate" in parts else "alignment"
  return parts[0]


def _flat(tree) -> dict:
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


def parity_batches(n: int, batch: int, crop: int, seed: int = 0) -> list[dict]:
  """n batches of random (crop x crop) uint8 crops: photos as content, textures as style."""
  from sk_jax.train import data

  rng = np.random.default_rng(seed)
  sources = [data.open_source(s, crop) for s in ("embedded:photos", "embedded:styles")]
  out = []
  for _ in range(n):
    pair = []
    for src in sources:
      crops = []
      for _ in range(batch):
        img = src[int(rng.integers(len(src)))]["image"]
        top = int(rng.integers(img.shape[0] - crop + 1))
        left = int(rng.integers(img.shape[1] - crop + 1))
        crops.append(img[top : top + crop, left : left + crop])
      pair.append(np.stack(crops).astype(np.uint8))
    out.append({"content": pair[0], "style": pair[1]})
  return out


def _jax_functions(cfg, model, disc):
  g_loss_fn = train.make_generator_loss(cfg, model, disc)
  dnet, gen = MultiScaleDiscriminator(disc, model.compute_dtype), Generator(model)
  gan = cfg.loss.gan

  @jax.jit
  def grads(g, d, vgg_params, content, style, key):
    (total, (terms, i_cs)), gg = jax.value_and_grad(g_loss_fn, has_aux=True)(
      g, d, vgg_params, content, style, key
    )
    fake = jax.lax.stop_gradient(i_cs)
    d_fn = lambda p: losses.discriminator_loss(
      dnet.apply({"params": p}, style), dnet.apply({"params": p}, fake), gan
    )
    d_loss, dg = jax.value_and_grad(d_fn)(d)
    return total, terms, gg, d_loss, dg

  @jax.jit
  def mask(g, vgg_params, content, style):
    # The generator call of make_generator_loss: I_cs, I_cc, I_ss in one stacked batch.
    real = vgg.vgg16_features(vgg_params, jnp.concatenate([content, style]), ("relu4_1",))
    z_c, z_s = jnp.split(real["relu4_1"], 2)
    _, aux = gen.apply(
      {"params": g}, jnp.concatenate([z_c, z_c, z_s]), jnp.concatenate([z_s, z_c, z_s])
    )
    return aux["mask"]

  return grads, mask, jax.jit(train.make_train_step(cfg, model, disc))


def _gate(jax_mask, t_aux) -> tuple[dict, np.ndarray | None]:
  row, adopted = parity._gate_agreement(jax_mask, t_aux, GATE_BAND)
  flipped = t_aux["own_mask"].numpy() != np.asarray(jax_mask)
  gap = parity.gate_gap(t_aux["attention"].numpy(), t_aux["threshold"].numpy())
  n = int(flipped.sum())
  info = {
    "decisions": int(flipped.size),
    "flips": n,
    "flips_inside_band": int((flipped & (gap < GATE_BAND)).sum()),
    "agreement": 1.0 - n / flipped.size,
    "max_gap_of_a_flip": row.max_rel,
    "band": GATE_BAND,
    "ok": row.ok,
  }
  return info, adopted


def _row(kind, name, ours, ref, tol):
  rel = abs(ours - ref) / max(abs(ref), 1e-30)
  return {
    "kind": kind,
    "name": name,
    "jax": ours,
    "torch": ref,
    "rel": rel,
    "tol": tol,
    "ok": bool(rel <= tol),
  }


def compare_train(g_params, model, vgg_params, cfg, batches, seed: int = 0, d_params=None) -> dict:
  """One-batch table (loss terms, gradients per group, gate agreement), then len(batches)
  train steps in both frameworks. cfg: a training ConfigDict whose model matches `model`;
  batches: [{"content", "style": (B, H, W, 3) uint8}] (H = W = crop). Returns a JSON-able dict."""
  import torch

  from sk_jax.config import validate_config
  from sk_jax.interop import torch_train

  t0 = time.perf_counter()
  _, disc = validate_config(cfg)
  g_params = jax.tree.map(lambda x: np.asarray(x, np.float32), g_params)
  if d_params is None:
    d_params = init_discriminator(disc, jax.random.key(seed + 1))
  d_params = jax.tree.map(lambda x: np.asarray(x, np.float32), d_params)
  jax_grads, jax_mask, jax_step = _jax_functions(cfg, model, disc)
  trainer = torch_train.Trainer(
    cfg,
    model,
    disc,
    port.generator_to_torch(g_params),
    port.discriminator_to_torch(d_params),
    port.vgg16_to_torch(vgg_params),
  )
  rng = jax.random.key(seed)
  crop, b = batches[0]["content"].shape[1], batches[0]["content"].shape[0]
  max_pos = int(cfg.loss.remd_max_positions)
  gated = model.attention != "full"

  def inputs(batch, step):
    idx = remd_indices(jax.random.fold_in(rng, step), b, crop, max_pos)
    t_idx = {
      l: tuple(None if i is None else torch.from_numpy(i) for i in p) for l, p in idx.items()
    }
    c, s = trainer.to_unit(batch["content"]), trainer.to_unit(batch["style"])
    j_c, j_s = (jnp.asarray(x, jnp.float32) / 255.0 for x in (batch["content"], batch["style"]))
    return t_idx, c, s, j_c, j_s

  def gate(g, c, s, j_c, j_s):
    if not gated:
      return None, None
    with torch.no_grad():
      _, t_aux = trainer.gen(*trainer_z(c, s))
    return _gate(np.asarray(jax_mask(g, vgg_params, j_c, j_s)), t_aux)

  def trainer_z(c, s):
    z_c, z_s = trainer.vgg(torch.cat([c, s]), ("relu4_1",))["relu4_1"].chunk(2)
    return torch.cat([z_c, z_c, z_s]), torch.cat([z_s, z_c, z_s])

  with jax.default_matmul_precision("highest"):
    # 1. One batch: loss terms and gradients.
    t_idx, c, s, j_c, j_s = inputs(batches[0], 0)
    gate_info, adopted = gate(g_params, c, s, j_c, j_s)
    mask = None if adopted is None else torch.from_numpy(adopted)
    total, terms, g_grads, d_loss, d_grads, _ = trainer.gradients(c, s, t_idx, mask)
    j_total, j_terms, j_gg, j_dloss, j_dg = jax.device_get(
      jax_grads(g_params, d_params, vgg_params, j_c, j_s, jax.random.fold_in(rng, 0))
    )
    rows = [
      _row("loss", k, float(j_terms[k]), float(v.detach()), LOSS_TOLERANCE)
      for k, v in terms.items()
    ]
    total, d_loss = float(total.detach()), float(d_loss.detach())
    rows.append(_row("loss", "total (Eq. 7)", float(j_total), total, LOSS_TOLERANCE))
    rows.append(_row("loss", "d", float(j_dloss), d_loss, LOSS_TOLERANCE))
    missing = sorted(k for k in j_terms if k not in terms and not k.startswith(("kept_", "gate_")))
    rows += [
      dict(_row("loss", k, float(j_terms[k]), 0.0, 0.0), ok=False, note="no PyTorch mirror")
      for k in missing
    ]
    band = _grad_band(trainer, c, s, t_idx, mask, g_grads, d_grads)
    r0 = 0.0
    for grads_j, grads_t, what in ((j_gg, g_grads, "G total"), (j_dg, d_grads, "D loss")):
      ref = {k: v.double().numpy() for k, v in grads_t.items()}
      ours = _flat(grads_j)
      r0 = max([r0, *_adam_disagreement(ours, ref).values()])
      for grp, e in group_errors(ours, ref).items():
        tol = max(GRAD_TOLERANCE, BAND_FACTOR * band.get(grp, 0.0))
        rows.append(
          {
            "kind": "grad",
            "name": f"d({what})/d {grp}",
            "rel": e["rel"],
            "norm": e["norm"],
            "band": band.get(grp),
            "tol": tol,
            "ok": bool(e["rel"] <= tol),
          }
        )
    param_tol = min(1.0, max(PARAM_FLOOR, PARAM_FACTOR * r0 * len(batches)))

    # 2. K train steps on the same batches.
    state = train.TrainState(
      step=jnp.zeros((), jnp.int32),
      g=train.NetState.create(apply_fn=None, params=g_params, tx=trainer_tx(cfg, g=True)),
      d=train.NetState.create(apply_fn=None, params=d_params, tx=trainer_tx(cfg, g=False)),
      rng=rng,
      nonfinite_streak=jnp.zeros((), jnp.int32),
      nonfinite_total=jnp.zeros((), jnp.int32),
    )
    start = {**_flat(g_params), **_flat(d_params)}
    steps = []
    for t, batch in enumerate(batches):
      t_idx, c, s, j_c, j_s = inputs(batch, t)
      info, adopted = gate(state.g.params, c, s, j_c, j_s)
      mask = None if adopted is None else torch.from_numpy(adopted)
      tm = trainer.train_step(c, s, t_idx, mask)
      state, jm = jax_step(state, vgg_params, batch)
      jm = {k: float(v) for k, v in jax.device_get(jm).items()}
      keys = ["loss/total", "loss/content", "loss/style", "loss/remd", "loss/adv_g", "loss/rec"]
      if jm["d_updated"]:
        keys.append("loss/d")
      rel = {k: abs(jm[k] - tm[k]) / max(abs(tm[k]), 1e-30) for k in keys}
      steps.append(
        {
          "step": t,
          "jax": {k: jm[k] for k in keys},
          "torch": {k: tm[k] for k in keys},
          "rel": rel,
          "gate": info,
          "skipped": [int(jm["nonfinite/total"]), tm["skipped"]],
        }
      )
    end_t = {
      **{k: v.detach().double().numpy() for k, v in trainer.gen.state_dict().items()},
      **{k: v.detach().double().numpy() for k, v in trainer.disc.state_dict().items()},
    }
    end_j = {**_flat(state.g.params), **_flat(state.d.params)}
  divergence = group_errors(end_j, end_t, start)
  worst_step = max((max(s["rel"].values()) for s in steps), default=0.0)
  checks = [r["ok"] for r in rows] + [worst_step <= param_tol]
  checks += [e["rel"] <= param_tol for e in divergence.values()]
  # Gate flips during the K steps are reported, not held to the band: once the parameters
  # have moved apart, decisions near the threshold may differ for that reason.
  checks += [gate_info["ok"]] if gate_info else []
  return {
    "jax": f"{jax.__version__} ({jax.default_backend()})",
    "torch": torch.__version__,
    "batch": b,
    "crop": crop,
    "steps": len(batches),
    "rows": rows,
    "gate": gate_info,
    "train_steps": steps,
    "worst_step_loss_rel": worst_step,
    "divergence": divergence,
    "tolerances": {
      "loss": LOSS_TOLERANCE,
      "grad": GRAD_TOLERANCE,
      "step_loss": param_tol,
      "params": param_tol,
      "gate_band": GATE_BAND,
      "adam_first_step_r0": r0,
    },
    "ok": all(checks),
    "seconds": time.perf_counter() - t0,
  }


def _grad_band(trainer, c, s, t_idx, mask, g_grads, d_grads) -> dict:
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


def _adam_disagreement(ours: dict, ref: dict) -> dict:
  """Per group: relative difference of Adam's first update g / (|g| + eps) from two gradients."""
  eps = 1e-8
  step = lambda g: {k: v / (np.abs(v) + eps) for k, v in g.items()}
  return {g: e["rel"] for g, e in group_errors(step(ours), step(ref)).items()}


def trainer_tx(cfg, g: bool):
  """The optax transformation sk_jax.train.make_setup builds for G (g=True) or D."""
  if g:
    return train.make_optimizer(cfg.opt, cfg.opt.lr, float(cfg.opt.get("gate_lr_scale", 1.0)))
  return train.make_optimizer(cfg.opt, cfg.opt.d_lr if cfg.opt.d_lr is not None else cfg.opt.lr)
