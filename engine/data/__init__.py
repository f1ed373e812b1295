"""Data layer: readers (io, dicom), upload ingest, splits, demo datasets, and the on-disk dataset cache.

Nothing is imported here on purpose: `engine.data.dataset` is used by training and must not pull in pydicom.
"""
