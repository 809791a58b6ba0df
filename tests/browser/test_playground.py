"""The playground, /docs and /redoc in a real chromium against a live loopback server."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx

from tests.browser.conftest import AXE_JS, serve

TIMEOUT_MS = 15_000


def open_playground(v: Any, base: str) -> Any:
    page = v.page
    page.goto(f"{base}/")
    page.get_by_role("link", name="Playground").click()
    page.wait_for_url(f"{base}/playground")
    page.get_by_label("Question").wait_for()
    return page


def ask(page: Any, question: str, image: Path | None = None, pipeline: str | None = None) -> None:
    if image is not None:
        page.set_input_files("#files", str(image))
    page.get_by_label("Question").fill(question)
    if pipeline:
        page.get_by_label("Pipeline").select_option(pipeline)
    page.get_by_role("button", name="Run", exact=True).click()


def roles(page: Any, panel: str = ".run") -> list[str]:
    return page.eval_on_selector_all(f"{panel} .step", "els => els.map(e => e.dataset.role)")


def test_a_run_streams_the_trace_live(visit, live, shapes_png: Path, artifacts: Path) -> None:
    v = visit()
    page = open_playground(v, live.url)
    ask(page, "Is the red square left of the blue circle?", shapes_png)
    assert page.locator("#thumbs img").count() == 1

    # live: the first step is drawn while the run is still going (no answer yet)
    page.wait_for_selector(".run .step", timeout=TIMEOUT_MS)
    assert page.locator(".run .final").is_hidden()
    page.wait_for_selector(".run[data-state=done]", timeout=TIMEOUT_MS)

    assert roles(page) == ["dispatcher", "vision", "referee", "summarizer"]
    dispatcher = page.locator(".step[data-role=dispatcher]")
    assert "Expert" in dispatcher.inner_text() and "vision" in dispatcher.inner_text()
    assert "Which shapes are visible?" in dispatcher.inner_text()
    assert "solvable: yes" in page.locator(".step[data-role=referee]").inner_text()
    assert "tokens" in page.locator(".step[data-role=vision] .meta").inner_text()
    final = page.locator(".run .final")
    assert "red square is left of the blue circle" in final.locator(".answer-text").inner_text()
    assert "stop reason: solved" in final.inner_text()
    assert page.locator(".gantt .bar").count() == 4

    page.get_by_role("button", name="Copy as curl").click()
    curl = page.locator("#snippet").inner_text()
    assert f"{live.url}/v1/reason/upload" in curl and "files=@shapes.png" in curl
    page.get_by_role("button", name="Copy as Python (openai client)").click()
    py = page.locator("#snippet").inner_text()
    assert "client.chat.completions.create(" in py and 'model="proreason"' in py
    assert f'base_url="{live.url}/v1"' in py and 'data_url("shapes.png", "image/png")' in py
    compile(py, "snippet.py", "exec")  # valid Python

    page.screenshot(path=str(artifacts / "playground.png"), full_page=True)
    assert v.off_loopback() == [] and v.blocked == []
    assert v.console_errors == []


def test_compare_direct_and_proreason_side_by_side(visit, live, shapes_png: Path) -> None:
    v = visit()
    page = open_playground(v, live.url)
    page.set_input_files("#files", str(shapes_png))
    page.get_by_label("Question").fill("Which shapes are there?")
    page.get_by_role("button", name="Compare direct vs ProReason").click()
    for pipeline in ("direct", "proreason"):
        page.wait_for_selector(
            f".run[data-pipeline={pipeline}][data-state=done]", timeout=TIMEOUT_MS
        )
    assert roles(page, ".run[data-pipeline=direct]") == ["direct"]
    assert roles(page, ".run[data-pipeline=proreason]")[-1] == "summarizer"
    assert "stop reason: baseline" in page.locator(".run[data-pipeline=direct] .final").inner_text()
    assert v.off_loopback() == []


DROP_AND_PASTE = """async (bytes) => {
    const file = (name) => new File([new Uint8Array(bytes)], name, {type: "image/png"});
    const dropped = new DataTransfer();
    dropped.items.add(file("dropped.png"));
    document.getElementById("drop").dispatchEvent(
        new DragEvent("drop", {dataTransfer: dropped, bubbles: true, cancelable: true}));
    const pasted = new DataTransfer();
    pasted.items.add(file("pasted.png"));
    document.dispatchEvent(
        new ClipboardEvent("paste", {clipboardData: pasted, bubbles: true, cancelable: true}));
}"""


def test_images_by_drop_paste_and_pick(visit, live, shapes_png: Path) -> None:
    page = open_playground(visit(), live.url)
    page.evaluate(DROP_AND_PASTE, list(shapes_png.read_bytes()))
    page.set_input_files("#files", str(shapes_png))
    names = page.locator("#thumbs span").all_inner_texts()
    assert names == ["dropped.png", "pasted.png", "shapes.png"]
    page.get_by_role("button", name="Remove image 2 (pasted.png)").click()
    assert page.locator("#thumbs span").all_inner_texts() == ["dropped.png", "shapes.png"]
    ask(page, "Which shapes are there?")
    page.wait_for_selector(".run[data-state=done]", timeout=TIMEOUT_MS)
    assert "stop reason: solved" in page.locator(".run .final").inner_text()
    page.get_by_role("button", name="Copy as curl").click()
    curl = page.locator("#snippet").inner_text()
    assert "files=@dropped.png" in curl and "files=@shapes.png" in curl


def test_a_bad_image_is_a_plain_400(visit, live, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not a png")
    page = open_playground(visit(), live.url)
    ask(page, "What is this?", broken)
    page.wait_for_selector(".run[data-state=error]", timeout=TIMEOUT_MS)
    error = page.locator(".run .error")
    assert page.locator(".run").get_attribute("data-status") == "400"
    assert "HTTP 400 invalid_request_error" in error.inner_text()
    assert "request id" in error.inner_text()


def test_accessibility_has_no_serious_violations(visit, live, shapes_png: Path) -> None:
    v = visit(bypass_csp=True)  # lets the test inject axe; the page itself loads only its files
    page = open_playground(v, live.url)
    ask(page, "Is the red square left of the blue circle?", shapes_png)
    page.wait_for_selector(".run[data-state=done]", timeout=TIMEOUT_MS)
    page.get_by_role("button", name="Copy as curl").click()
    page.add_script_tag(path=str(AXE_JS))
    violations = page.evaluate(
        """async () => (await axe.run(document, {resultTypes: ['violations']})).violations
             .map(v => ({id: v.id, impact: v.impact, help: v.help,
                         nodes: v.nodes.map(n => n.target.join(' '))}))"""
    )
    bad = [x for x in violations if x["impact"] in ("serious", "critical")]
    assert bad == [], json.dumps(bad, indent=1)
    # every control can be reached by Tab and is labelled
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
             .filter(e => !e.labels?.length && !e.getAttribute('aria-label')
                          && !e.textContent.trim())
             .map(e => e.id)"""
    )
    assert unlabelled == []


def test_keyboard_only_run(visit, live) -> None:
    page = open_playground(visit(), live.url)
    page.get_by_label("Question").focus()
    page.keyboard.type("What is shown?")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(".run[data-state=done]", timeout=TIMEOUT_MS)
    assert "stop reason: no_image_direct" in page.locator(".run .final").inner_text()


def test_api_key_error_then_key_kept_in_the_tab(visit, shapes_png: Path, artifacts) -> None:
    with serve(api_keys="sekret") as server:
        v = visit()
        page = open_playground(v, server.url)
        ask(page, "Is the red square left of the blue circle?", shapes_png)
        page.wait_for_selector(".run[data-state=error]", timeout=TIMEOUT_MS)
        error = page.locator(".run .error").inner_text()
        assert "HTTP 401" in error and "Enter a valid API key above." in error
        page.screenshot(path=str(artifacts / "playground-401.png"), full_page=True)

        page.get_by_label("API key").fill("sekret")
        page.get_by_label("API key").dispatch_event("change")
        page.get_by_role("button", name="Run", exact=True).click()
        page.wait_for_selector(".run[data-state=done]", timeout=TIMEOUT_MS)
        assert page.evaluate("sessionStorage.getItem('proreason.apiKey')") == "sekret"
        page.get_by_role("button", name="Copy as curl").click()
        curl = page.locator("#snippet").inner_text()
        assert "$PROREASON_API_KEY" in curl and "sekret" not in curl  # never the key itself
        assert page.evaluate("localStorage.length") == 0
        page.reload()
        assert page.get_by_label("API key").input_value() == "sekret"
        assert v.off_loopback() == []


def test_overload_is_a_plain_429(visit, shapes_png: Path, artifacts) -> None:
    with serve(delay=3.0, max_in_flight=1) as server:
        hold = threading.Thread(
            target=lambda: httpx.post(
                f"{server.url}/v1/reason", json={"question": "hold the slot"}, timeout=30
            )
        )
        hold.start()
        try:
            page = open_playground(visit(), server.url)
            page.wait_for_timeout(300)  # the held question is admitted first
            ask(page, "Is the red square left of the blue circle?", shapes_png)
            page.wait_for_selector(".run[data-state=error]", timeout=TIMEOUT_MS)
            error = page.locator(".run .error").inner_text()
            assert page.locator(".run").get_attribute("data-status") == "429"
            assert "rate_limit_error" in error and "Retry after" in error
            page.screenshot(path=str(artifacts / "playground-429.png"), full_page=True)
        finally:
            hold.join(timeout=30)


def test_deadline_shows_the_partial_trace(visit, shapes_png: Path) -> None:
    with serve(delay={"referee": 5.0, "dispatcher": 0.1, "vision": 0.1}, request_timeout_s=1) as s:
        page = open_playground(visit(), s.url)
        ask(page, "Is the red square left of the blue circle?", shapes_png)
        page.wait_for_selector(".run[data-state=error]", timeout=TIMEOUT_MS)
        error = page.locator(".run .error").inner_text()
        assert "timeout_error" in error and "deadline" in error.lower()
        assert roles(page)[:2] == ["dispatcher", "vision"]


def test_docs_and_redoc_render_offline(visit, live, artifacts: Path) -> None:
    v = visit()
    page = v.page
    page.goto(f"{live.url}/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=TIMEOUT_MS)
    assert "/v1/reason" in page.locator(".swagger-ui").inner_text()
    page.screenshot(path=str(artifacts / "docs.png"))
    page.goto(f"{live.url}/redoc")
    page.locator("h2", has_text="Answer a question about images").first.wait_for(timeout=TIMEOUT_MS)
    page.screenshot(path=str(artifacts / "redoc.png"))
    # ReDoc's sidebar asks for its logo on the vendor's CDN: the page's CSP stops it in the browser
    assert v.off_loopback() == []
    assert all("redoc" in u for u in v.blocked), v.blocked
    assert any(u.endswith("/docs-assets/swagger-ui-bundle.js") for u in v.requests)
