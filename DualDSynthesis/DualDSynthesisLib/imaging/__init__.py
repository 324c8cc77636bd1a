"""Imaging and model files: preprocessing, volume/heatmap/DICOM I/O, atomic writes, bundles, scoring."""
