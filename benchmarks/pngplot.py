"""Moved to sk_jax.interop.pngplot (sk-jax parity --train draws with it); kept for the benchmarks."""

from sk_jax.interop.pngplot import *  # noqa: F403
