"""Training: the loop, checkpoints, distributed setup and monitoring."""
