"""The browser pages without a browser: index, playground files, offline docs, CORS."""

from __future__ import annotations

from fastapi.testclient import TestClient

from agents.types import ModelSet
from app.main import create_app
from app.settings import ServerConfig
from tests.app.conftest import make_settings
from tests.fakes.models import FakeModel


def _client(**server: object) -> TestClient:
    app = create_app(
        make_settings(server=server),
        models=ModelSet(vision=FakeModel(), text=FakeModel()),
    )
    return TestClient(app, raise_server_exceptions=False)


def test_index_links_playground_and_docs(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert 'href="playground"' in r.text and 'href="docs"' in r.text


def test_playground_page_and_assets(client: TestClient) -> None:
    r = client.get("/playground")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "connect-src 'self'" in r.headers["content-security-policy"]
    for asset in ("playground.js", "playground.css"):
        assert f"playground/static/{asset}" in r.text
        a = client.get(f"/playground/static/{asset}")
        assert a.status_code == 200 and a.content
    assert client.get("/playground/", follow_redirects=False).status_code == 308


def test_docs_and_redoc_use_local_assets(client: TestClient) -> None:
    for path in ("/docs", "/redoc"):
        html = client.get(path).text
        assert "cdn" not in html.lower() and "fonts.googleapis" not in html
        assert "docs-assets/" in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        r = client.get(f"/docs-assets/{asset}")
        assert r.status_code == 200 and len(r.content) > 10_000
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/reason" in paths and "/playground" not in paths and "/" not in paths


def test_cors_is_off_by_default(client: TestClient) -> None:
    r = client.get("/health", headers={"Origin": "https://ui.example"})
    assert "access-control-allow-origin" not in r.headers
    r = client.options(
        "/v1/reason",
        headers={"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"},
    )
    assert r.status_code == 405 and "access-control-allow-origin" not in r.headers


def test_cors_allowlist_answers_preflight() -> None:
    with _client(cors_origins=["https://ui.example"]) as c:
        r = c.options(
            "/v1/reason",
            headers={
                "Origin": "https://ui.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        assert "POST" in r.headers["access-control-allow-methods"]
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        # an error response carries the header too (the browser can read the envelope)
        bad = c.post("/v1/reason", json={}, headers={"Origin": "https://ui.example"})
        assert bad.status_code == 400
        assert bad.headers["access-control-allow-origin"] == "https://ui.example"
        assert "x-request-id" in bad.headers["access-control-expose-headers"].lower()
        # an origin not on the list gets no grant
        r = c.options(
            "/v1/reason",
            headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers


def test_cors_origins_from_env(monkeypatch) -> None:
    monkeypatch.setenv("PROREASON_SERVER__CORS_ORIGINS", "https://a.example, https://b.example")
    assert make_settings().server.cors_origins == ["https://a.example", "https://b.example"]
    assert ServerConfig().cors_origins == []
