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
import optax

from sk_jax.errors import InputError
from sk_jax.interop import parity, port
from sk_jax.interop.tree_errors import adam_disagreement, flat, grad_band, group_errors
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
# error gets a full step of either sign. `adam_disagreement` measures that on the one-batch
# gradients (r0). Each later step adds at most about as much again, and the two trajectories
# feed their differences back (another I_cs, another D), so the bound is linear in K:
# min(1, PARAM_FACTOR * r0 * K), at least PARAM_FLOOR. 1 would mean unrelated updates.
PARAM_FLOOR = 1e-3
PARAM_FACTOR = 4.0
# Per-step losses follow the parameters and are held to the same bound. Teacher-forced
# (PyTorch restarted from JAX's state before each step), a step's losses are held to
# LOSS_TOLERANCE and its update to max(PARAM_FLOOR, PARAM_FACTOR * r0), whatever K.
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

  def gate(net, g, c, s, j_c, j_s):
    """The gate agreement of `net` (a Trainer) with JAX at params g, and the mask to adopt."""
    if not gated:
      return None, None
    with torch.no_grad():
      z_c, z_s = net.vgg(torch.cat([c, s]), ("relu4_1",))["relu4_1"].chunk(2)
      _, t_aux = net.gen(torch.cat([z_c, z_c, z_s]), torch.cat([z_s, z_c, z_s]))
    info, adopted = _gate(np.asarray(jax_mask(g, vgg_params, j_c, j_s)), t_aux)
    return info, None if adopted is None else torch.from_numpy(adopted)

  with jax.default_matmul_precision("highest"):
    # 1. One batch: loss terms and gradients.
    t_idx, c, s, j_c, j_s = inputs(batches[0], 0)
    gate_info, mask = gate(trainer, g_params, c, s, j_c, j_s)
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
    band = grad_band(trainer, c, s, t_idx, mask, g_grads, d_grads)
    r0 = 0.0
    for grads_j, grads_t, what in ((j_gg, g_grads, "G total"), (j_dg, d_grads, "D loss")):
      ref = {k: v.double().numpy() for k, v in grads_t.items()}
      ours = flat(grads_j)
      r0 = max([r0, *adam_disagreement(ours, ref).values()])
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
    start = {**flat(g_params), **flat(d_params)}
    # The teacher-forced twin: before each step it takes JAX's parameters and Adam state, so
    # each step is compared on its own, without the drift of the steps before it.
    forced = torch_train.Trainer(
      cfg,
      model,
      disc,
      *(dict(trainer.gen.state_dict()), dict(trainer.disc.state_dict())),
      port.vgg16_to_torch(vgg_params),
    )
    steps = []
    for t, batch in enumerate(batches):
      t_idx, c, s, j_c, j_s = inputs(batch, t)
      info, mask = gate(trainer, state.g.params, c, s, j_c, j_s)
      tm = trainer.train_step(c, s, t_idx, mask)
      sync_trainer(forced, state)
      before = {**flat(state.g.params), **flat(state.d.params)}
      forced_info, mask = gate(forced, state.g.params, c, s, j_c, j_s)
      fm = forced.train_step(c, s, t_idx, mask)
      state, jm = jax_step(state, vgg_params, batch)
      jm = {k: float(v) for k, v in jax.device_get(jm).items()}
      keys = ["loss/total", "loss/content", "loss/style", "loss/remd", "loss/adv_g", "loss/rec"]
      keys += ["loss/gate_budget"] if "loss/gate_budget" in jm else []
      if jm["d_updated"]:
        keys.append("loss/d")
      rel = lambda m: {k: abs(jm[k] - m[k]) / max(abs(m[k]), 1e-30) for k in keys}
      update = group_errors(
        {**flat(state.g.params), **flat(state.d.params)}, _state(forced), before
      )
      steps.append(
        {
          "step": t,
          "jax": {k: jm[k] for k in keys},
          "torch": {k: tm[k] for k in keys},
          "rel": rel(tm),
          "gate": info,
          "skipped": [int(jm["nonfinite/total"]), tm["skipped"]],
          "forced": {
            "torch": {k: fm[k] for k in keys},
            "rel": rel(fm),
            "gate": forced_info,
            # Groups that this step does not move (D between its updates) have no row.
            "update": {g: e for g, e in update.items() if e["norm"] > 0},
          },
        }
      )
    end_t, end_j = _state(trainer), {**flat(state.g.params), **flat(state.d.params)}
  divergence = group_errors(end_j, end_t, start)
  worst_step = max((max(s["rel"].values()) for s in steps), default=0.0)
  forced_loss = max((max(s["forced"]["rel"].values()) for s in steps), default=0.0)
  forced_update = max(
    (e["rel"] for s in steps for e in s["forced"]["update"].values()), default=0.0
  )
  step_tol = max(PARAM_FLOOR, PARAM_FACTOR * r0)
  checks = [r["ok"] for r in rows] + [worst_step <= param_tol]
  checks += [e["rel"] <= param_tol for e in divergence.values()]
  # Teacher-forced, every step starts from the same state in both frameworks: its losses are
  # held to the one-batch tolerance, its update to the first step's Adam bound (K-free), and
  # its gate decisions to the band.
  checks += [forced_loss <= LOSS_TOLERANCE, forced_update <= step_tol]
  checks += [s["forced"]["gate"]["ok"] for s in steps if s["forced"]["gate"]]
  # Gate flips during the free-running steps are reported, not held to the band: once the
  # parameters have moved apart, decisions near the threshold may differ for that reason.
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
    "forced_worst_loss_rel": forced_loss,
    "forced_worst_update_rel": forced_update,
    "divergence": divergence,
    "tolerances": {
      "loss": LOSS_TOLERANCE,
      "grad": GRAD_TOLERANCE,
      "step_loss": param_tol,
      "params": param_tol,
      "forced_loss": LOSS_TOLERANCE,
      "forced_update": step_tol,
      "gate_band": GATE_BAND,
      "adam_first_step_r0": r0,
    },
    "ok": all(checks),
    "seconds": time.perf_counter() - t0,
  }


def _state(trainer) -> dict:
  """A Trainer's G and D parameters: {torch name: float64 numpy}."""
  nets = (trainer.gen, trainer.disc)
  return {k: v.detach().double().numpy() for net in nets for k, v in net.state_dict().items()}


def sync_trainer(trainer, state) -> None:
  """Sets a torch_train.Trainer to a JAX TrainState: parameters, Adam's moments and count,
  and the step (which decides the D updates)."""
  trainer.gen.load_state_dict(port.generator_to_torch(state.g.params))
  trainer.disc.load_state_dict(port.discriminator_to_torch(state.d.params))
  for opt, net in ((trainer.g_opt, state.g), (trainer.d_opt, state.d)):
    get = lambda field: optax.tree_utils.tree_get(net.opt_state, field)
    opt.mu, opt.nu = (dict(port.generator_to_torch(get(f))) for f in ("mu", "nu"))
    opt.count = int(get("count"))
  trainer.step_count = int(state.step)


def trainer_tx(cfg, g: bool):
  """The optax transformation sk_jax.train.make_setup builds for G (g=True) or D."""
  if g:
    return train.make_optimizer(cfg.opt, cfg.opt.lr, float(cfg.opt.gate_lr_scale))
  return train.make_optimizer(cfg.opt, cfg.opt.d_lr if cfg.opt.d_lr is not None else cfg.opt.lr)
