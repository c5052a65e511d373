"""Ingestion: DICOM discovery, conversion to NIfTI, LIDC annotations, the cohort, preprocessing and the split."""
