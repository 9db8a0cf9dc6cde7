"""Backends: ``torch`` (the reference executor, calibration and QAT) and ``tvm`` (compilation)."""

__all__: list[str] = []
