"""Trains StyleKernel: python train.py --config configs/default.py --workdir DIR [--config.opt.lr=2e-4]

The same as `sk-jax train ...`: running it again in the same workdir resumes from the latest
complete checkpoint; `--export OUT` writes that checkpoint's generator instead of training.
`--help` lists the flags; sk_jax/cli/training.py parses them, sk_jax/train/loop.py trains.
"""

import sys

from sk_jax import cli

if __name__ == "__main__":
  sys.exit(cli.main(["train", *sys.argv[1:]], prog="train.py"))
