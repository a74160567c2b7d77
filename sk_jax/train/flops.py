"""FLOPs of one stylization, counted from the layer shapes (a multiply-add is 2 FLOPs).

XLA's cost analysis sees the whole program on the CPU but not cuDNN's convolutions on a
GPU, so a "fraction of peak" built on it means different things on different machines.
This count is the same everywhere; tests/train/test_flops.py holds it to XLA's on the CPU.
"""

from __future__ import annotations

from sk_jax.nn import decoder, vgg
from sk_jax.nn.generator import FEATURE_CHANNELS, STRIDE, ModelConfig


def _conv(h: int, w: int, cin: int, cout: int, k: int = 3) -> float:
  return 2.0 * h * w * k * k * cin * cout


def encoder_flops(h: int, w: int) -> float:
  """VGG-16 convolutions up to relu4_1 on an (h, w) image."""
  return vgg_flops(h, w, last="conv4_1")


def decoder_flops(h: int, w: int, fused: bool = True) -> float:
  """The decoder from (h / 8, w / 8, 512) features to an (h, w) image; fused: a layer after an
  upsampling as four 2 x 2 phase convolutions at (h' + 1) x (w' + 1) low-resolution positions
  (Decoder.fuse_upsampling; the border strips it recomputes are left out)."""
  total, cin, scale, after_up = 0.0, FEATURE_CHANNELS, STRIDE, False
  for _, cout, up in decoder.LAYERS:
    if after_up and fused:
      hl, wl = h // (2 * scale), w // (2 * scale)
      total += _conv(hl + 1, wl + 1, cin, 4 * cout, k=2)
    else:
      total += _conv(h // scale, w // scale, cin, cout)
    cin, after_up = cout, up
    if up:
      scale //= 2
  return total


def stylize_flops(
  config: ModelConfig, content_hw, style_hw, fused: bool = True
) -> dict[str, float]:
  """FLOPs per stage of `Stylizer.__call__` for one content and one style image (multiples of
  8); fused=False: the decoder as training runs it (decoder_flops)."""
  (hc, wc), (hs, ws) = content_hw, style_hw
  fh, fw = hc // STRIDE, wc // STRIDE
  nc, ns, c, k = fh * fw, (hs // STRIDE) * (ws // STRIDE), FEATURE_CHANNELS, config.kernel_size
  gate = (
    (_conv(fh, fw, c, config.gate_hidden) + _conv(fh, fw, config.gate_hidden, 2))
    if config.attention == "cgm"
    else 0.0
  )
  return {
    "encoder": encoder_flops(hc, wc) + encoder_flops(hs, ws),
    # Cosine logits and the aggregation (2 Nc Ns C each), the gate network and its threshold.
    "attention": 2 * (2.0 * nc * ns * c)
    + gate
    + (4.0 * nc * ns if config.attention == "cgm" else 0.0),
    "kernel_head": _conv(fh, fw, c, config.kernel_hidden)
    + _conv(fh, fw, config.kernel_hidden, c * (2 * k + 1), k=1),
    "eq6": 2 * (2.0 * nc * c * k),
    "decoder": decoder_flops(hc, wc, fused),
  }


# ----------------------------------------------------------------------------- the training step


def vgg_flops(h: int, w: int, last: str = "conv5_1") -> float:
  """VGG-16 convolutions up to and including `last` (the train step taps relu1_1 ... relu5_1)."""
  total, cin, scale = 0.0, 3, 1
  for name in vgg.LAYERS:
    if name == "M":
      scale *= 2
      continue
    cout = vgg.CHANNELS[name.split("_")[0]]
    total += _conv(h // scale, w // scale, cin, cout)
    cin = cout
    if name == last:
      break
  return total


def discriminator_flops(disc, h: int, w: int) -> float:
  """The multi-scale PatchGAN (sk_jax.nn.discriminator) on one (h, w) image."""
  total = 0.0
  for _ in range(disc.num_scales):
    y, x, cin, nf = h, w, 3, disc.features
    # conv0 (stride 2), num_layers more (the last at stride 1), the 1-channel head; 4 x 4, pad 2.
    layers = [(nf, 2)]
    for i in range(1, disc.num_layers + 1):
      nf = min(nf * 2, 512)
      layers.append((nf, 2 if i < disc.num_layers else 1))
    layers.append((1, 1))
    for cout, stride in layers:
      y, x = (y + 4 - 4) // stride + 1, (x + 4 - 4) // stride + 1
      total += _conv(y, x, cin, cout, k=4)
      cin = cout
    h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1  # the 3 x 3, stride-2 average pool
  return total


def train_step_flops(cfg, model: ModelConfig, disc) -> dict[str, float]:
  """FLOPs of one `sk_jax.train` step on the global batch, per part (average over D steps).

  A backward pass costs one forward per gradient it produces: the frozen VGG-16 and D inside
  Eq. 7 pass gradients to their inputs only (x 2 in all), the generator and D's own update to
  their weights as well (x 3 and x 2: D's inputs need no gradient there).
  """
  b, s = int(cfg.data.batch_size), int(cfg.data.crop)
  stages = stylize_flops(model, (s, s), (s, s), fused=False)
  generator = sum(v for k, v in stages.items() if k != "encoder")
  vgg_one, d_one = vgg_flops(s, s), discriminator_flops(disc, s, s)
  cap = int(cfg.loss.remd_max_positions)
  remd = 0.0
  for scale, c in ((4, 256), (8, 512)):  # relu3_1 and relu4_1
    n = (s // scale) ** 2
    n = min(n, cap) if cap else n
    remd += 2.0 * n * n * c  # the cosine-distance matrix of I_cs against I_s
  return {
    "vgg_inputs": 2 * b * vgg_one,
    "generator": 3 * b * 3 * generator,
    "vgg_outputs": 3 * b * 2 * vgg_one,
    "discriminator_g": b * 2 * d_one,
    "discriminator_update": 2 * b * 2 * d_one / int(cfg.train.d_every),
    "remd": b * 2 * remd,
  }
