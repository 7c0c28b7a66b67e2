"""Training: the loop, its state, checkpoints, metrics, and ``fit`` for a user's own model."""
