"""Training: the loop, the host-side training set and its prefetcher, self-describing checkpoints."""
