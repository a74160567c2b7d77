"""The peak table behind MFU: known devices by their JAX device_kind, "unknown" elsewhere."""

import types

import pytest

from sk_jax.train import hardware

T = 1e12


def _device(platform, kind):
  return types.SimpleNamespace(platform=platform, device_kind=kind)


@pytest.mark.parametrize(
  "kind, dtype, precision, peak",
  [
    ("NVIDIA H200", "bfloat16", None, 989.5 * T),
    ("NVIDIA H200", "float32", None, 494.5 * T),  # JAX's default on GPUs: TF32
    ("NVIDIA H200", "float32", "highest", 67 * T),
    ("NVIDIA H100 80GB HBM3", "bfloat16", None, 989.5 * T),
    ("NVIDIA H100 PCIe", "bfloat16", None, 756.5 * T),
    ("NVIDIA A100-SXM4-80GB", "float32", "highest", 19.5 * T),
    ("NVIDIA A100 80GB PCIe", "bfloat16", None, 312 * T),
    ("TPU v4", "bfloat16", None, 275 * T),
    ("TPU v5 lite", "bfloat16", None, 197 * T),
    ("TPU v5p", "bfloat16", None, 459 * T),
    ("TPU v6 lite", "float32", None, 918 * T),  # one bf16 pass at the default precision
    ("TPU v5 lite", "float32", "highest", None),  # no published float32 peak
    ("TPU v4 lite", "bfloat16", None, None),  # v4i is not v4
    ("Tesla V100-SXM2-16GB", "float32", None, None),
  ],
)
def test_peak_table(kind, dtype, precision, peak):
  platform = "tpu" if kind.startswith("TPU") else "gpu"
  assert hardware.peak_flops(_device(platform, kind), dtype, precision)[0] == peak


def test_cpu_is_unknown():
  import jax

  peak, label = hardware.peak_flops(jax.devices()[0])
  assert peak is None and label.endswith("fp32")
