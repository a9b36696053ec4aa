"""clipq.runtime: the torch-free client API (preprocessing, tokenisation, backends, index, tasks).

Importing this package must never import torch: a deployment installs the runtime only.
"""

from __future__ import annotations

from .connect import connect  # noqa: F401
from .errors import (  # noqa: F401  (the error types are part of the public API)
    ArtifactError,
    AuthenticationError,
    BackendUnavailable,
    ClipqError,
    ConcurrentWriteError,
    DataFormatError,
    DimensionMismatchError,
    DTypeError,
    DuplicateIdError,
    IndexCorruptError,
    InferenceError,
    InvalidImageError,
    InvalidInputError,
    InvalidTextError,
    MissingDependencyError,
    ParityError,
    SchemaVersionError,
    ServerError,
    ShapeError,
    UnknownIdError,
)
from .fusion import Img2PromptSettings  # noqa: F401
from .img2prompt import ImageToPrompt  # noqa: F401
from .manifest import Manifest, ModelSpec, TensorSpec  # noqa: F401
from .tasks import (  # noqa: F401
    Answer,
    ClipEncoder,
    EnsembleHead,
    PromptEncoder,
    PromptRegressor,
    ReadingModel,
    ReadResult,
    VqaModel,
)
