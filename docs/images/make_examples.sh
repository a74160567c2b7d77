#!/usr/bin/env bash
# Regenerates the README's example images with the bundled generator, from packaged
# scikit-image images only: bash docs/images/make_examples.sh  (about a minute on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")"
SK=${SK:-sk-jax}
$SK stylize --content skimage:astronaut --style skimage:immunohistochemistry --output astronaut_stylized.jpg --size 256
$SK stylize --content skimage:astronaut --style skimage:immunohistochemistry --output preserve_color.jpg --size 256 --preserve-color
$SK stylize --content skimage:chelsea --style skimage:immunohistochemistry,hubble_deep_field --style-weights 0.5,0.5 --output mix.jpg --size 256
python - <<'PY'
import numpy as np
from PIL import Image
m = np.zeros((256, 256), np.uint8)
m[:, 128:] = 255  # black: the first style, white: the second
Image.fromarray(m).save("mask.png")
PY
$SK stylize --content skimage:astronaut --style skimage:immunohistochemistry,hubble_deep_field --mask mask.png --output masked.jpg --size 256
$SK stylize --content skimage:coffee --style skimage:brick --style-size 512 --output style_size.jpg --size 256
$SK stylize --content skimage:chelsea --style skimage:hubble_deep_field --alpha 0,0.25,0.5,0.75,1 --output alpha_strip.jpg --size 160
