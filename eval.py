"""Evaluation: the paper's Tables 1-3, temporal LPIPS and a peer method, in one command.

  python eval.py --checkpoint DIR --content_dir A --style_dir B --output_dir OUT

writes OUT/metrics.json, OUT/metrics.md and OUT/grid_<method>.png; `--help` lists the
options and docs/metrics.md defines every number. The library is sk_jax/evaluate.py.
"""

import sys

from sk_jax import evaluate

if __name__ == "__main__":
  sys.exit(evaluate.main())
