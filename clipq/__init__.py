"""clipq: CLIP-based models as fast, served, production software.

Stages: ``clipq`` (data, models, training, evaluation, CLI), ``clipq.export`` (ONNX/TensorRT),
``clipq.serving`` (Triton) and ``clipq.runtime`` (torch-free client API). This module imports
nothing heavy: the CLI loads each stage lazily.
"""

from __future__ import annotations

__version__ = "0.1.0"
