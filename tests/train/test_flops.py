"""The analytic FLOP count (sk_jax.train.flops) against XLA's cost analysis of the compiled stylizer (CPU)."""

import jax
import jax.numpy as jnp
import pytest

import sk_jax
from sk_jax.inference.stylizer import Stylizer
from sk_jax.train import flops


@pytest.mark.parametrize(
  "config",
  [
    sk_jax.ModelConfig(gate_hidden=8, kernel_hidden=16),
    sk_jax.ModelConfig(attention="full", kernel_size=5),
  ],
  ids=["cgm", "full-k5"],
)
def test_analytic_flops_match_xla_on_cpu(config, vgg_params):
  st = Stylizer(sk_jax.init_params(config, jax.random.key(0)), config, vgg_params)
  content_hw, style_hw = (64, 48), (40, 56)
  compiled = st.lower(jnp.zeros((1, *content_hw, 3)), jnp.zeros((1, *style_hw, 3))).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  stages = flops.stylize_flops(config, content_hw, style_hw)
  # XLA also counts elementwise work (ReLU, bias, softmax, padding) that the count leaves out,
  # and the count includes zero-cost bookkeeping XLA folds away: a few percent either way.
  assert sum(stages.values()) == pytest.approx(cost["flops"], rel=0.08)
  assert stages["encoder"] > stages["decoder"] > stages["attention"] > 0
