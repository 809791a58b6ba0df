"""Schemathesis over the live ``/openapi.json``: every documented operation, fed generated valid
and invalid requests (its positive and negative modes), on the FakeModel behind a real loopback
server. No request may cause a 5xx, and every response must match what the document says
(schemathesis's default checks: not_a_server_error, status code, content type, headers and
response schema conformance, negative data rejected) — all but ``positive_data_acceptance``:
the document cannot say everything the service checks, so some schema-valid requests are
rightly 400s (an image URL that does not decode; ``"max_tokens": 10.0``, which JSON Schema's
``integer`` admits and the strict wire types refuse).

Schemathesis's own pytest integration (``@schema.parametrize`` on a lazily loaded schema) breaks
on pytest 9 (it renames ``node._nodeid``), so each operation's strategy is driven by Hypothesis
here; ``test_every_operation_is_covered`` keeps the list below equal to the live document.
Then schemathesis's deterministic coverage phase (boundary values) over every operation.
Bounded: ``EXAMPLES`` per operation and mode, ~760 coverage cases; well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import negative_data_rejection, positive_data_acceptance
from schemathesis.core.failures import FailureGroup

from agents.types import ModelSet
from app.main import create_app
from tests.app.conftest import LiveServer, make_settings
from tests.fakes.models import FakeModel

#: examples per operation and mode; each is one HTTP request on loopback
EXAMPLES = 25

OPERATIONS = (
    "POST /v1/chat/completions",
    "POST /v1/reason",
    "POST /v1/reason/upload",
    "GET /v1/models",
    "GET /v1/models/{model}",
    "GET /health",
    "GET /ready",
    "GET /metrics",
)


def _known_model(case: schemathesis.Case) -> schemathesis.Case:
    if isinstance(case.body, dict):
        case.body = {**case.body, "model": "proreason"}
    return case


def _excluded(label: str) -> list:
    excluded = [positive_data_acceptance]
    if label == "POST /v1/reason/upload":
        # form fields are text: an empty one counts as not given (HTML forms send empty fields)
        # and "0" is a boolean, so "schema-violating" values are rightly accepted
        excluded.append(negative_data_rejection)
    return excluded


class Live:
    def __init__(self, server: LiveServer, schema: schemathesis.BaseSchema) -> None:
        self.server, self.schema = server, schema


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    app = create_app(
        make_settings(server={"max_in_flight": 64}),
        models=ModelSet(vision=FakeModel(name="st-vlm"), text=FakeModel(name="st-llm")),
    )
    with LiveServer(app) as server:
        yield Live(server, schemathesis.openapi.from_url(f"{server.url}/openapi.json"))


def test_every_operation_is_covered(live: Live) -> None:
    labels = {result.ok().label for result in live.schema.get_all_operations()}
    assert labels == set(OPERATIONS)


#: the operations with a body, for the negative mode (the others have nothing to get wrong)
WITH_BODY = [label for label in OPERATIONS if label.startswith("POST")]


@pytest.mark.parametrize(
    ("label", "mode"),
    [(label, GenerationMode.POSITIVE) for label in OPERATIONS]
    + [(label, GenerationMode.NEGATIVE) for label in WITH_BODY],
    ids=str,
)
def test_no_5xx_and_responses_match_the_document(
    live: Live, label: str, mode: GenerationMode
) -> None:
    operation = live.schema.find_operation_by_label(label)
    assert operation is not None, label

    strategy = operation.as_strategy(generation_mode=mode)
    if label == "POST /v1/chat/completions" and mode == GenerationMode.POSITIVE:
        # a generated `model` is nearly always unknown (a 404): name a pipeline in half the
        # cases, so the runs themselves (JSON and streamed) are checked too
        strategy = st.one_of(strategy, strategy.map(_known_model))

    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(timeout=20, excluded_checks=excluded)

    excluded = _excluded(label)

    check()


@pytest.mark.parametrize("label", OPERATIONS)
def test_the_coverage_phase_finds_nothing(live: Live, label: str) -> None:
    """Schemathesis's deterministic coverage phase: boundary values of every field (minimum,
    maximum, just outside), missing and extra members, wrong types, unexpected HTTP methods."""
    operation = live.schema.find_operation_by_label(label)
    assert operation is not None, label
    cases = list(
        live.schema.iter_coverage_cases(
            operation,
            generation_modes=list(GenerationMode),
            generation_config=live.schema.config.generation_for(operation=operation),
        )
    )
    assert len(cases) >= 9  # 2 valid ones and 7 unexpected methods at least
    failures = []
    for case in cases:
        try:
            case.call_and_validate(timeout=20, excluded_checks=_excluded(label))
        except (AssertionError, FailureGroup) as exc:  # how schemathesis reports failures
            failures.append(str(exc)[:1500])
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(
        failures[:3]
    )
