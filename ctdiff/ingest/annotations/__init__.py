"""LIDC-IDRI's radiologists' annotations: the XML format (:mod:`~ctdiff.ingest.annotations.lidc_xml`), outlines
placed and filled on the slices (:mod:`~ctdiff.ingest.annotations.rasterise`), readers' marks grouped into
nodules with a consensus (:mod:`~ctdiff.ingest.annotations.nodules`), the files written beside the converted
volume (:mod:`~ctdiff.ingest.annotations.ingest`) and the mask resampled with the preprocessed one
(:mod:`~ctdiff.ingest.annotations.resample`)."""
