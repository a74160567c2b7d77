"""FLOPs of one stylization, counted from the layer shapes (a multiply-add is 2 FLOPs).

XLA's cost analysis sees the whole program on the CPU but not cuDNN's convolutions on a
GPU, so a "fraction of peak" built on it means different things on different machines.
This count is the same everywhere; tests/test_flops.py holds it to XLA's on the CPU.
"""

from __future__ import annotations

from sk_jax.models import decoder, vgg
from sk_jax.models.generator import FEATURE_CHANNELS, STRIDE, ModelConfig


def _conv(h: int, w: int, cin: int, cout: int, k: int = 3) -> float:
  return 2.0 * h * w * k * k * cin * cout


def encoder_flops(h: int, w: int) -> float:
  """VGG-16 convolutions up to relu4_1 on an (h, w) image."""
  total, cin, scale = 0.0, 3, 1
  for name in vgg.LAYERS:
    if name == "M":
      scale *= 2
      continue
    cout = vgg.CHANNELS[name.split("_")[0]]
    total += _conv(h // scale, w // scale, cin, cout)
    cin = cout
    if name == "conv4_1":
      break
  return total


def decoder_flops(h: int, w: int) -> float:
  """The decoder from (h / 8, w / 8, 512) features to an (h, w) image."""
  total, cin, scale = 0.0, FEATURE_CHANNELS, STRIDE
  for _, cout, up in decoder.LAYERS:
    total += _conv(h // scale, w // scale, cin, cout)
    cin = cout
    if up:
      scale //= 2
  return total


def stylize_flops(config: ModelConfig, content_hw, style_hw) -> dict[str, float]:
  """FLOPs per stage of `Stylizer.__call__` for one content and one style image (multiples of 8)."""
  (hc, wc), (hs, ws) = content_hw, style_hw
  fh, fw = hc // STRIDE, wc // STRIDE
  nc, ns, c, k = fh * fw, (hs // STRIDE) * (ws // STRIDE), FEATURE_CHANNELS, config.kernel_size
  gate = (
    (_conv(fh, fw, c, config.gate_hidden) + _conv(fh, fw, config.gate_hidden, 2))
    if config.gate
    else 0.0
  )
  return {
    "encoder": encoder_flops(hc, wc) + encoder_flops(hs, ws),
    # Cosine logits and the aggregation (2 Nc Ns C each), the gate network and its threshold.
    "attention": 2 * (2.0 * nc * ns * c) + gate + (4.0 * nc * ns if config.gate else 0.0),
    "kernel_head": _conv(fh, fw, c, config.kernel_hidden)
    + _conv(fh, fw, config.kernel_hidden, c * (2 * k + 1), k=1),
    "eq6": 2 * (2.0 * nc * c * k),
    "decoder": decoder_flops(hc, wc),
  }
