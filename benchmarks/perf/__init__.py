"""The performance targets: one pytest-benchmark file per target, fixtures in `conftest.py`."""
