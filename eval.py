"""Evaluation: the paper's Tables 1-3, temporal LPIPS and a peer method, in one command.

  python eval.py --checkpoint DIR --content-dir A --style-dir B --output-dir OUT

the same as `sk-jax eval ...`: writes OUT/metrics.json, OUT/metrics.md and
OUT/grid_<method>.png; `--help` lists the options and docs/metrics.md defines every
number. The library is sk_jax/eval/, the flags sk_jax/cli/evaluation.py.
"""

import sys

from sk_jax import cli

if __name__ == "__main__":
  sys.exit(cli.main(["eval", *sys.argv[1:]], prog="eval"))
