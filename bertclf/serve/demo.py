"""The browser side of `bertclf serve`: GET / (a self-contained demo page) and POST /explain.

    POST /explain  {"inputs": "text", "parameters": {"target": LABEL, "steps": N}}
                   -> 200 {"label", "score", "tokens": [{"token", "score", "start", "end"}, ...], "truncated", ...}
                      word attributions from bertclf.inference.explain (positive = pushed toward the label)
                   a sentence-pair model: {"inputs": {"text": ..., "text_pair": ...}, ...}
                   -> 200 the same, "tokens" the first text's words, "tokens_pair" (and "truncated_pair") the second's
                   -> 422 not one text (pair), empty, over --max-chars, unknown target, steps out of range
                   -> 501 the server runs an ONNX export (no gradients) / 503 too many explanations queued

The page is one HTML file from templates/demo.html (Jinja2, autoescaped) with its CSS and JavaScript inline,
so it works with no network; it calls /predict and /explain on the same server.
"""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Optional

from bertclf.inference import explain as explain_mod
from bertclf.errors import UserError

TEMPLATES = Path(__file__).parent / "templates"
MAX_PENDING_EXPLAINS = 4  # explanations are ~steps times dearer than predictions: queue few, answer 503 beyond


def _pct(x) -> str | None:
    return f"{100 * x:.1f}%" if isinstance(x, (int, float)) else None


def card_facts(clf, model_dir: str | None) -> list[tuple[str, str]]:
    """(name, value) pairs worth showing about the model, from its card (bertclf.json); missing ones are skipped."""
    card = clf.card or {}
    data, metrics, training = card.get("data") or {}, card.get("metrics") or {}, card.get("training") or {}
    facts = [("model", str(model_dir or clf.path or "")), ("base model", card.get("base_model")),
             ("labels", ", ".join(map(str, clf.labels)))]
    if card.get("multi_label"):
        facts.append(("multi-label", f"yes: every label over its threshold ({_threshold_text(card)})"))
    train = data.get("train") or {}
    if train.get("rows"):
        facts.append(("trained on", f"{train['rows']:,} rows of {Path(str(train.get('source', '?'))).name}"))
    for split in ("test", "valid"):
        rep = metrics.get(split) or {}
        if rep.get("accuracy") is not None:
            where = "test" if split == "test" else "validation"
            facts.append((f"{where} scores", f"accuracy {_pct(rep['accuracy'])}, macro-F1 {_pct(rep.get('macro_f1'))} "
                                             f"on {rep.get('n', '?'):,} rows"))
            break
    if training.get("steps"):
        wall = training.get("wall_time_s") or 0
        took = f"{wall / 60:.1f} min" if wall >= 60 else f"{wall:.0f} s"
        epochs = training.get("epochs") or 0
        facts.append(("training", f"{training['steps']:,} steps, {epochs:.2g} epoch{'' if epochs == 1 else 's'} on "
                                  f"{training.get('device', '?')}, {took}"))
    if card.get("max_length"):
        facts.append(("max tokens", str(card["max_length"])))
    export = card.get("export") or {}
    backend = getattr(clf, "backend", "torch")
    facts.append(("runs on", f"{backend}" + (" (int8)" if export.get("int8") else "")))
    return [(k, str(v)) for k, v in facts if v not in (None, "")]


def _threshold_text(card: dict) -> str:
    t = card.get("thresholds") or card.get("threshold", 0.5)
    return ", ".join(f"{k} {v:g}" for k, v in t.items()) if isinstance(t, dict) else f"{float(t):g}"


def page_config(clf, default_fn: str, max_chars: int, explain_steps: int) -> dict:
    """What the page's script needs, handed over as JSON inside the page."""
    card = clf.card or {}
    multi = explain_mod.is_multi_label(clf)
    thresholds = card.get("thresholds") or {}
    default_t = float(card.get("threshold", 0.5))
    return {"labels": list(map(str, clf.labels)), "multi_label": multi, "function_to_apply": default_fn,
            "thresholds": {lab: float(thresholds.get(lab, default_t)) for lab in map(str, clf.labels)},
            "max_chars": max_chars, "pair": getattr(clf, "pair_col", None) is not None,
            # word scores: the torch model's gradients (an ONNX export has none); a pair's on both texts
            "explain": getattr(clf, "backend", "torch") == "torch",
            "explain_steps": explain_steps}


def render_page(clf, model_dir: str | None, default_fn: str, max_chars: int, explain_steps: int) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    title = Path(str(model_dir or clf.path or "model")).name
    return env.get_template("demo.html").render(
        title=title, facts=card_facts(clf, model_dir), backend=getattr(clf, "backend", "torch"),
        config=page_config(clf, default_fn, max_chars, explain_steps))


def add_demo_routes(app, clf, *, model_dir: str | None, default_fn: str, max_chars: int,
                    explain_steps: int = explain_mod.DEFAULT_STEPS,
                    explain_max_tokens: int = explain_mod.DEFAULT_MAX_TOKENS):
    """Add GET / and POST /explain to the serve app; returns a function that stops the explain worker."""
    from fastapi.responses import HTMLResponse, JSONResponse

    page = render_page(clf, model_dir, default_fn, max_chars, explain_steps)  # the card does not change: once
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bertclf-explain")
    state = {"pending": 0, "stopped": False}
    models = explain_models(list(map(str, clf.labels)), max_chars=max_chars, explain_steps=explain_steps,
                            pairs=getattr(clf, "pair_col", None) is not None)
    ExplainRequest, ExplainParameters, ErrorBody = models.ExplainRequest, models.ExplainParameters, models.ErrorBody

    def error(status: int, message: str, headers: dict | None = None):
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.get("/", response_class=HTMLResponse, summary="demo page: type a text, see labels and the words behind them")
    async def demo_page():
        return HTMLResponse(page)

    @app.post("/explain", response_model=models.Explanation,
              summary="which words pushed the prediction toward a label",
              description="Captum Integrated Gradients on the input embeddings, summed into the text's words. "
                          "One text per request; slower than /predict by about `steps` times.",
              responses={400: {"model": ErrorBody, "description": "the body is not (valid) JSON"},
                         413: {"model": ErrorBody, "description": "the body is larger than the server's limit"},
                         422: {"model": ErrorBody, "description": "not one text (a pair model: one pair), empty, "
                                                                  "too long, unknown target"},
                         501: {"model": ErrorBody, "description": "the server runs an ONNX export: no gradients"},
                         503: {"model": ErrorBody, "description": "too many explanations queued; retry"}})
    async def explain_route(req: ExplainRequest):
        p = req.parameters or ExplainParameters()
        try:
            explain_mod.require_torch(clf)
        except UserError as e:
            return error(501, str(e))
        if state["stopped"]:
            return error(503, "the server is shutting down")
        if state["pending"] >= MAX_PENDING_EXPLAINS:
            return error(503, f"server busy: {state['pending']} explanations queued; retry shortly",
                         {"Retry-After": "2"})
        state["pending"] += 1
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                worker, lambda: explain_mod.explain(clf, _classifier_input(req.inputs), target=p.target,
                                                    steps=p.steps or explain_steps, max_tokens=explain_max_tokens))
        except UserError as e:
            return error(422, str(e))
        except RuntimeError as e:
            return error(500, f"model error: {type(e).__name__}: {e}")
        finally:
            state["pending"] -= 1
        return JSONResponse(result)

    def stop():
        state["stopped"] = True
        worker.shutdown(wait=False, cancel_futures=True)

    return stop


def _classifier_input(inputs):
    """The Classifier's form of a request's input: a text, or a pair {"text", "text_pair"} as (text, text_pair)."""
    return (inputs["text"], inputs["text_pair"]) if isinstance(inputs, dict) else inputs


def explain_models(labels: list[str], *, max_chars: int, explain_steps: int, pairs: bool = False) -> SimpleNamespace:
    """Pydantic models of POST /explain for this model's labels and the server's limits:
    ExplainParameters, ExplainRequest, Word, Explanation, ErrorBody. pairs: the model reads sentence pairs, one
    {"text": ..., "text_pair": ...} per request."""
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field, field_validator
    from pydantic.json_schema import WithJsonSchema

    from bertclf.serve.schema import check_inputs, pair_schema

    class ExplainParameters(BaseModel):
        model_config = ConfigDict(extra="forbid")
        target: Optional[Literal[tuple(labels)]] = Field(  # type: ignore[valid-type]
            None, description="label to explain (default: the predicted one)")
        steps: Optional[Annotated[int, Field(strict=True, ge=1, le=explain_mod.MAX_STEPS)]] = Field(
            None, description=f"Integrated Gradients steps (default {explain_steps}); the cost grows with it")

        @field_validator("steps", mode="before")
        @classmethod
        def _integral_number(cls, v):  # JSON Schema counts 2.0 as an integer, as /predict's top_k does
            return int(v) if isinstance(v, float) and v.is_integer() else v

    class ExplainRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        inputs: Annotated[Any, WithJsonSchema(
            {**pair_schema(max_chars), "description": 'one sentence pair {"text": ..., "text_pair": ...}'} if pairs
            else {"type": "string", "minLength": 1, "maxLength": max_chars, "description": "one text"})]
        parameters: Optional[ExplainParameters] = None

        @field_validator("inputs", mode="before")
        @classmethod
        def _one_text(cls, v):
            if pairs or isinstance(v, dict):  # the /predict checks, naming the side (inputs.text_pair) at fault
                if not isinstance(v, (dict, str)):
                    raise ValueError('inputs must be one sentence pair {"text": ..., "text_pair": ...}: /explain '
                                     'explains one pair per request')
                return check_inputs(v, max_texts=1, max_chars=max_chars, pairs=pairs)
            if not isinstance(v, str):
                raise ValueError("inputs must be one text (a string): /explain explains one text per request")
            if not v:
                raise ValueError("inputs is empty; send some text to explain")
            if len(v) > max_chars:
                raise ValueError(f"inputs has {len(v)} characters; the limit is {max_chars} (--max-chars)")
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("inputs is not valid Unicode (it holds a lone surrogate such as \\ud800)") from None
            return v

    class Word(BaseModel):
        token: str = Field(description="a whitespace-separated word of the text, as written")
        score: float = Field(description="its share of p(label) - p(label | baseline); > 0 pushed toward the label")
        start: int
        end: int

    class Explanation(BaseModel):
        label: str
        score: float = Field(description="probability of the label for the text")
        baseline_score: float = Field(description="probability of the label with every word replaced by padding")
        tokens: list[Word] = Field(description="the words of the text (a pair: of its first text)")
        truncated: bool = Field(description="the text was cut at max_tokens; later words are not scored")
        tokens_pair: Optional[list[Word]] = Field(None, description="a pair model's: the words of the second text")
        truncated_pair: Optional[bool] = Field(None, description="a pair model's: the second text was cut")
        steps: int
        max_tokens: int
        convergence_delta: float
        method: str
        component: str = Field(description="what the words explain: the encoder (with an n-gram partner, its "
                                           "share of the blend is not attributed)")

    class ErrorBody(BaseModel):
        error: str

    return SimpleNamespace(ExplainParameters=ExplainParameters, ExplainRequest=ExplainRequest, Word=Word,
                           Explanation=Explanation, ErrorBody=ErrorBody)
