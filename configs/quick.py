"""python train.py --config configs/quick.py --workdir /tmp/sk-quick   (about two minutes on 2 CPU cores)

A smoke run of the whole recipe on the embedded scikit-image photos and textures:
100 steps at batch 2 on 64 x 64 crops, with checkpoints, metrics, sample grids and the
exported generator. It shows the pipeline works, not a usable stylizer (that takes
the 160k steps of configs/default.py on COCO and WikiArt, on an accelerator).
"""

from configs import default


def get_config():
  c = default.get_config()
  c.data.content = "embedded:photos"
  c.data.style = "embedded:styles"
  c.data.resize = 96
  c.data.crop = 64
  c.data.batch_size = 2
  c.data.num_workers = 0  # 2 cores: reader threads are enough
  c.data.num_threads = 2
  c.disc.features = 16  # a narrower PatchGAN: the full one dominates a CPU step
  c.train.steps = 100
  c.ckpt.every = 25
  c.ckpt.keep = 2
  c.log.every = 5
  c.log.image_every = 25
  c.eval.every = 25  # eval/... on the held-out pairs (TensorBoard, metrics.jsonl)
  return c
