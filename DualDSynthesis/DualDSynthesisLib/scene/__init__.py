"""Slicer-core (MRML scene, never Qt): node conversion, display, region QA, DICOM marking, the logic."""
