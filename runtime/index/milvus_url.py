"""Store URLs (``milvus://HOST:PORT/COLLECTION``, ``milvus-lite://PATH.db/COLLECTION``) and the connection.

pymilvus' ``MilvusClient`` speaks the same API to a Milvus server (``http://host:19530``) and to a
Milvus Lite file (``file.db``: a local engine that pymilvus starts by itself), so one store class
serves both; the URL only says where. Errors come back as clipq's typed errors naming the URL:
:class:`~clipq.runtime.errors.StoreError` for a bad URL or a missing folder,
:class:`~clipq.runtime.errors.StoreUnavailableError` for a server that does not answer in time.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, StoreError, StoreUnavailableError

#: environment variable holding a Milvus token (``user:password`` or an API key), never put in URLs
TOKEN_ENV = "CLIPQ_MILVUS_TOKEN"
#: seconds a connection to a server may take before :class:`StoreUnavailableError`
CONNECT_TIMEOUT_S = 10.0
DEFAULT_PORT = 19530

#: Milvus' rule for collection names
_COLLECTION_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?")
_SCHEMES = {"milvus": "http", "milvus+https": "https", "milvus-lite": None}
_USAGE = "expected milvus://HOST:PORT/COLLECTION, milvus+https://HOST:PORT/COLLECTION or milvus-lite://PATH.db/COLLECTION"


def is_store_url(text: Any) -> bool:
    """Whether ``text`` names a vector store (a ``milvus*://`` URL) rather than an index directory."""
    return isinstance(text, str) and text.split("://", 1)[0] in _SCHEMES and "://" in text


@dataclass(frozen=True)
class MilvusURL:
    """A parsed store URL.

    Attributes:
        url: the URL as given (named in every error).
        uri: what ``MilvusClient`` gets: ``http://host:port`` or the Lite file's path.
        collection: the collection name.
        lite: a Milvus Lite file rather than a server.
    """

    url: str
    uri: str
    collection: str
    lite: bool

    @classmethod
    def parse(cls, url: str) -> MilvusURL:
        """Parse ``milvus://HOST[:PORT]/COLLECTION`` or ``milvus-lite://PATH.db/COLLECTION``.

        A Lite path is relative to the working directory unless it starts with ``/``
        (``milvus-lite:///data/photos.db/photos``) or ``~``.

        Raises:
            StoreError: the URL is malformed (the message shows the expected forms).
        """
        if not isinstance(url, str) or "://" not in url:
            raise StoreError(f"bad store URL {url!r}: {_USAGE}")
        scheme, rest = url.split("://", 1)
        if scheme not in _SCHEMES:
            raise StoreError(f"bad store URL {url!r}: unknown scheme {scheme!r}; {_USAGE}")
        where, sep, collection = rest.rpartition("/")
        if not sep or not where or not collection:
            raise StoreError(f"bad store URL {url!r}: no collection name after the last '/'; {_USAGE}")
        if not _COLLECTION_RE.match(collection):
            raise StoreError(
                f"bad store URL {url!r}: collection {collection!r} must be letters, digits and "
                "underscores, starting with a letter or underscore (Milvus' rule)"
            )
        if _SCHEMES[scheme] is None:
            path = os.path.expanduser(where)
            if not path.endswith(".db"):
                raise StoreError(f"bad store URL {url!r}: a Milvus Lite file must end in .db, got {where!r}")
            return cls(url, path, collection, True)
        if "/" in where or "@" in where:
            raise StoreError(
                f"bad store URL {url!r}: HOST:PORT then one '/COLLECTION' (put a token in "
                f"${TOKEN_ENV}, not in the URL)"
            )
        m = _HOST_RE.fullmatch(where)
        if m is None:
            raise StoreError(f"bad store URL {url!r}: {where!r} is not HOST or HOST:PORT; {_USAGE}")
        host, port = m.group(1), int(m.group(2) or DEFAULT_PORT)
        if not 0 < port < 65536:
            raise StoreError(f"bad store URL {url!r}: port {port} out of range")
        return cls(url, f"{_SCHEMES[scheme]}://{host}:{port}", collection, False)


def quiet_pymilvus() -> None:
    """pymilvus logs every failed call with a traceback at ERROR (its own stderr handler, level WARNING
    by default); clipq raises a typed error naming the store instead, so those lines only repeat it."""
    log = logging.getLogger("pymilvus")
    if log.level in (logging.NOTSET, logging.WARNING):
        log.setLevel(logging.CRITICAL)
    # Milvus Lite serves gRPC inside this process, and its server logs a traceback for each call it
    # does not implement (pymilvus' query iterator asks for a timestamp first, then does without)
    # the same for Milvus Lite's own loggers: a file another process holds is logged with a traceback,
    # and clipq reports it as a StoreError
    for name in ("grpc._server", "milvus_lite"):
        quiet = logging.getLogger(name)
        if quiet.level == logging.NOTSET:
            quiet.setLevel(logging.CRITICAL)


def connect(where: MilvusURL, *, token: str | None = None, timeout: float = CONNECT_TIMEOUT_S) -> Any:
    """A ``MilvusClient`` for ``where``.

    Args:
        where: the parsed URL.
        token: a Milvus token; default ``$CLIPQ_MILVUS_TOKEN`` (servers only).
        timeout: seconds to wait for a server.

    Raises:
        MissingDependencyError: pymilvus (or milvus-lite, for a Lite file) is not installed.
        StoreError: the Lite file's folder does not exist, or the file cannot be opened.
        StoreUnavailableError: the server does not answer within ``timeout``.
    """
    if importlib.util.find_spec("pymilvus") is None:
        raise MissingDependencyError("pymilvus", "milvus", "Milvus stores")
    if where.lite and importlib.util.find_spec("milvus_lite") is None:
        raise MissingDependencyError("milvus-lite", "milvus", "Milvus Lite files")
    quiet_pymilvus()
    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    if where.lite:
        folder = Path(where.uri).parent
        if not folder.is_dir():
            raise StoreError(
                f"{where.url}: the folder {str(folder)!r} of the Milvus Lite file does not exist"
            )
    token = os.environ.get(TOKEN_ENV, "") if token is None else token
    try:
        return MilvusClient(uri=where.uri, token="" if where.lite else token, timeout=timeout)
    except MilvusException as e:
        if where.lite:
            if _lite_locked(where.uri):
                raise StoreError(
                    f"{where.url}: another process has this Milvus Lite file open (Milvus Lite serves one "
                    "process at a time: stop that one, or put the collection on a Milvus server)"
                ) from None
            raise StoreError(f"{where.url}: cannot open the Milvus Lite file: {_message(e)}") from None
        raise StoreUnavailableError(
            f"{where.url}: cannot reach Milvus at {where.uri} within {timeout:g} s: {_message(e)}"
        ) from None


def _lite_locked(path: str) -> bool:
    """Whether another process holds the lock of a Milvus Lite data folder (``PATH.db/LOCK``)."""
    lock = Path(path) / "LOCK"
    if not lock.is_file():
        return False
    try:
        import fcntl
    except ImportError:  # Windows: say nothing rather than guess
        return False
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def _message(e: BaseException) -> str:
    return str(getattr(e, "message", None) or e)
