"""Inference: the engine and its torch-free contract."""
