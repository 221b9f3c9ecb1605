"""Which words drove a prediction: Captum's Integrated Gradients on the input embeddings, summed into words.

    from bertclf import Classifier
    from bertclf.inference.explain import explain
    explain(Classifier.load("runs/nsmc"), "배우들 연기가 최고")
    # {"label": "positive", "score": 0.97, "tokens": [{"token": "배우들", "score": 0.05, "start": 0, "end": 3},
    #  {"token": "연기가", ...}, {"token": "최고", "score": 0.61, ...}], "truncated": false, ...}

A word's score is its share of p(label | text) - p(label | baseline), where the baseline keeps the special
tokens and replaces every other token by padding (Integrated Gradients' completeness: the scores add up to that
difference, up to `convergence_delta`). Positive pushed toward the label, negative away from it.

A sentence-pair model's pair is attributed whole, as the model reads it, and each piece's score goes to a word of
its own text: explain(clf, ("전제", "가설")) gives "tokens" (the first text's words) and "tokens_pair" (the second's).

Integrated Gradients runs on `inputs_embeds`, not through a hook on the embedding layer (Captum's
LayerIntegratedGradients): a hook would change the shared model under concurrent /predict batches in `serve`;
this way the model is only read. Cost is bounded: `steps` forward+backward passes over at most `max_tokens`
tokens, run `STEPS_PER_PASS` interpolation steps at a time.
"""
from __future__ import annotations

import bisect
import re
from pathlib import Path

import numpy as np

from bertclf.errors import UserError

DEFAULT_STEPS = 32     # Captum's default is 50; 32 keeps convergence deltas around 1e-2 at a third less cost
MAX_STEPS = 256
DEFAULT_MAX_TOKENS = 128
STEPS_PER_PASS = 16    # bounds activation memory: 16 copies of one text per forward pass


def require_torch(clf) -> None:
    """ONNX exports have no gradients: say which directory to use instead."""
    if getattr(clf, "backend", "torch") == "torch":
        return
    source = ((clf.card or {}).get("export") or {}).get("source")
    where = f"use the directory it was exported from ({source})" if source else \
        "use the trained (torch) model directory"
    raise UserError(f"{clf.path}: explain needs the torch model, and this is an ONNX export; {where}")


def is_multi_label(clf) -> bool:
    card = clf.card or {}
    return bool(card.get("multi_label")) or \
        getattr(getattr(clf.model, "config", None), "problem_type", None) == "multi_label_classification"


def words(text: str) -> list[tuple[int, int]]:
    """(start, end) of each whitespace-separated word: what a reader sees as a word, whatever the tokenizer
    splits off (BERT tokenizers make '!!' a word of its own; SentencePiece keeps it)."""
    return [m.span() for m in re.finditer(r"\S+", text)]


def merge_into_words(text: str, offsets: list[tuple[int, int]], piece_scores: np.ndarray,
                     truncated: bool = False) -> list[dict]:
    """Sum sub-word scores into the words of `text` by the tokenizer's character offsets. When the tokens were
    `truncated` (cut at max_tokens), the words after the last piece are left out; a word no piece covers (the
    tokenizer dropped its characters) scores 0."""
    spans = words(text)
    ends = [e for _, e in spans]
    totals = np.zeros(len(spans))
    last = -1
    for (s, e), score in zip(offsets, piece_scores):
        if e <= s:
            continue  # special tokens have empty offsets
        piece = text[s:e]
        lead = len(piece) - len(piece.lstrip())  # SentencePiece offsets include the space before a word
        i = bisect.bisect_right(ends, s + lead if lead < len(piece) else e)
        if i < len(spans):
            totals[i] += float(score)
            last = max(last, i)
    kept = spans[:last + 1] if truncated else spans
    return [{"token": text[s:e], "score": float(totals[i]), "start": s, "end": e} for i, (s, e) in enumerate(kept)]


def explain(clf, text, target: str | None = None, steps: int = DEFAULT_STEPS,
            max_tokens: int = DEFAULT_MAX_TOKENS) -> dict:
    """Word attributions for one text toward `target` (default: the encoder's predicted label). They explain the
    encoder: a model with an n-gram partner (bertclf/models/ngram.py) predicts the blend, whose n-gram side has no
    gradients to attribute, so label and score here are the encoder's own ("component": "encoder").

    A sentence-pair model explains one pair ((text, text_pair) or {"text": ..., "text_pair": ...}): the pair is
    attributed as the model reads it (the tokenizer's pair template, token type ids where the model has them) and
    each piece's score goes to the words of its own side: "tokens"/"truncated" are the first text's,
    "tokens_pair"/"truncated_pair" the second's."""
    require_torch(clf)
    if target is not None and target not in clf.labels:
        raise UserError(f"explain: target {target!r} is not a label of this model ({', '.join(clf.labels)})")
    if not 1 <= steps <= MAX_STEPS:
        raise UserError(f"explain: steps must be between 1 and {MAX_STEPS}, got {steps}")
    firsts, seconds = clf.split_inputs([text])  # a pair for a single-text model, or the other way round: one line
    first, second = firsts[0], None if seconds is None else seconds[0]
    limit = enc_limit(clf, max_tokens, second)
    enc = encode_for_explain(clf.tokenizer, first, second, limit)
    attributed = attribute(clf, enc, target, steps, pair=second is not None)
    t, probs = attributed["target"], attributed["probs"]
    result = {"label": clf.labels[t], "score": float(probs[t]), "baseline_score": float(attributed["base_probs"][t])}
    if second is None:
        truncated = bool(enc.encodings[0].overflowing)  # the fast tokenizer keeps what truncation cut off
        result.update(tokens=merge_into_words(first, enc["offset_mapping"], attributed["pieces"], truncated),
                      truncated=truncated)
    else:
        result.update(pair_words(clf.tokenizer, enc, first, second, attributed["pieces"]))
    return {**result, "steps": steps, "max_tokens": limit,
            "convergence_delta": attributed["delta"], "method": "captum.attr.IntegratedGradients",
            "component": "encoder" + (" (the n-gram partner's share of the blend is not attributed)"
                                      if getattr(clf, "partner", None) is not None else "")}


def enc_limit(clf, max_tokens: int, second: str | None) -> int:
    """Tokens the explanation reads at most: max_tokens within the model's max_length, and room for at least one
    piece of each text beside the special tokens."""
    least = 2 if second is None else clf.tokenizer.num_special_tokens_to_add(pair=True) + 2
    return max(least, min(max_tokens, clf.max_length))


def encode_for_explain(tokenizer, first: str, second: str | None, limit: int):
    """The fast tokenizer's encoding of a text, or of a pair by its pair template cut longest-first (as
    bertclf.data.tokens.encode_pairs cuts it for predict), with offsets and the special-tokens mask."""
    from bertclf.data.tokens import uses_token_types

    if second is None:
        return tokenizer(first, truncation=True, max_length=limit, return_offsets_mapping=True,
                         return_special_tokens_mask=True)
    return tokenizer(first, second, truncation="longest_first", max_length=limit, return_offsets_mapping=True,
                     return_special_tokens_mask=True, return_token_type_ids=uses_token_types(tokenizer))


def attribute(clf, enc, target: str | None, steps: int, pair: bool) -> dict:
    """Integrated Gradients of p(target) over the encoding's input embeddings: {"target" (its index), "probs",
    "base_probs", "pieces" (a score per token), "delta" (the convergence delta)}."""
    import torch

    try:
        from captum.attr import IntegratedGradients
    except ImportError:
        raise UserError("explain needs Captum, which is not installed; pip install 'bertclf[explain]'") from None

    model = clf.model
    device = next(model.parameters()).device
    ids = torch.tensor([enc["input_ids"]], device=device)
    special = torch.tensor([enc["special_tokens_mask"]], dtype=torch.bool, device=device)
    baseline_ids = torch.where(special, ids, torch.full_like(ids, clf.pad_id))
    # a pair's segment ids, the same along the whole path from baseline to input; a single text passes none
    types = torch.tensor([enc["token_type_ids"]], device=device) if pair and "token_type_ids" in enc else None
    multi = is_multi_label(clf)
    embed = model.get_input_embeddings()

    def probabilities(inputs_embeds):
        mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=device)
        extra = {} if types is None else {"token_type_ids": types.expand(inputs_embeds.shape[0], -1)}
        # the precision the classifier predicts in (on a CPU the model may be stored in it: precision.py); the
        # path from baseline to input is interpolated in fp32 and rounded to the model's dtype only here
        with torch.autocast(device.type, dtype=clf.autocast_dtype, enabled=clf.autocast_dtype is not None):
            logits = model(inputs_embeds=inputs_embeds.to(embed.weight.dtype), attention_mask=mask,
                           **extra).logits.float()
        return torch.sigmoid(logits) if multi else torch.softmax(logits, dim=-1)

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            inputs, baseline = embed(ids).float(), embed(baseline_ids).float()
            probs = probabilities(inputs)[0]
            base_probs = probabilities(baseline)[0]
        t = int(probs.argmax()) if target is None else clf.labels.index(target)
        attr, delta = IntegratedGradients(probabilities).attribute(
            inputs, baselines=baseline, target=t, n_steps=steps, internal_batch_size=STEPS_PER_PASS,
            return_convergence_delta=True)
    finally:
        model.train(was_training)
    return {"target": t, "probs": probs, "base_probs": base_probs, "delta": float(delta.abs().max()),
            "pieces": attr.sum(dim=-1)[0].detach().float().cpu().numpy()}


def pair_words(tokenizer, enc, first: str, second: str, piece_scores: np.ndarray) -> dict:
    """Each side's words with the scores of its own pieces (the encoding's sequence ids: 0 the first text, 1 the
    second; a piece's offsets are into its own text), and whether the pair's cut shortened that side."""
    sides = enc.sequence_ids(0)
    out = {}
    for side, (text, suffix) in enumerate(((first, ""), (second, "_pair"))):
        mine = [i for i, s in enumerate(sides) if s == side]
        whole = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        truncated = len(mine) < whole
        out[f"tokens{suffix}"] = merge_into_words(text, [enc["offset_mapping"][i] for i in mine],
                                                  piece_scores[mine], truncated)
        out[f"truncated{suffix}"] = truncated
    return {k: out[k] for k in ("tokens", "truncated", "tokens_pair", "truncated_pair")}


def top_words(explanation: dict, k: int = 5, side: str = "tokens") -> list[dict]:
    """The k words (of `side`: "tokens", or a pair's "tokens_pair") that pushed hardest toward the label, highest
    score first."""
    return sorted((w for w in explanation[side] if w["score"] > 0), key=lambda w: -w["score"])[:k]


def format_explanation(text, explanation: dict, k: int = 5) -> str:
    """A few lines for a terminal: label and probability with the text, the top words for and against it; for a
    pair ((text, text_pair)), each text on a line of its own with its own words for and against."""
    e = explanation
    if isinstance(text, tuple):
        lines = [f"{e['label']} {e['score']:.3f}"]
        for name, side_text, suffix in (("text", text[0], ""), ("text_pair", text[1], "_pair")):
            cut = " (cut at max tokens)" if e[f"truncated{suffix}"] else ""
            lines.append(f"  {name}{cut}: {side_text}")
            lines += ["  " + line for line in _word_lines(e, f"tokens{suffix}", k)]
        return "\n".join(lines)
    cut = " (cut at max tokens)" if e["truncated"] else ""
    return "\n".join([f"{e['label']} {e['score']:.3f}{cut}  {text}"] + _word_lines(e, "tokens", k))


def _word_lines(e: dict, side: str, k: int) -> list[str]:
    """'toward LABEL: ...' (the top k words of `side`) and, when any word pushed away, 'against: ...'."""
    tops = "  ".join(f"{w['token']} {w['score']:+.3f}" for w in top_words(e, k, side)) or "(none)"
    against = sorted((w for w in e[side] if w["score"] < 0), key=lambda w: w["score"])[:max(1, k // 2)]
    lines = [f"  toward {e['label']}: {tops}"]
    if against:
        lines.append("  against: " + "  ".join(f"{w['token']} {w['score']:+.3f}" for w in against))
    return lines


def explain_to(clf, texts: list[str] | None = None, input_path: str | None = None, output_path: str | None = None,
               text_col: str | None = None, shard: tuple[int, int] | None = None, steps: int = DEFAULT_STEPS,
               max_tokens: int = DEFAULT_MAX_TOKENS, k: int = 5, echo=print, fmt: str | None = None,
               encoding: str | None = None, columns: list[str] | None = None, log=None,
               text_pair_col: str | None = None) -> int:
    """`bertclf predict DIR --explain`: top words per text on the terminal, or every word's score as JSONL
    records ({"row", "text", "label", "score", "tokens", ...}; a pair model's: {"row", "text", "text_pair", "label",
    "score", "tokens", "truncated", "tokens_pair", "truncated_pair", ...}) in --output. The rows are plain predict's
    (predict_io.select_rows: same row numbers, empty texts skipped and reported through `log`). Returns the
    rows done."""
    from bertclf.inference.records import check_output, select_rows, write_records

    require_torch(clf)
    if texts is not None:
        clf.split_inputs(texts)  # a pair for a single-text model, or the other way round: one line, before work
    if text_pair_col and clf.pair_col is None:
        raise UserError(f"--text-pair-col {text_pair_col}: {clf.path} reads single texts (trained without "
                        f"--text-pair-col); drop the flag or use a model trained on pairs")
    if output_path and Path(output_path).suffix.lower() == ".csv":
        raise UserError(f"--output {output_path}: --explain writes JSONL (a list of words per text); "
                        "give a .jsonl file")
    check_output(output_path, input_path)
    rows = select_rows(clf.card, texts, input_path, text_col, shard, fmt, encoding, columns,
                       text_pair_col=text_pair_col)
    explained = ((i, text, explain(clf, text, steps=steps, max_tokens=max_tokens)) for i, text in rows)
    if output_path:
        done = write_records(clf, explained, output_path)
    else:
        done = 0
        for _, text, e in explained:
            echo(("\n" if done else "") + format_explanation(text, e, k))
            done += 1
    rows.report(log)
    return done
