"""Synthetic sample sets written out for other tools: DICOM (CT series, Segmentation, LIDC annotation XML)."""
