"""Reading and writing: images, video, files (atomic writes, output checks), checkpoints, weights."""
