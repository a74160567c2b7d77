"""python train.py --config configs/cpu_demo.py --workdir /tmp/sk-cpu-demo   (about 30 minutes on 2 CPU cores)

The run behind the README's "briefly trained" figures: the paper's losses and optimiser
on 64 x 64 crops at batch 4 for 600 steps. Content: ../shared/data/content (7 photos)
when that development folder exists beside the checkout, else the embedded photos;
style: ../shared/data/style (15 paintings), else the embedded textures. It shows the
losses falling, not paper quality (that takes configs/default.py on an accelerator).
"""

import os

from configs import default

_here = os.path.dirname(os.path.abspath(__file__))
_shared = os.path.join(_here, "..", "..", "shared", "data")


def _folder_or(name: str, fallback: str) -> str:
  path = os.path.normpath(os.path.join(_shared, name))
  return path if os.path.isdir(path) else fallback


def get_config():
  c = default.get_config()
  c.data.content = _folder_or("content", "embedded:photos")
  c.data.style = _folder_or("style", "embedded:styles")
  c.data.resize = 128
  c.data.crop = 64
  c.data.batch_size = 4
  c.data.num_workers = 0
  c.data.num_threads = 2
  c.disc.features = 32
  c.train.steps = 600
  c.ckpt.every = 100
  c.ckpt.keep = 2
  c.log.every = 10
  c.log.image_every = 100
  return c
