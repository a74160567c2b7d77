"""Input pipelines: content and style images as two independent, seeded, infinite grain streams.

A source is one of
  DIR             a folder of images, searched recursively (COCO, WikiArt as downloaded)
  tfds:NAME       a TFDS dataset prepared in ArrayRecord format (read with tfds.data_source,
                  no TensorFlow); split and image key from the config
  skimage:photos / skimage:styles (alias embedded:photos / embedded:styles), or skimage:NAME,...
                  the photos / the textures and colourful images that ship with scikit-image
                  (sk_jax.io.images.PACKAGED)

Every image is resized so that its short side is `resize`, then randomly cropped to
`crop` x `crop` (per-element seeded, so a restored iterator replays exactly). Batches
are {"image": (B, crop, crop, 3) uint8, "skipped": (B,) int32}; "skipped" counts the
unreadable records passed over to produce each element.
"""

from __future__ import annotations

import dataclasses
import math
import os

import grain
import numpy as np
from absl import flags, logging
from PIL import Image, ImageOps

from sk_jax.errors import InputError, describe
from sk_jax.io import images


def _resize_uint8(rgb: np.ndarray, short_side: int) -> np.ndarray:
  """(H, W, 3) float in [0, 1] -> (H, W, 3) uint8 whose short side is `short_side` (bicubic)."""
  img = Image.fromarray(images.to_uint8(rgb))
  w, h = img.size
  scale = short_side / min(w, h)
  size = (max(short_side, round(w * scale)), max(short_side, round(h * scale)))
  if size != (w, h):
    img = img.resize(size, Image.Resampling.BICUBIC)
  return np.asarray(img, np.uint8)


def _read_file(path: str, short_side: int) -> np.ndarray:
  with Image.open(path) as img:
    w, h = img.size
    scale = short_side / min(w, h)
    # JPEG can decode at a reduced scale directly: big WikiArt scans decode much faster.
    img.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
    img = ImageOps.exif_transpose(img)
    return _resize_uint8(images.decode(img), short_side)


class ImageSource:
  """Random-access source of resized RGB uint8 images; unreadable records are skipped.

  Record i that cannot be read is replaced by the next readable one (i + 1, ...), and
  the element says how many were passed over. Picklable, so grain workers can use it.
  """

  def __init__(self, kind: str, records, name: str, short_side: int, image_key: str = "image"):
    self.kind, self.records, self.name = kind, records, name
    self.short_side, self.image_key = short_side, image_key
    self._warned = set()

  def __len__(self):
    return len(self.records)

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_warned"] = set()
    return state

  def _read(self, i: int) -> np.ndarray:
    if self.kind == "folder":
      return _read_file(self.records[i], self.short_side)
    if self.kind == "packaged":
      return _resize_uint8(images.packaged_image(self.records[i]), self.short_side)
    return _resize_uint8(
      images.decode(images.array_to_pil(self.records[i][self.image_key])), self.short_side
    )

  def __getitem__(self, i: int) -> dict:
    n = len(self)
    for skipped in range(n):
      j = (int(i) + skipped) % n
      try:
        image = self._read(j)
      except Exception as e:  # PIL and TFDS decoders raise many types for a damaged record.
        if j not in self._warned:
          self._warned.add(j)
          what = self.records[j] if self.kind == "folder" else f"{self.name}[{j}]"
          logging.warning("skipping unreadable image %s (%s: %s)", what, type(e).__name__, e)
        continue
      if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < self.short_side:
        continue
      return {"image": image, "skipped": np.int32(skipped)}
    raise InputError(f"{self.name}: none of its {n} images can be read")


def open_source(
  spec: str, short_side: int, *, tfds_data_dir=None, split="train", image_key="image"
) -> ImageSource:
  """A source spec (folder, tfds:NAME, skimage:SET) -> ImageSource; bad specs are InputErrors."""
  if images.is_packaged(spec):
    return ImageSource("packaged", images.packaged_names(spec), spec, short_side)
  if spec.startswith("tfds:"):
    name = spec.split(":", 1)[1]
    try:
      import tensorflow_datasets as tfds
    except ImportError:
      raise InputError(
        f"{spec}: TFDS sources need the tfds extra: pip install 'sk-jax[tfds]'"
      ) from None
    try:
      source = tfds.data_source(name, split=split, data_dir=tfds_data_dir, download=False)
    except Exception as e:
      raise InputError(
        f"{spec}: cannot open TFDS split {split!r} in {tfds_data_dir or 'the default data dir'} "
        f"({describe(e)}); prepare it in "
        "array_record format first"
      ) from None
    if len(source) == 0:
      raise InputError(f"{spec}: split {split!r} is empty")
    return ImageSource("tfds", source, spec, short_side, image_key)
  if not os.path.exists(spec):
    raise InputError(
      f"{spec}: no such image folder (give a folder, tfds:NAME or skimage:photos/styles)"
    )
  if not os.path.isdir(spec):
    raise InputError(f"{spec}: not a folder of images")
  return ImageSource("folder", images.list_images(spec), spec, short_side)


def _seed(*parts: int) -> int:
  return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


@dataclasses.dataclass
class RandomCrop(grain.transforms.RandomMap):
  """{"image": (H, W, 3) uint8} -> a random (size, size, 3) crop."""

  size: int

  def random_map(self, element, rng: np.random.Generator):
    img = element["image"]
    h, w = img.shape[:2]
    y, x = rng.integers(0, h - self.size + 1), rng.integers(0, w - self.size + 1)
    return {
      "image": np.ascontiguousarray(img[y : y + self.size, x : x + self.size]),
      "skipped": element["skipped"],
    }


def make_stream(
  source: ImageSource,
  *,
  crop: int,
  batch_size: int,
  seed: int,
  stream: int,
  process_index: int = 0,
  process_count: int = 1,
  num_workers: int = 0,
  num_threads: int = 4,
  prefetch: int = 2,
) -> grain.IterDataset:
  """An infinite, shuffled (reshuffled every epoch), per-process stream of cropped batches.

  `batch_size` is this process's share of the global batch. Each process reads the
  records i with i % process_count == process_index.
  """
  ds = grain.MapDataset.source(source)
  if process_count > 1:
    ds = ds[process_index::process_count]
    if len(ds) == 0:
      raise InputError(
        f"{source.name}: {len(source)} images cannot be shared by {process_count} processes"
      )
  ds = (
    ds.shuffle(seed=_seed(seed, stream, process_index))
    .repeat()
    .random_map(RandomCrop(crop), seed=_seed(seed, stream, process_index, 1))
    .batch(batch_size, drop_remainder=True)
  )
  it = ds.to_iter_dataset(
    grain.ReadOptions(
      num_threads=max(1, num_threads), prefetch_buffer_size=max(1, prefetch * batch_size)
    )
  )
  if num_workers > 0:
    # grain 0.2.18 workers read an absl flag; outside absl.app (pytest, notebooks)
    # they crash unless the flags count as parsed (google/grain#1355).
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=max(1, prefetch))
    )
  return it


def open_sources(data_cfg) -> tuple[ImageSource, ImageSource]:
  """The content and style sources of a config's `data` group, checked before training starts.

  Raises InputError for a bad crop/resize, a missing or empty folder, an unprepared
  TFDS dataset, or a source none of whose first images can be read. Touches no JAX
  device, so it may run before jax.distributed.initialize().
  """
  crop, resize = int(data_cfg.crop), int(data_cfg.resize or 0)
  if crop < 8 or crop % 8:
    raise InputError(f"data.crop must be a positive multiple of 8, got {crop}")
  if resize and resize < crop:
    raise InputError(f"data.resize ({resize}) is smaller than data.crop ({crop})")
  short_side = max(resize, crop)
  sources = []
  for spec, split in (
    (data_cfg.content, data_cfg.content_split),
    (data_cfg.style, data_cfg.style_split),
  ):
    source = open_source(
      spec,
      short_side,
      tfds_data_dir=data_cfg.tfds_data_dir,
      split=split,
      image_key=data_cfg.tfds_image_key,
    )
    source[0]  # raises InputError here, in the main process, if nothing in it is readable
    sources.append(source)
  return tuple(sources)


def build_streams(data_cfg, sources, seed: int, process_index: int = 0, process_count: int = 1):
  """(content, style) sources -> two independent infinite grain streams of this process's batches."""
  if data_cfg.batch_size % process_count:
    raise InputError(
      f"data.batch_size {data_cfg.batch_size} does not split over {process_count} processes"
    )
  return tuple(
    make_stream(
      source,
      crop=int(data_cfg.crop),
      batch_size=data_cfg.batch_size // process_count,
      seed=seed,
      stream=stream,
      process_index=process_index,
      process_count=process_count,
      num_workers=data_cfg.num_workers,
      num_threads=data_cfg.num_threads,
      prefetch=data_cfg.prefetch,
    )
    for stream, source in enumerate(sources)
  )
