"""Training and I/O: data sets, the training loop, checkpoints, atomic file writes, DDP."""
