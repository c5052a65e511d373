"""LIDC-IDRI's radiologists' annotations: the XML format (:mod:`~ctdiff.data.annotations.lidc_xml`), outlines
placed and filled on the slices (:mod:`~ctdiff.data.annotations.rasterise`), readers' marks grouped into
nodules with a consensus (:mod:`~ctdiff.data.annotations.nodules`), the files written beside the converted
volume (:mod:`~ctdiff.data.annotations.ingest`) and the mask resampled with the preprocessed one
(:mod:`~ctdiff.data.annotations.resample`)."""
