"""`python -m sk_jax.cli ...` is `sk-jax ...`."""

from sk_jax.cli import run

run()
