"""Where things sit in a repository clipq renders, and how a launcher finds them.

A rendered repository is one directory with three parts, because Triton treats every
sub-directory of a model repository as a model (a ``backends/`` or ``tokenizers/`` folder inside it
fails the server's start-up)::

    clipq_repository.json     how it was rendered (options, the manifest subset the configs use)
    README.md
    models/                   the Triton model repository (``--model-repository``)
    backends/clipq/model.py   the one Python-based backend every Python-run model uses
    tokenizers/               one copy of each tokenizer, with its own small manifest

A plain Triton repository (``<model>/config.pbtxt`` at the top) is served as it is, with the
installed package's backend.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPOSITORY_FILE = "clipq_repository.json"
MODELS_DIR = "models"
BACKENDS_DIR = "backends"
BACKEND_NAME = "clipq"
TOKENIZERS_DIR = "tokenizers"
#: the backend's source: package data of clipq.serving, copied into every rendered repository
BACKEND_SOURCE = Path(__file__).with_name("backend") / "model.py"
#: a tokenize model's way from its own directory to the shared tokenizers (``clipq_manifest``)
TOKENIZERS_FROM_MODEL = f"../../{TOKENIZERS_DIR}"


@dataclass(frozen=True)
class RepositoryLayout:
    """The parts of a repository a server needs.

    Attributes:
        root: The directory given.
        models: The Triton model repository.
        backend: Folder holding the ``clipq`` backend's ``model.py`` (the repository's own copy,
            else the installed package's).
        rendered: Whether clipq rendered it (it holds ``clipq_repository.json``).
    """

    root: Path
    models: Path
    backend: Path
    rendered: bool

    def model_names(self) -> list[str]:
        """Names of the models (sub-directories with a ``config.pbtxt``), sorted."""
        if not self.models.is_dir():
            return []
        return sorted(c.name for c in self.models.iterdir() if (c / "config.pbtxt").is_file())


def _has_configs(p: Path) -> bool:
    return p.is_dir() and any((c / "config.pbtxt").is_file() for c in p.iterdir() if c.is_dir())


def repository_layout(path: str | os.PathLike[str]) -> RepositoryLayout:
    """Resolve ``path`` (a rendered repository or a plain Triton one) into its parts."""
    root = Path(path)
    rendered = (root / REPOSITORY_FILE).is_file()
    nested = root / MODELS_DIR
    models = nested if rendered or (nested.is_dir() and not _has_configs(root)) else root
    own = root / BACKENDS_DIR / BACKEND_NAME
    backend = own if (own / "model.py").is_file() else BACKEND_SOURCE.parent
    return RepositoryLayout(root=root, models=models, backend=backend, rendered=rendered)


def is_repository(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a Triton model repository, rendered by clipq (``models/``) or plain."""
    p = Path(path)
    return p.is_dir() and _has_configs(repository_layout(p).models)
