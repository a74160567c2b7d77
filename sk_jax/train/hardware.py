"""Peak dense FLOP/s per device of the accelerators MFU is reported against; None: unknown.

MFU = model FLOP/s (the analytic count of sk_jax.train.flops, not XLA's) / the peak of the device
for the step's arithmetic. Figures are the vendors' dense peaks (the NVIDIA data sheets list
"with sparsity", twice the dense figure; those are halved here). A device that is not in the
table (the CPU, older GPUs) has no MFU ("unknown"), never a guessed one.

Sources:
  NVIDIA H100 Tensor Core GPU data sheet (nvidia.com/en-us/data-center/h100): SXM FP32 67,
    TF32 989*, BF16 1,979* TFLOPS; PCIe 51, 756*, 1,513*; NVL 60, 835*, 1,671* (* sparsity).
  NVIDIA H200 Tensor Core GPU data sheet (nvidia.com/en-us/data-center/h200): SXM FP32 67,
    TF32 989*, BF16 1,979*; NVL 60, 835*, 1,671*.
  NVIDIA A100 Tensor Core GPU data sheet (nvidia.com/en-us/data-center/a100): FP32 19.5,
    TF32 156 (312*), BF16 312 (624*), SXM and PCIe alike.
  Google Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, v5e, v5p, v6e):
    peak BF16 per chip 275 (v4), 197 (v5e), 459 (v5p), 918 (v6e) TFLOPS. Google publishes no
    float32 peak: float32 matmuls at "highest" precision are several bf16 passes (unknown here),
    at the default precision one bf16 pass (the bf16 peak).
One JAX device is one GPU or one TPU chip (v4 and v5p megacore chips included).
"""

from __future__ import annotations

T = 1e12

# device-kind key -> {arithmetic: dense peak FLOP/s}
PEAKS = {
  "h200 nvl": {"bf16": 835.5 * T, "tf32": 417.5 * T, "fp32": 60 * T},
  "h200": {"bf16": 989.5 * T, "tf32": 494.5 * T, "fp32": 67 * T},
  "h100 nvl": {"bf16": 835.5 * T, "tf32": 417.5 * T, "fp32": 60 * T},
  "h100 pcie": {"bf16": 756.5 * T, "tf32": 378 * T, "fp32": 51 * T},
  "h100": {"bf16": 989.5 * T, "tf32": 494.5 * T, "fp32": 67 * T},
  "a100": {"bf16": 312 * T, "tf32": 156 * T, "fp32": 19.5 * T},
  "tpu v4": {"bf16": 275 * T},
  "tpu v5 lite": {"bf16": 197 * T},
  "tpu v5e": {"bf16": 197 * T},
  "tpu v5p": {"bf16": 459 * T},
  "tpu v5": {"bf16": 459 * T},
  "tpu v6 lite": {"bf16": 918 * T},
  "tpu v6e": {"bf16": 918 * T},
}


def _key(device_kind: str) -> str | None:
  kind = set(device_kind.lower().replace("-", " ").split())
  # Most specific first: "h100 pcie" before "h100"; a "lite" chip is never its full sibling.
  for key in sorted(PEAKS, key=len, reverse=True):
    words = set(key.split())
    if words <= kind and ("lite" in words) == ("lite" in kind):
      return key
  return None


def arithmetic(platform: str, compute_dtype: str, matmul_precision: str | None) -> str:
  """Which peak applies: "bf16", "tf32" or "fp32" for the step's dtype on this platform."""
  if compute_dtype == "bfloat16":
    return "bf16"
  exact = matmul_precision in ("highest", "float32", "F32_F32_F32")
  if platform == "gpu":  # JAX's default on NVIDIA GPUs: TF32 tensor cores for float32
    return "fp32" if exact else "tf32"
  if platform == "tpu":  # the default: one bf16 pass
    return "fp32" if exact else "bf16"
  return "fp32"


def peak_flops(device, compute_dtype: str = "float32", matmul_precision: str | None = None):
  """(peak FLOP/s or None, a label such as "NVIDIA H200 bf16") for one JAX device."""
  which = arithmetic(device.platform, compute_dtype, matmul_precision)
  key = _key(device.device_kind) if device.platform in ("gpu", "tpu") else None
  peak = PEAKS.get(key, {}).get(which) if key else None
  return peak, f"{device.device_kind} {which}"
