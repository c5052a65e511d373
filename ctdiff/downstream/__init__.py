"""Does synthetic data help? A nodule segmenter trained on real, synthetic and real + synthetic volumes, scored
on the held-out real volumes (:mod:`ctdiff.downstream.stage`)."""
