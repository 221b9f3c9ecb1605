"""The demo page and POST /explain on a real `bertclf serve` on 127.0.0.1, and the page in a real browser:
headless Debian Chromium driven by Selenium through chromedriver types a review and sees the label, the bars
and the shaded words. The screenshot is kept in the test's tmp dir (and in $BERTCLF_ARTIFACTS, if set)."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("captum")

from _server_process import ServerProcess  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LIMITS = {"max_chars": 300, "max_body_bytes": 4096}
FUZZ_EXAMPLES = int(os.environ.get("BERTCLF_FUZZ_EXAMPLES", "200")) // 5  # each explain is ~32 forward+backward
REVIEW = "배우들 연기가 정말 최고였다!! 스토리는 좀 지루했지만 또 보고 싶다"


class Server(ServerProcess):
    """`python -m bertclf serve DIR --port 0` on 127.0.0.1 (tests/support/_server_process.py), with an httpx client."""

    def __init__(self, model_dir: Path, tmp: Path):
        super().__init__(model_dir, tmp, [f"--{k.replace('_', '-')}={v}" for k, v in LIMITS.items()])
        self.client = httpx.Client(base_url=self.url, timeout=120)

    def stop(self) -> None:
        self.client.close()
        self.terminate(timeout=30)
        assert "Traceback" not in self.err.read_text()


@pytest.fixture(scope="module")
def server(trained_tiny_dir, tmp_path_factory):
    s = Server(trained_tiny_dir, tmp_path_factory.mktemp("demo-serve"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def card(trained_tiny_dir) -> dict:
    return json.loads((trained_tiny_dir / "bertclf.json").read_text())


# ---------------------------------------------------------------- the page over HTTP

def test_page_is_self_contained_and_shows_the_card(server, card):
    r = server.client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    # nothing to fetch from elsewhere: no external scripts, styles, fonts or images (works offline)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html, re.I), "page links off the server"
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//|@import", html, re.I)
    assert "<script src" not in html and "<link rel=\"stylesheet\"" not in html
    test = card["metrics"]["test"]
    assert f"accuracy {100 * test['accuracy']:.1f}%" in html and f"on {test['n']:,} rows" in html
    assert f"{card['data']['train']['rows']:,} rows of train.tsv" in html
    config = json.loads(re.search(r'<script id="config" type="application/json">(.*?)</script>', html, re.S)[1])
    assert config["labels"] == card["labels"] and config["explain"] is True and config["multi_label"] is False
    assert config["max_chars"] == LIMITS["max_chars"]


def test_card_text_is_escaped(trained_tiny_dir, tmp_path):
    from bertclf.serve.demo import render_page
    from bertclf.inference.classifier import Classifier

    model = tmp_path / "model"
    shutil.copytree(trained_tiny_dir, model)
    card = json.loads((model / "bertclf.json").read_text())
    card["base_model"] = "<img src=x onerror=alert(1)>"
    card["labels"] = ["</script><script>alert(2)</script>", "1"]
    (model / "bertclf.json").write_text(json.dumps(card))
    clf = Classifier.load(str(model))
    clf.labels = card["labels"]
    html = render_page(clf, str(model), "softmax", 100, 32)
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "</script><script>alert(2)" not in html  # tojson escapes < and > inside the config script


def test_explain_over_http(server, trained_tiny_dir):
    from bertclf.inference.classifier import Classifier

    pred = server.client.post("/predict", json={"inputs": REVIEW}).json()[0]
    r = server.client.post("/explain", json={"inputs": REVIEW})
    assert r.status_code == 200, r.text
    ex = r.json()
    # the words explain the encoder (an n-gram partner's share of the blend has no gradients): its own label and score
    encoder = Classifier.load(str(trained_tiny_dir), ngram=False).predict(REVIEW)
    assert ex["component"].startswith("encoder")
    assert ex["label"] == encoder["label"] and abs(ex["score"] - encoder["score"]) < 1e-4
    assert [w["token"] for w in ex["tokens"]] == REVIEW.split()
    assert all(REVIEW[w["start"]:w["end"]] == w["token"] for w in ex["tokens"])
    other = pred[1]["label"]
    ex2 = server.client.post("/explain", json={"inputs": REVIEW, "parameters": {"target": other, "steps": 8}}).json()
    assert ex2["label"] == other and ex2["steps"] == 8


def test_predictions_during_explanations_are_unchanged(server):
    """/explain runs the model on its own thread next to the micro-batcher: the answers of /predict, sent while
    explanations run, are the same as when nothing else runs."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [REVIEW, "시간 아깝다", "정말 재밌어요", "그냥 그랬다"]
    alone = server.client.post("/predict", json={"inputs": texts}).json()
    with ThreadPoolExecutor(4) as pool:
        explains = [pool.submit(server.client.post, "/explain", json={"inputs": t, "parameters": {"steps": 64}})
                    for t in texts[:3]]
        during = [pool.submit(server.client.post, "/predict", json={"inputs": texts}) for _ in range(12)]
        assert all(f.result().status_code == 200 for f in explains)
        for f in during:
            got = f.result().json()
            for a, b in zip(alone, got):
                assert [d["label"] for d in a] == [d["label"] for d in b]
                assert all(abs(x["score"] - y["score"]) < 1e-5 for x, y in zip(a, b)), (a, b)


@pytest.mark.parametrize("body, status, words", [
    ({"inputs": ["a", "b"]}, 422, "one text"),
    ({"inputs": ""}, 422, "empty"),
    ({"inputs": "x" * (LIMITS["max_chars"] + 1)}, 422, "--max-chars"),
    ({"inputs": "좋다", "parameters": {"target": "nope"}}, 422, "parameters.target"),
    ({"inputs": "좋다", "parameters": {"steps": 100000}}, 422, "parameters.steps"),
    ({"inputs": "좋다", "parameters": {"top_k": 1}}, 422, "parameters.top_k"),
    ({"inputs": "가" * 2000}, 413, "--max-body-bytes"),
])
def test_explain_applies_the_servers_limits(server, body, status, words):
    r = server.client.post("/explain", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_openapi_documents_the_page_and_explain(server):
    spec = server.client.get("/openapi.json").json()
    assert "text/html" in spec["paths"]["/"]["get"]["responses"]["200"]["content"]
    assert {"200", "422", "501", "503"} <= set(spec["paths"]["/explain"]["post"]["responses"])


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzz_explain_from_the_published_spec(server, mode):
    """Requests generated from /openapi.json (valid ones, and ones that break it): no 5xx, answers as documented,
    valid requests accepted, invalid ones rejected. (tests/serve/test_serve_fuzz.py does the same for /predict.)"""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import (content_type_conformance, negative_data_rejection, not_a_server_error,
                                     positive_data_acceptance, response_schema_conformance, status_code_conformance)

    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              positive_data_acceptance, negative_data_rejection]
    statuses: dict[int, int] = {}

    @given(case=schema["/explain"]["POST"].as_strategy(generation_mode=GenerationMode(mode)))
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case):
        r = case.call_and_validate(checks=checks, timeout=120)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    fuzz()
    assert sum(statuses.values()) >= FUZZ_EXAMPLES // 2, statuses
    assert (200 in statuses) if mode == "positive" else (200 not in statuses), statuses
    page = server.client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


# ---------------------------------------------------------------- ONNX: no gradients

def test_onnx_server_says_explain_needs_the_torch_model(trained_tiny_dir, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from bertclf.export.onnx_export import export_onnx

    onnx_dir = tmp_path_factory.mktemp("demo-onnx") / "model"
    export_onnx(str(trained_tiny_dir), str(onnx_dir), log=lambda s: None)
    s = Server(onnx_dir, tmp_path_factory.mktemp("demo-onnx-serve"))
    try:
        r = s.client.post("/explain", json={"inputs": REVIEW})
        assert r.status_code == 501
        msg = r.json()["error"]
        assert "explain needs the torch model" in msg and str(Path(trained_tiny_dir).resolve()) in msg
        page = s.client.get("/").text
        assert '"explain": false' in page and "runs on</dt><dd>onnx" in page
        assert s.client.post("/predict", json={"inputs": REVIEW}).status_code == 200
    finally:
        s.stop()


# ---------------------------------------------------------------- a real browser

@pytest.fixture(scope="module")
def browser():
    from headless_chromium import chromium_driver  # tests/support

    with chromium_driver() as driver:
        yield driver


def test_browser_types_a_review_and_sees_label_bars_and_shaded_words(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url + "/")
    assert "bertclf demo" in browser.title
    facts = browser.find_element(By.ID, "facts").text
    assert "test scores" in facts and "accuracy" in facts
    box = browser.find_element(By.ID, "text")
    box.send_keys(REVIEW)
    box.send_keys(Keys.CONTROL, Keys.ENTER)
    WebDriverWait(browser, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#shaded .word"))

    expect = server.client.post("/predict", json={"inputs": REVIEW}).json()[0]
    assert browser.find_element(By.CSS_SELECTOR, "#label .name").text == expect[0]["label"]
    bars = browser.find_elements(By.CSS_SELECTOR, "#bars .bar")
    assert [b.get_attribute("data-label") for b in bars] == [e["label"] for e in expect]
    track = bars[0].find_element(By.CSS_SELECTOR, ".track").size["width"]
    for bar, e in zip(bars, expect):
        fill = bar.find_element(By.CSS_SELECTOR, ".fill").size["width"]
        assert abs(fill / track - e["score"]) < 0.02, (bar.get_attribute("data-label"), fill, track, e)

    words = browser.find_elements(By.CSS_SELECTOR, "#shaded .word")
    assert [w.text for w in words] == REVIEW.split()
    assert browser.find_element(By.ID, "shaded").text == REVIEW  # the text as typed, gaps and all
    scores = [float(w.get_attribute("data-score")) for w in words]
    colours = [w.value_of_css_property("background-color") for w in words]
    for score, colour in zip(scores, colours):
        r, g, b, a = (float(x) for x in re.findall(r"[\d.]+", colour))
        assert a > 0.05, colour
        assert (g > r) if score > 0 else (r > g), (score, colour)  # green toward the label, red against
    strongest = max(range(len(scores)), key=lambda i: abs(scores[i]))
    alphas = [float(re.findall(r"[\d.]+", c)[3]) for c in colours]
    assert alphas[strongest] == max(alphas)
    assert browser.find_element(By.ID, "status").text == ""

    # clicking the other label's bar explains that label: two softmax labels, so every score flips sign
    bars[1].find_element(By.CSS_SELECTOR, ".track").click()
    WebDriverWait(browser, 120).until(lambda d: d.find_element(By.ID, "why-label").text == expect[1]["label"])
    flipped = [float(w.get_attribute("data-score")) for w in browser.find_elements(By.CSS_SELECTOR, "#shaded .word")]
    assert flipped == pytest.approx([-x for x in scores], abs=1e-5)
    bars[0].find_element(By.CSS_SELECTOR, ".name").click()
    WebDriverWait(browser, 120).until(lambda d: d.find_element(By.ID, "why-label").text == expect[0]["label"])

    # only this server was asked for anything
    urls = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert urls and all(u.startswith(server.url + "/") for u in urls), urls

    shot = tmp_path / "demo.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    if os.environ.get("BERTCLF_ARTIFACTS"):
        Path(os.environ["BERTCLF_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(os.environ["BERTCLF_ARTIFACTS"]) / "demo.png")
