"""clipq.app: the application layer — CLI, demo, benchmarks (and later the web app).

The only package that imports every stage: the core (``clipq``), ``clipq.export``,
``clipq.serving`` and ``clipq.runtime``. Nothing below it imports it back (tests/unit/test_layers.py).
"""
