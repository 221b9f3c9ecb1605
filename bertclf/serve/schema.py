"""The JSON shapes of `bertclf serve`'s API: the /predict request (with the server's limits in it, so the
published OpenAPI spec states them), the responses, and one-line messages for requests that do not fit."""
import json
from types import SimpleNamespace
from typing import Annotated, Any, Literal, Optional, Union


def one_text_schema(max_chars: int) -> dict:
    """JSON Schema of one text within the server's limit. A text of only whitespace is empty, as for predict and
    eval (bertclf.data.dataset.is_empty_text: Python's str.isspace, which also counts U+001C-U+001F and U+0085,
    unlike the JSON Schema regex \\s)."""
    return {"type": "string", "minLength": 1, "maxLength": max_chars, "pattern": "[^\\s\\u001c-\\u001f\\u0085]"}


def pair_schema(max_chars: int) -> dict:
    """JSON Schema of one sentence pair in the Inference API's form {"text": ..., "text_pair": ...}."""
    text = one_text_schema(max_chars)
    return {"type": "object", "properties": {"text": text, "text_pair": text}, "required": ["text", "text_pair"],
            "additionalProperties": False}


def api_models(*, max_texts: int, max_chars: int, default_fn: str, pairs: bool = False) -> SimpleNamespace:
    """Pydantic models for this server's limits: Parameters, PredictRequest, LabelScore, ErrorBody, Health, Info.
    pairs: the model reads sentence pairs, sent in the Inference API's form {"text": ..., "text_pair": ...}."""
    from pydantic import BaseModel, ConfigDict, Field, field_validator
    from pydantic.json_schema import WithJsonSchema

    text_schema = one_text_schema(max_chars)
    inputs_schema = {
        "anyOf": [text_schema, {"type": "array", "items": text_schema, "minItems": 1, "maxItems": max_texts}],
        "title": "Inputs",
        "description": f"a text, or a list of 1 to {max_texts} texts; each 1 to {max_chars} characters",
    }
    if pairs:
        pair = pair_schema(max_chars)
        inputs_schema = {
            "anyOf": [pair, {"type": "array", "items": pair, "minItems": 1, "maxItems": max_texts}],
            "title": "Inputs",
            "description": f'a sentence pair {{"text": ..., "text_pair": ...}}, or a list of 1 to {max_texts} pairs; '
                           f"each text 1 to {max_chars} characters"}

    class Parameters(BaseModel):
        model_config = ConfigDict(extra="forbid", title="TextClassificationParameters")
        top_k: Optional[Annotated[int, Field(strict=True, ge=1)]] = Field(
            None, description="return only the k best labels (default: every label)")
        function_to_apply: Optional[Literal["softmax", "sigmoid", "none"]] = Field(
            None, description=f"how logits become scores; 'none' gives raw logits (default: {default_fn})")

        @field_validator("top_k", mode="before")
        @classmethod
        def _integral_number(cls, v):
            # JSON Schema, and so the published spec, counts 2.0 as an integer: accept it. 1.5, "2", true: still 422.
            return int(v) if isinstance(v, float) and v.is_integer() else v

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", title="TextClassificationRequest")
        inputs: Annotated[Any, WithJsonSchema(inputs_schema)]
        parameters: Optional[Parameters] = None
        options: Optional[dict[str, Any]] = Field(
            None, description="accepted for compatibility with old Inference API clients, and ignored")

        @field_validator("inputs", mode="before")
        @classmethod
        def _check_inputs(cls, v):
            return check_inputs(v, max_texts=max_texts, max_chars=max_chars, pairs=pairs)

    class LabelScore(BaseModel):
        label: str
        score: float

    class ErrorBody(BaseModel):
        error: str

    class Health(BaseModel):
        status: Literal["ok"]
        queued_texts: int

    class Info(BaseModel):
        model_config = ConfigDict(protected_namespaces=())
        task: Literal["text-classification"]
        model: Optional[str]
        backend: str
        labels: list[str]
        default_function_to_apply: str
        limits: dict[str, Union[int, float]]
        card: dict[str, Any]
        stats: dict[str, int]
        bertclf_version: str

    return SimpleNamespace(Parameters=Parameters, PredictRequest=PredictRequest, LabelScore=LabelScore,
                           ErrorBody=ErrorBody, Health=Health, Info=Info)


def check_inputs(v, *, max_texts: int, max_chars: int, pairs: bool = False):
    """`inputs` of a /predict request, unchanged if it is a text or a list of texts within the limits (pairs:
    a {"text", "text_pair"} object or a list of them); otherwise ValueError with what is wrong and where."""
    one = (dict, str) if pairs else (str, dict)  # a dict for a single-text model is refused below, by name
    if isinstance(v, one):
        texts, where = [v], lambda i: "inputs"
    elif isinstance(v, list):
        if not v:
            raise ValueError(f"inputs is an empty list; send at least one {'pair' if pairs else 'text'}")
        if len(v) > max_texts:
            raise ValueError(f"inputs has {len(v)} {'pairs' if pairs else 'texts'}; the limit is {max_texts} per "
                             f"request (--max-texts)")
        texts, where = v, lambda i: f"inputs[{i}]"
    else:
        shape = "a pair object or a list of them" if pairs else "a string or a list of strings"
        raise ValueError(f"inputs must be {shape}, not {_json_type(v)}")
    if pairs:
        texts, where = _pair_texts(texts, where)
    for i, t in enumerate(texts):
        if isinstance(t, dict):
            raise ValueError(f"{where(i)} is an object (a sentence pair?), but this model reads single texts (trained "
                             f"without --text-pair-col); send a string")
        if not isinstance(t, str):
            raise ValueError(f"{where(i)} must be a string, not {_json_type(t)}")
        if len(t) > max_chars:
            raise ValueError(f"{where(i)} has {len(t)} characters; the limit is {max_chars} (--max-chars)")
        if not t.strip():
            raise ValueError(f"{where(i)} is empty (or only whitespace); send some text to classify")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{where(i)} is not valid Unicode (it holds a lone surrogate such as "
                             "\\ud800)") from None
    return v


def _pair_texts(items: list, where) -> tuple[list, callable]:
    """The texts of pair objects, each with where it was (inputs[i].text_pair); ValueError for anything else."""
    texts, places = [], []
    for i, item in enumerate(items):
        if isinstance(item, str):
            raise ValueError(f"{where(i)} is a single text, but this model reads sentence pairs (trained with "
                             f'--text-pair-col); send {{"text": ..., "text_pair": ...}}')
        if not isinstance(item, dict):
            raise ValueError(f'{where(i)} must be an object {{"text": ..., "text_pair": ...}}, not {_json_type(item)}')
        if set(item) != {"text", "text_pair"}:
            other = sorted(set(item) - {"text", "text_pair"})
            raise ValueError(f"{where(i)}: " + (f"unknown field {_field_name(other[0])}" if other else
                                                 "needs both fields text and text_pair"))
        for side in ("text", "text_pair"):
            texts.append(item[side])
            places.append(f"{where(i)}.{side}")
    return texts, lambda k: places[k]


def _field_name(x) -> str:
    """A field name as sent by the client, safe for a one-line message: quoted and escaped when it holds a line
    break or another unprintable character (a key such as "\\n" must not break the error's one line)."""
    s = str(x)
    return s if s and s.isprintable() else json.dumps(s)


def validation_message(errors) -> str:
    parts = []
    for e in list(errors)[:3]:
        loc = [_field_name(x) for x in e.get("loc", ()) if x != "body"]
        msg = str(e.get("msg", "invalid"))
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if e.get("type") == "json_invalid":
            ctx = (e.get("ctx") or {}).get("error")
            msg = f"body is not valid JSON ({ctx})" if ctx else "body is not valid JSON"
            loc = []
        elif e.get("type") == "missing":
            msg = "field required" if loc else 'the body is empty; send a JSON object such as {"inputs": "text"}'
        elif e.get("type") in ("model_attributes_type", "model_type", "dict_type"):
            msg = ("must be a JSON object" if loc else 'the body must be a JSON object such as {"inputs": "text"} '
                   "(sent with Content-Type: application/json)")
        where = ".".join(loc)
        parts.append(f"{where}: {msg}" if loc and not msg.startswith(where) else msg)
    return "; ".join(parts) or "invalid request"


def _json_type(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return "a list"
    return type(v).__name__
