"""Real-browser tests: Debian's chromium driven by Playwright for Python, against the app served by
uvicorn on loopback with scripted FakeModels.

Never ``playwright install`` (it downloads browsers): the system chromium is launched with
``executable_path``. ``.ci/run`` installs chromium (apt, as root) and the ``browser`` extra; where
either is missing the tests skip and say why. One browser for the module (all the browser tests
live in one), a fresh context per test: Playwright's sync API keeps an event loop running in the
main thread while it is open, so it must be closed before the asyncio tests of later modules.

Screenshots go to ``$PROREASON_BROWSER_ARTIFACTS`` if set, else a pytest temporary directory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from agents.types import ModelSet
from app.main import create_app
from tests.app.conftest import LiveServer, make_settings
from tests.fakes.models import FakeModel

AXE_JS = Path(__file__).parent / "vendor" / "axe-core-4.14.1" / "axe.min.js"
#: each scripted model call takes this long, so the trace visibly arrives step by step
CALL_S = 0.15


def chromium_path() -> str | None:
    return (
        os.environ.get("PROREASON_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[browser]')")
    exe = chromium_path()
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run does it as root)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


class Visit:
    """A browser context with every request it makes recorded."""

    def __init__(self, browser: Any, **options: Any) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, **options)
        self.requests: list[str] = []
        #: requests the page's Content-Security-Policy stopped in the browser (never sent)
        self.blocked: list[str] = []
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.context.on(
            "requestfailed",
            lambda r: self.blocked.append(r.url) if "csp" in (r.failure or "").lower() else None,
        )
        self.page = self.context.new_page()
        self.console_errors: list[str] = []
        self.page.on(
            "console", lambda m: self.console_errors.append(m.text) if m.type == "error" else None
        )
        self.page.on("pageerror", lambda e: self.console_errors.append(str(e)))

    def off_loopback(self) -> list[str]:
        """Requests to anything but the loopback server that were really sent."""
        out = []
        for url in self.requests:
            parts = urlsplit(url)
            if parts.scheme in ("data", "blob", "about"):
                continue
            if parts.hostname != "127.0.0.1" and url not in self.blocked:
                out.append(url)
        return out

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(browser: Any) -> Iterator[Any]:
    opened: list[Visit] = []

    def open_(**options: Any) -> Visit:
        v = Visit(browser, **options)
        opened.append(v)
        return v

    yield open_
    for v in opened:
        v.close()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    env = os.environ.get("PROREASON_BROWSER_ARTIFACTS")
    path = Path(env) if env else tmp_path_factory.mktemp("browser-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def serve(delay: float | dict[str, float] = CALL_S, **server: Any) -> LiveServer:
    models = ModelSet(
        vision=FakeModel(name="scripted-vlm", backend="scripted", delay_s=delay),
        text=FakeModel(name="scripted-llm", backend="scripted", delay_s=delay),
    )
    return LiveServer(create_app(make_settings(server=server), models=models))


@pytest.fixture(scope="session")
def live() -> Iterator[LiveServer]:
    """The open service: every run is solved in one round (dispatcher -> vision -> referee ->
    summarizer), each call taking CALL_S."""
    with serve() as server:
        yield server
