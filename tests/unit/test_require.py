"""tests/_require.py: under CLIPQ_REQUIRE_ALL=1 (``make test``) a missing piece fails, naming it and its install."""

from __future__ import annotations

import pytest
from _require import SWITCH, missing, require_browser, require_module, require_triton

NO_SUCH = "clipq_no_such_module_for_the_test"


@pytest.fixture(params=["1", ""], ids=["required", "partial-install"])
def switch(request, monkeypatch):
    monkeypatch.setenv(SWITCH, request.param)
    return request.param == "1"


def _outcome(switch: bool):
    return pytest.raises(pytest.fail.Exception if switch else pytest.skip.Exception)


def test_a_missing_module_fails_under_the_switch_and_skips_without(switch):
    with _outcome(switch) as info:
        require_module(NO_SUCH)
    msg = str(info.value)
    assert repr(NO_SUCH) in msg and "ModuleNotFoundError" in msg and "pip install -e '.[all]'" in msg
    assert (f"{SWITCH}=1" in msg) == switch
    assert require_module("json").dumps([1]) == "[1]"  # present: the module itself


def test_a_broken_wheel_counts_as_missing(switch, monkeypatch):
    import importlib

    def broken(name):
        raise ImportError("libfoo.so.1: cannot open shared object file")

    monkeypatch.setattr(importlib, "import_module", broken)
    with _outcome(switch) as info:
        require_module("fastapi")
    assert "libfoo.so.1" in str(info.value)


def test_no_libpython_for_the_triton_stub(switch, monkeypatch):
    import clipq.serving.launcher as launcher
    from clipq.runtime.errors import ServerError

    if launcher.find_tritonserver().source != "pytriton":
        pytest.skip("only nvidia-pytriton's tritonserver embeds libpython")
    monkeypatch.setattr(launcher, "find_libpython", lambda *a, **kw: None)
    with _outcome(switch) as info:
        require_triton()
    assert "libpython" in str(info.value) and "make libpython" in str(info.value)

    def none():
        raise ServerError("tritonserver not found: install the serving extra")

    monkeypatch.setattr(launcher, "find_tritonserver", none)
    with _outcome(switch) as info:
        require_triton()
    assert "tritonserver not found" in str(info.value) and "clipq[serve]" in str(info.value)


def test_no_browser(switch, monkeypatch, tmp_path):
    import _require

    monkeypatch.setattr(_require, "CHROMEDRIVER", str(tmp_path / "chromedriver"))
    monkeypatch.setattr(_require, "chromium", lambda: "/usr/bin/chromium")
    with _outcome(switch) as info:
        require_browser()
    assert "chromedriver not found" in str(info.value) and "make browser" in str(info.value)
    monkeypatch.setattr(_require, "chromium", lambda: None)
    with _outcome(switch) as info:
        require_browser()
    assert "chromium is not installed" in str(info.value)


def test_missing_names_what_and_how():
    with pytest.raises((pytest.fail.Exception, pytest.skip.Exception), match="X is gone; install it with: get X"):
        missing("X is gone", "get X")
