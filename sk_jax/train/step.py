"""Training (Sec. 3.3): the optimisers, the generator loss (Eq. 7) and the GAN train step on a
device mesh; `make_setup` builds and jits them for a config. The loop is sk_jax.train.loop.

One iteration (`train_step`, jitted once):
  1. VGG features of I_c and I_s (frozen encoder, passed as a separate argument);
  2. the generator on the stacked batch [(I_c, I_s), (I_c, I_c), (I_s, I_s)] -> I_cs, I_cc, I_ss;
  3. Eq. 7 and its gradient; the generator is updated;
  4. on every `train.d_every`-th iteration (step % d_every == d_every - 1) the
     discriminator is updated as well, inside the same step with `lax.cond`, on
     real style images vs this iteration's I_cs: one D update after every two G updates.
An update whose loss or gradient is not finite is skipped (parameters and Adam
moments untouched) and counted; the host stops the run after `opt.max_nonfinite`
in a row, without saving, so the last checkpoint is the last good state.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from sk_jax.config import validate_config
from sk_jax.nn import losses, vgg
from sk_jax.nn.discriminator import (
  DiscriminatorConfig,
  MultiScaleDiscriminator,
  init_discriminator,
)
from sk_jax.nn.generator import ModelConfig, generate, init_params, stylize_images
from sk_jax.train import sharding

NetState = train_state.TrainState  # params + optimiser state of one network


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; the frozen VGG-16 is not in it."""

  step: jax.Array  # iterations done
  g: NetState  # generator (g.step: its applied updates)
  d: NetState  # discriminator (d.step: its applied updates)
  rng: jax.Array  # typed key; iteration keys are fold_in(rng, step)
  nonfinite_streak: jax.Array  # skipped iterations in a row
  nonfinite_total: jax.Array  # skipped iterations since the start


def make_optimizer(opt_cfg, lr: float, gate_lr_scale: float = 1.0) -> optax.GradientTransformation:
  """Adam, with an optional global-norm clip (identity otherwise: the state tree stays the same).

  gate_lr_scale != 1 appends `scale_gate_updates`: E_f's updates are scaled after Adam,
  because Adam is invariant to the scale of the gradient.
  """
  clip = optax.clip_by_global_norm(opt_cfg.grad_clip) if opt_cfg.grad_clip > 0 else optax.identity()
  parts = [clip, optax.adam(lr, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps)]
  if gate_lr_scale != 1.0:
    parts.append(scale_gate_updates(gate_lr_scale))
  return optax.chain(*parts)


def scale_gate_updates(scale: float) -> optax.GradientTransformation:
  """Multiplies the updates of E_f (parameters under a "gate" module) by `scale`; no state."""
  return optax.transforms.partition(
    {"gate": optax.scale(scale), "rest": optax.identity()},
    lambda params: flax.traverse_util.path_aware_map(
      lambda path, _: "gate" if "gate" in path else "rest", params
    ),
  )


def control_gate_offset(params, kept, target: float, rate: float):
  """The CGM's controller: beta_offset += rate sign(kept - target), in units of 1/Ns.

  A gate that keeps too much raises its threshold, one that keeps too little lowers it;
  no gradient is involved (the offset enters the forward pass under stop_gradient, so
  Adam's update of it is exactly 0), as the auxiliary-loss-free load balancing of
  DeepSeek-V3 (arXiv 2408.15664) moves its expert biases.
  """
  alignment = dict(params["alignment"])
  alignment["beta_offset"] = alignment["beta_offset"] + rate * jnp.sign(kept - target)
  return {**params, "alignment": alignment}


def _apply_if_finite(net: NetState, grads, loss):
  """One optimiser update, or none at all when the loss or a gradient is not finite."""
  norm = optax.tree.norm(grads)
  ok = jnp.isfinite(loss) & jnp.isfinite(norm)
  updated = net.apply_gradients(grads=grads)
  return jax.tree.map(lambda new, old: jnp.where(ok, new, old), updated, net), ok, norm


def _split(tree, n: int):
  """Splits every leaf's batch axis into n equal parts -> n trees."""
  parts = jax.tree.map(lambda x: jnp.split(x, n), tree)
  return [
    jax.tree.map(lambda p, i=i: p[i], parts, is_leaf=lambda x: isinstance(x, list))
    for i in range(n)
  ]


def _to_unit(x):
  return x.astype(jnp.float32) / 255.0


@dataclasses.dataclass(frozen=True)
class Setup:
  """The pieces of a training run that depend only on the config and the mesh."""

  model: ModelConfig
  disc: DiscriminatorConfig
  mesh: jax.sharding.Mesh
  create_state: Callable  # rng -> TrainState (pure; jit with out_shardings)
  abstract: Any  # jax.eval_shape(create_state): ShapeDtypeStructs
  shardings: Any  # NamedSharding per leaf of the state
  step_fn: Callable  # jitted (state, vgg_params, batch) -> (state, metrics); donates state
  sample_fn: Callable  # jitted (g_params, vgg_params, batch) -> (content, style, stylized)

  def init(self, seed: int) -> TrainState:
    """A fresh state, created directly with its shardings (nothing materialised on one host)."""
    return jax.jit(self.create_state, out_shardings=self.shardings)(jax.random.key(seed))

  def abstract_with_shardings(self):
    return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), self.abstract, self.shardings
    )


def make_generator_loss(cfg, model: ModelConfig, disc: DiscriminatorConfig):
  """Eq. 7 as a function of the generator's parameters.

  Returns g_loss(g_params, d_params, vgg_params, content, style, key) -> (total, (terms, I_cs))
  for content and style (B, H, W, 3) in [0, 1]; every term is a batch mean.
  """
  dnet = MultiScaleDiscriminator(disc, model.compute_dtype)
  dtype, lc, taps = model.compute_dtype, cfg.loss, vgg.TAPS

  def g_loss(g_params, d_params, vgg_params, content, style, key):
    b = content.shape[0]
    real = jax.lax.stop_gradient(
      vgg.vgg16_features(vgg_params, jnp.concatenate([content, style]), taps, dtype)
    )
    feats_c, feats_s = _split(real, 2)
    z_c, z_s = feats_c["relu4_1"], feats_s["relu4_1"]
    # One generator call for I_cs = G(c, s), I_cc = G(c, c), I_ss = G(s, s).
    out, aux = generate(
      g_params,
      model,
      jnp.concatenate([z_c, z_c, z_s]),
      jnp.concatenate([z_s, z_c, z_s]),
      fuse_upsampling=False,
    )
    i_cs, i_cc, i_ss = jnp.split(out, 3)
    f_cs, f_cc, f_ss = _split(vgg.vgg16_features(vgg_params, out, taps, dtype), 3)
    terms = {
      "content": jnp.mean(losses.content_loss(f_cs, feats_c)),
      "style": jnp.mean(losses.style_loss(f_cs, feats_s, form=lc.style_form)),
      "remd": losses.remd_loss(f_cs, feats_s, key, lc.remd_max_positions),
      "adv_g": losses.generator_adv_loss(dnet.apply({"params": d_params}, i_cs), lc.gan),
    }
    terms["rec"], rec = losses.reconstruction_loss(
      i_cc, content, i_ss, style, f_cc, feats_c, f_ss, feats_s, lc.rec_pixel, lc.rec_feature
    )
    terms["rec_pixel"], terms["rec_feature"] = rec["pixel"], rec["feature"]
    total = (
      lc.adv * terms["adv_g"]
      + lc.rec * terms["rec"]
      + lc.content * terms["content"]
      + lc.style * terms["style"]
      + lc.remd * terms["remd"]
    )
    if model.gate_budgeted:
      # The restoring force as a loss term (docs/method.md, "The gate's equilibrium"), on a
      # kept fraction whose gradient does not vanish when the gate is fully open.
      terms["gate_budget"] = jnp.mean((aux["kept_st"][:b] - model.gate_target) ** 2)
      total = total + lc.gate_budget * terms["gate_budget"]
    # Of I_cs only.
    terms["kept_fraction"] = jnp.mean(aux["kept_fraction"][:b])
    for k in ("kept_std", "gate_lambda", "gate_beta_ns", "gate_threshold_ns"):
      terms[k] = jnp.mean(aux[k][:b])
    return total, (terms, i_cs)

  return g_loss


def make_train_step(cfg, model: ModelConfig, disc: DiscriminatorConfig):
  """The pure train step: (state, vgg_params, {"content", "style": (B, H, W, 3) uint8}) -> (state, metrics)."""
  g_loss_fn = make_generator_loss(cfg, model, disc)
  dnet = MultiScaleDiscriminator(disc, model.compute_dtype)
  gan, d_every = cfg.loss.gan, int(cfg.train.d_every)
  gate_rate = float(cfg.opt.gate_offset_rate)

  def train_step(state: TrainState, vgg_params, batch):
    key = jax.random.fold_in(state.rng, state.step)
    content, style = _to_unit(batch["content"]), _to_unit(batch["style"])
    (g_loss, (terms, i_cs)), g_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(
      state.g.params, state.d.params, vgg_params, content, style, key
    )
    g_new, g_ok, g_norm = _apply_if_finite(state.g, g_grads, g_loss)
    if model.gate_controlled:
      controlled = control_gate_offset(
        g_new.params, terms["kept_fraction"], model.gate_target, gate_rate
      )
      g_new = g_new.replace(
        params=jax.tree.map(lambda c, p: jnp.where(g_ok, c, p), controlled, g_new.params)
      )
    fake = jax.lax.stop_gradient(i_cs)

    def d_update(d: NetState):
      def d_loss_fn(p):
        return losses.discriminator_loss(
          dnet.apply({"params": p}, style), dnet.apply({"params": p}, fake), gan
        )

      d_loss, d_grads = jax.value_and_grad(d_loss_fn)(d.params)
      d_new, ok, norm = _apply_if_finite(d, d_grads, d_loss)
      return d_new, d_loss, ok, norm

    def d_keep(d: NetState):
      return d, jnp.float32(0.0), jnp.bool_(True), jnp.float32(0.0)

    do_d = (state.step % d_every) == (d_every - 1)
    d_new, d_loss, d_ok, d_norm = jax.lax.cond(do_d, d_update, d_keep, state.d)

    bad = ~(g_ok & d_ok)
    new_state = state.replace(
      step=state.step + 1,
      g=g_new,
      d=d_new,
      nonfinite_streak=jnp.where(bad, state.nonfinite_streak + 1, 0),
      nonfinite_total=state.nonfinite_total + bad.astype(jnp.int32),
    )
    metrics = {f"loss/{k}": v for k, v in terms.items() if not k.startswith(("kept_", "gate_"))}
    metrics.update(
      {f"gate/{k[5:]}": v for k, v in terms.items() if k.startswith("gate_") and k != "gate_budget"}
    )
    if "gate_budget" in terms:
      metrics["loss/gate_budget"] = terms["gate_budget"]
    if model.gate_controlled:
      metrics["gate/beta_offset"] = g_new.params["alignment"]["beta_offset"]
    if "gate" in g_grads.get(
      "alignment", {}
    ):  # what the straight-through path sends to E_f's output
      gate_bias = g_grads["alignment"]["gate"]["conv2"]["bias"]
      metrics.update({"gate/grad_lambda": gate_bias[0], "gate/grad_beta": gate_bias[1]})
    metrics.update(
      {
        "loss/total": g_loss,
        "loss/d": d_loss,
        "d_updated": do_d.astype(jnp.int32),
        "grad_norm/g": g_norm,
        "grad_norm/d": d_norm,
        "gate/kept_fraction": terms["kept_fraction"],
        "gate/kept_std": terms["kept_std"],
        "nonfinite/streak": new_state.nonfinite_streak,
        "nonfinite/total": new_state.nonfinite_total,
      }
    )
    return new_state, metrics

  return train_step


def make_sample_fn(model: ModelConfig, n: int):
  """(g_params, vgg_params, batch) -> the first n content, style and stylized images in [0, 1]."""

  def sample(g_params, vgg_params, batch):
    content, style = _to_unit(batch["content"][:n]), _to_unit(batch["style"][:n])
    stylized, _ = stylize_images(g_params, vgg_params, model, content, style)
    return content, style, stylized

  return sample


def make_setup(cfg, mesh: jax.sharding.Mesh, models=None) -> Setup:
  """Builds and jits everything for `cfg` on `mesh` (compilation happens at the first call).

  models: (ModelConfig, DiscriminatorConfig) from `validate_config(cfg)`, if already checked.
  """
  model, disc = models or validate_config(cfg)
  sharding.check_batch(int(cfg.data.batch_size), mesh)
  tx_g = make_optimizer(cfg.opt, cfg.opt.lr, gate_lr_scale=float(cfg.opt.gate_lr_scale))
  tx_d = make_optimizer(cfg.opt, cfg.opt.d_lr if cfg.opt.d_lr is not None else cfg.opt.lr)

  def create_state(rng) -> TrainState:
    k_init, k_step = jax.random.split(rng)
    # Parameters are drawn with the "rbg" generator: XLA compiles it in seconds where
    # threefry over ~20M values takes tens of seconds on CPU. The iteration keys stay threefry.
    k_g, k_d = jax.random.split(
      jax.random.wrap_key_data(jax.random.bits(k_init, (4,), jnp.uint32), impl="rbg")
    )
    # TrainState.create starts `step` as a weakly typed 0; a restored checkpoint's is a plain
    # int32, and the two would be two train-step programs (a second compile on every resume).
    net = lambda params, tx: NetState.create(apply_fn=None, params=params, tx=tx).replace(
      step=jnp.zeros((), jnp.int32)
    )
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      g=net(init_params(model, k_g), tx_g),
      d=net(init_discriminator(disc, k_d), tx_d),
      rng=k_step,
      nonfinite_streak=jnp.zeros((), jnp.int32),
      nonfinite_total=jnp.zeros((), jnp.int32),
    )

  abstract = jax.eval_shape(create_state, jax.random.key(0))
  shardings = sharding.state_shardings(mesh, abstract)
  repl, data_sh = sharding.replicated(mesh), sharding.batch_sharding(mesh)
  step_fn = jax.jit(
    make_train_step(cfg, model, disc),
    in_shardings=(shardings, repl, data_sh),
    out_shardings=(shardings, repl),
    donate_argnums=(0,),
  )
  n = min(4, int(cfg.data.batch_size))
  sample_fn = jax.jit(
    make_sample_fn(model, n), in_shardings=(shardings.g.params, repl, data_sh), out_shardings=repl
  )
  return Setup(model, disc, mesh, create_state, abstract, shardings, step_fn, sample_fn)
