"""What a test needs that the project installs: skipped on a partial install, a failure under ``make test``.

``make test`` (and so ``.ci/run``) installs every extra (``pip install -e '.[all]'``), the shared
libpython the Triton Python-backend stub embeds (``make libpython``) and Debian's Chromium with its
chromedriver (``make browser``), and sets ``CLIPQ_REQUIRE_ALL=1``. Under that switch a missing piece
is a test *failure* naming what is missing and how to install it, so a broken wheel or a failed
apt-get cannot turn into a green run of skips. Without the switch (a developer's partial install)
the same tests are skipped with the same message.

Use these instead of ``pytest.importorskip`` / ``pytest.skip`` for anything the project installs;
a skip for a condition the project does not promise (a TensorRT build, a GPU) stays a plain skip.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import Any, NoReturn

import pytest

SWITCH = "CLIPQ_REQUIRE_ALL"
ALL_EXTRAS = "pip install -e '.[all]' (`make install`)"
PYMINOR = f"{sys.version_info[0]}.{sys.version_info[1]}"
CHROMEDRIVER = os.environ.get("CLIPQ_CHROMEDRIVER", "/usr/bin/chromedriver")


def required() -> bool:
    """Whether missing pieces fail (``CLIPQ_REQUIRE_ALL=1``, set by ``make test``) instead of skipping."""
    return os.environ.get(SWITCH, "").strip().lower() in ("1", "true", "yes")


def missing(what: str, install: str) -> NoReturn:
    """Fail (under the switch) or skip: ``what`` is missing, ``install`` says how to get it. Never returns."""
    msg = f"{what}; install it with: {install}"
    if required():
        pytest.fail(f"{msg} [{SWITCH}=1: `make test` installs this, so its absence is a failure, not a skip]",
                    pytrace=False)
    pytest.skip(msg, allow_module_level=True)
    raise AssertionError("unreachable")


def require_module(name: str, install: str = ALL_EXTRAS) -> Any:
    """Import ``name`` and return it; where it cannot be imported, :func:`missing` (fail or skip).

    Any ``ImportError`` counts, not only a missing module: a wheel whose shared library fails to load
    is as broken as an absent one, and its message is kept.
    """
    try:
        return importlib.import_module(name)
    except ImportError as e:
        err = e
    missing(f"Python module {name!r} cannot be imported ({type(err).__name__}: {err})", install)


def triton_problem() -> tuple[str, str] | None:
    """Why no tritonserver with a working Python backend can run here, as (what, how to install), or None."""
    from clipq.runtime.errors import ServerError
    from clipq.serving.launcher import find_libpython, find_tritonserver

    try:
        inst = find_tritonserver()
    except ServerError as e:
        return str(e), "pip install 'clipq[serve]' (nvidia-pytriton ships tritonserver), or set CLIPQ_TRITONSERVER"
    if inst.source == "pytriton":
        if inst.stub_for() is None:
            return (f"nvidia-pytriton has no Python backend stub for Python {PYMINOR} in {inst.stubs_dir}",
                    "a Python version nvidia-pytriton ships a stub for (see docs/serving.md)")
        if find_libpython() is None:
            return (f"libpython{PYMINOR}.so.1.0 (the shared library the Triton Python-backend stub embeds) "
                    "is not found", f"`make libpython` (Debian: apt-get install libpython{PYMINOR})")
    elif not inst.has_backend("python"):
        return f"{inst.binary} has no Python backend", "a tritonserver build with the Python backend"
    return None


def require_triton() -> None:
    """A real tritonserver whose Python backend can start here, or :func:`missing`."""
    require_module("tritonclient.grpc")
    require_module("tritonclient.http")
    problem = triton_problem()
    if problem is not None:
        missing(*problem)


def chromium() -> str | None:
    """The Chromium (or Chrome) binary on PATH, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def require_browser() -> tuple[str, str]:
    """(chromium, chromedriver) for the page's browser test, or :func:`missing`."""
    require_module("selenium")
    browser = chromium()
    if browser is None:
        missing("chromium is not installed", "`make browser` (Debian: apt-get install chromium chromium-driver)")
    if not (Path(CHROMEDRIVER).is_file() and os.access(CHROMEDRIVER, os.X_OK)):
        missing(f"chromedriver not found at {CHROMEDRIVER} (CLIPQ_CHROMEDRIVER)",
                "`make browser` (Debian: apt-get install chromium-driver)")
    return browser, CHROMEDRIVER  # type: ignore[return-value]
