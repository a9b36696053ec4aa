"""clipq.app: the application layer — CLI, demo, benchmarks and the web app (``clipq.app.web``).

The only package that imports every stage: the core (``clipq``), ``clipq.export``,
``clipq.serving`` and ``clipq.runtime``. Nothing below it imports it back (tests/unit/test_layers.py).
"""
