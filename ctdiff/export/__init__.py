"""Exports of the real and synthetic volumes in the formats other tools read."""
