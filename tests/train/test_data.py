"""Input pipelines: folders (recursive), TFDS ArrayRecord, the embedded set; skipping, sharing, resume."""

import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from sk_jax.errors import InputError
from sk_jax.train import data


def _write(path, color, size=(40, 30)):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", size, color).save(path)


def _folder(root, n=6, size=(40, 30)):
  """n solid-colour images, red channel 10 * i, spread over nested folders."""
  for i in range(n):
    _write(
      os.path.join(root, f"sub{i % 2}", "deeper" if i % 3 == 0 else "", f"img{i}.png"),
      (10 * i, 100, 200),
      size,
    )
  return root


def _data_cfg(content, style, **kw):
  cfg = ml_collections.ConfigDict(
    dict(
      content=content,
      style=style,
      content_split="train",
      style_split="train",
      tfds_image_key="image",
      tfds_data_dir=None,
      resize=24,
      crop=16,
      batch_size=2,
      num_workers=0,
      num_threads=2,
      prefetch=2,
    )
  )
  cfg.update(kw)
  return cfg


def _take(it, n):
  return [next(it) for _ in range(n)]


def test_folder_source_is_recursive_resized_and_cropped(tmp_path):
  root = _folder(str(tmp_path / "imgs"))
  src = data.open_source(root, 24)
  assert len(src) == 6
  assert sorted(int(v["image"][0, 0, 0]) for v in (src[i] for i in range(6))) == [
    0,
    10,
    20,
    30,
    40,
    50,
  ]
  assert src[0]["image"].shape == (24, 32, 3)  # short side 30 -> 24, long side 40 -> 32

  it = iter(data.make_stream(src, crop=16, batch_size=3, seed=0, stream=0))
  batch = next(it)
  assert batch["image"].shape == (3, 16, 16, 3) and batch["image"].dtype == np.uint8
  assert batch["skipped"].tolist() == [0, 0, 0]
  # Shuffled and infinite: two epochs each visit every image once, in different orders.
  reds = [int(b["image"][i, 0, 0, 0]) for b in _take(it, 3) for i in range(3)]
  reds = [int(v) for v in batch["image"][:, 0, 0, 0]] + reds
  assert sorted(reds[:6]) == sorted(reds[6:]) == [0, 10, 20, 30, 40, 50]
  assert reds[:6] != reds[6:]


def test_small_images_are_upscaled_to_the_crop(tmp_path):
  _write(str(tmp_path / "s" / "tiny.png"), (1, 2, 3), size=(20, 17))
  src = data.open_source(str(tmp_path / "s"), 24)
  assert min(src[0]["image"].shape[:2]) == 24


def test_streams_are_seeded_and_independent(tmp_path):
  root = _folder(str(tmp_path / "imgs"), n=8)
  cfg = _data_cfg(root, root)
  sources = data.open_sources(cfg)

  def first(seed):
    c, s = data.build_streams(cfg, sources, seed)
    return [b["image"] for b in _take(iter(c), 3)], [b["image"] for b in _take(iter(s), 3)]

  c0, s0 = first(0)
  c0_again, _ = first(0)
  c1, _ = first(1)
  np.testing.assert_array_equal(np.stack(c0), np.stack(c0_again))
  assert not np.array_equal(np.stack(c0), np.stack(c1))
  assert not np.array_equal(np.stack(c0), np.stack(s0)), "content and style draw independently"


def test_corrupt_files_are_skipped_and_counted(tmp_path, caplog):
  root = _folder(str(tmp_path / "imgs"), n=3)
  with open(os.path.join(root, "broken.jpg"), "wb") as f:
    f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
  good = Image.new("RGB", (40, 30), (9, 9, 9))
  good.save(os.path.join(root, "truncated.png"))
  with open(os.path.join(root, "truncated.png"), "r+b") as f:
    f.truncate(60)
  src = data.open_source(root, 24)
  assert len(src) == 5
  it = iter(data.make_stream(src, crop=16, batch_size=5, seed=0, stream=0))
  batches = _take(it, 4)
  # Every epoch meets both bad files once: 2 skips per 5 records on average.
  assert sum(int(b["skipped"].sum()) for b in batches) >= 4
  reds = {int(v) for b in batches for v in b["image"][:, 0, 0, 0]}
  assert reds <= {0, 10, 20}, "only readable images come out"
  assert "broken.jpg" in caplog.text and "truncated.png" in caplog.text


def test_unreadable_or_missing_sources_fail_before_training(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(InputError, match="no images found"):
    data.open_sources(_data_cfg(str(tmp_path / "empty"), "embedded:styles"))
  with pytest.raises(InputError, match="no such image folder"):
    data.open_sources(_data_cfg("embedded:photos", str(tmp_path / "missing")))
  bad = tmp_path / "bad"
  bad.mkdir()
  (bad / "a.png").write_bytes(b"garbage")
  with pytest.raises(InputError, match="none of its 1 images can be read"):
    data.open_sources(_data_cfg(str(bad), "embedded:styles"))
  with pytest.raises(InputError, match="not a packaged scikit-image image.*sets photos, styles"):
    data.open_sources(_data_cfg("embedded:paintings", "embedded:styles"))
  with pytest.raises(InputError, match="multiple of 8"):
    data.open_sources(_data_cfg("embedded:photos", "embedded:styles", crop=20))
  with pytest.raises(InputError, match="array_record"):
    data.open_sources(
      _data_cfg("tfds:sk_jax_no_such_dataset", "embedded:styles", tfds_data_dir=str(tmp_path))
    )


def test_embedded_sets_are_photos_and_colourful_styles():
  photos = data.open_source("embedded:photos", 32)
  styles = data.open_source("embedded:styles", 32)
  assert len(photos) == len(styles) == 8
  for src in (photos, styles):
    for i in range(len(src)):
      img = src[i]["image"]
      assert (
        img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3 and min(img.shape[:2]) == 32
      )
  # The style set is colourful: most images have clearly different channels.
  colourful = [
    np.abs(styles[i]["image"].astype(int) - styles[i]["image"][..., :1]).mean() > 5
    for i in range(8)
  ]
  assert sum(colourful) >= 4


def test_processes_read_disjoint_shares(tmp_path):
  root = _folder(str(tmp_path / "imgs"), n=6)
  src = data.open_source(root, 24)
  seen = []
  for pidx in range(2):
    it = iter(
      data.make_stream(
        src, crop=16, batch_size=3, seed=0, stream=0, process_index=pidx, process_count=2
      )
    )
    seen.append({int(v) for b in _take(it, 2) for v in b["image"][:, 0, 0, 0]})
  assert len(seen[0]) == len(seen[1]) == 3
  assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == {0, 10, 20, 30, 40, 50}


@pytest.mark.parametrize("workers", [0, 1])
def test_iterator_state_resumes_exactly(tmp_path, workers):
  root = _folder(str(tmp_path / "imgs"), n=5)
  src = data.open_source(root, 24)
  make = lambda: iter(
    data.make_stream(src, crop=16, batch_size=2, seed=3, stream=1, num_workers=workers)
  )
  it = make()
  _take(it, 3)
  state = it.get_state()
  want = [b["image"] for b in _take(it, 4)]
  fresh = make()
  fresh.set_state(state)
  np.testing.assert_array_equal(np.stack([b["image"] for b in _take(fresh, 4)]), np.stack(want))


def _prepare_tiny_tfds(data_dir):
  """6 images and a corrupt record, written as ArrayRecord by a GeneratorBasedBuilder (no TensorFlow)."""
  import tensorflow_datasets as tfds  # the tfds extra; the README test command installs it

  class SkJaxTinyImages(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict(
          {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(num_classes=6),
          }
        ),
      )

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      # PIL images: TFDS encodes them with PIL (numpy arrays would need TensorFlow).
      for i in range(6):
        img = np.zeros((20 + i, 30, 3), np.uint8)
        img[..., 0] = 10 * i
        yield i, {"image": Image.fromarray(img), "label": i}
      yield 6, {"image": b"not an image", "label": 0}  # a corrupt record

  SkJaxTinyImages(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return "sk_jax_tiny_images"


def test_tfds_array_record_source(tmp_path):
  name = _prepare_tiny_tfds(str(tmp_path / "tfds"))
  cfg = _data_cfg(f"tfds:{name}", "embedded:styles", tfds_data_dir=str(tmp_path / "tfds"))
  sources = data.open_sources(cfg)
  assert len(sources[0]) == 7
  c_ds, _ = data.build_streams(cfg, sources, seed=0)
  batches = _take(iter(c_ds), 7)  # two epochs of 7 records
  reds = [int(v) for b in batches for v in b["image"][:, 0, 0, 0]]
  assert set(reds) == {0, 10, 20, 30, 40, 50}
  assert sum(int(b["skipped"].sum()) for b in batches) >= 2, (
    "the corrupt record is skipped once per epoch"
  )
  with pytest.raises(InputError, match="split 'validation'"):
    data.open_sources(
      _data_cfg(
        f"tfds:{name}",
        "embedded:styles",
        content_split="validation",
        tfds_data_dir=str(tmp_path / "tfds"),
      )
    )
