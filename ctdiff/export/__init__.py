"""Real and synthetic volumes written out for other tools: DICOM (CT series, Segmentation, LIDC annotation
XML) and nnU-Net v2 raw training sets."""
