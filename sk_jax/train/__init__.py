"""Training: data, the train step, the loop, checkpoints, sharding, logging."""
