"""docs/api.md says what every request parameter does, and how /metrics is reached."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from app.chat.schemas import ChatCompletionRequest, ImageURL, ProReasonExtension, StreamOptions
from app.main import create_app
from app.reason.schemas import ReasonRequest
from tests.app.conftest import make_settings

API_MD = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def _table_rows(text: str) -> dict[str, str]:
    """`name` (first cell of a table row, one or more backticked names) -> the row."""
    rows: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split("|")[1]
        for name in re.findall(r"`([^`]+)`", first):
            rows[name] = line
    return rows


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    level = heading.split(" ")[0]
    rest = text[start + len(heading) :]
    end = re.search(rf"^{level} ", rest, flags=re.MULTILINE)
    return rest[: end.start()] if end else rest


@pytest.mark.parametrize(
    ("model", "heading"),
    [
        (ChatCompletionRequest, "## Chat completions"),
        (ProReasonExtension, "## Chat completions"),
        (ReasonRequest, "## `/v1/reason`"),
    ],
)
def test_every_request_field_has_a_row_saying_what_it_does(
    model: type[BaseModel], heading: str
) -> None:
    rows = _table_rows(_section(API_MD.read_text(), heading))
    missing = [f for f in model.model_fields if f not in rows and f != "top_logprobs"]
    assert missing == [], f"{model.__name__}: no row in docs/api.md {heading!r} for {missing}"
    for field in model.model_fields:
        if field in rows:
            assert len(rows[field].split("|")[-2].strip()) > 10, f"{field}: say what it does"


def test_nested_fields_are_mentioned() -> None:
    text = _section(API_MD.read_text(), "## Chat completions")
    for model in (StreamOptions, ImageURL):
        for field in model.model_fields:
            assert f"`{field}`" in text or f'"{field}"' in text, field


def test_the_documented_specifics() -> None:
    text = API_MD.read_text()
    chat = _section(text, "## Chat completions")
    for needle in (
        "each model call",  # max_tokens per call
        "`max_completion_tokens` wins",
        "`true` is a 400",  # logprobs
        "`[image N]`",
        "newest turn first",
        "`media.max_images`",
        "can only lower",  # timeout_s
    ):
        assert needle in chat, needle
    assert "GET /v1/models/{id}" in text and "model_not_found" in text


def test_every_route_of_the_app_is_in_the_table(models) -> None:
    app = create_app(make_settings(), models=models)
    text = API_MD.read_text()
    for path in app.openapi()["paths"]:
        documented = path.replace("{model}", "{id}")
        assert f" {documented}`" in text, f"{path} missing from docs/api.md"


def test_metrics_access_and_scrape_config_are_documented() -> None:
    metrics = _section(API_MD.read_text(), "## Metrics")
    assert "server.metrics_token" in metrics and "PROREASON_SERVER__METRICS_TOKEN" in metrics
    assert "scrape_configs:" in metrics and "authorization:" in metrics
    assert "type: Bearer" in metrics
