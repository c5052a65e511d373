"""Sampling stage: synthetic volumes from a checkpoint, and the nodule masks they are drawn with."""
