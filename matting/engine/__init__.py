"""Training and evaluation machinery: the trainer, checkpoints, logging, distributed set-up, and the shared
inference path (padding, prediction, clamping) that evaluation, inference and export all use."""
