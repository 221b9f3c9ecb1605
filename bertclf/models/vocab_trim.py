"""Shrink a model's vocabulary to the pieces a corpus actually uses.

The builtin model's 250,002-piece multilingual vocabulary is ~80% of its weights (a 96M x fp32 embedding);
Korean movie reviews use ~14k of those pieces. `trim_vocab` keeps

  * every piece the corpus texts are tokenised into (source tokenizer, no truncation, no specials),
  * every single-character piece for a character that occurs in those pieces, so that unseen words made of
    the corpus's characters still fall back to characters rather than <unk>,
  * every special / added token (<s> <pad> </s> <unk> keep their ids 0..3; ids keep their relative order),
  * the lowest-scoring piece of the source vocabulary: tokenizers' Unigram scores an unknown character as
    (lowest piece score - 10), so keeping that piece keeps the <unk> penalty -- and with it every
    segmentation of text made of kept pieces -- identical,

re-indexes the word-embedding rows (and any tied decoder weights / bias that have one row per token), and
rewrites the Unigram vocab (scores kept), added tokens, post-processor, padding, tokenizer_config and
config ids to match. The normaliser and pre-tokeniser are left as they are.

Every corpus text is tokenised into the same pieces by the trimmed tokenizer (checked after writing unless
verify=False), so the model computes exactly what the source computed on it. Text with characters outside
the kept set still tokenises: such characters become <unk> (a run of them may fuse into one <unk>).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from bertclf.io import files
from bertclf.errors import UserError

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
_SKIP_COPY_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".model", ".gguf")
_SKIP_COPY_NAMES = {"tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors.index.json",
                    "bertclf_trim.json", "vocab.txt", "merges.txt", "vocab.json"}
_CONFIG_ID_KEYS = ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id",
                   "mask_token_id", "unk_token_id", "decoder_start_token_id")


def trim_vocab(src_dir: str | os.PathLike, texts: Iterable[str], out_dir: str | os.PathLike,
               log: Callable[[str], None] | None = print, verify: int = 2000) -> dict:
    """Write a copy of the model in `src_dir` to `out_dir` with only the vocabulary `texts` need.

    `verify`: how many of the texts (spread evenly; -1 = all, 0 = none) to re-tokenise with the written
    tokenizer as a check that nothing changed (it cannot, see the module docstring; this guards the code).

    Returns {"pieces_before", "pieces_after", "bytes_before", "bytes_after", "weights_bytes_before",
    "weights_bytes_after", "texts", "out_dir"}; bytes are whole-directory sizes.
    """
    log = log or (lambda _msg: None)
    src, out = Path(src_dir), Path(out_dir)
    _check_dirs(src, out)
    tok_json = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    model = tok_json.get("model") or {}
    if model.get("type") != "Unigram":
        raise UserError(f"{src / 'tokenizer.json'}: vocabulary trimming needs a Unigram (sentencepiece) "
                        f"tokenizer, this one is {model.get('type')!r}")
    if not isinstance(texts, TextChunks):
        texts = [t for t in texts if isinstance(t, str)]
    t0 = time.perf_counter()
    plan = _plan(tok_json, texts)
    n_texts = len(texts)
    kept = plan["kept_ids"]
    old_to_new = {int(o): n for n, o in enumerate(kept.tolist())}
    log(f"trimming vocabulary of {src.name}: {n_texts:,} texts use {plan['used']:,} pieces; "
        f"keeping {len(kept):,} of {plan['pieces_before']:,}")

    _remap_tokenizer_json(tok_json, kept, old_to_new)
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    weights, metadata = _trimmed_weights(src, kept, plan["pieces_before"])
    config["vocab_size"] = len(kept)
    for key in _CONFIG_ID_KEYS:
        if isinstance(config.get(key), int) and config[key] in old_to_new:
            config[key] = old_to_new[config[key]]
    tok_cfg = _remapped_tokenizer_config(src, old_to_new)

    bytes_before = _dir_bytes(src)
    weights_before = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    from safetensors.torch import save_file
    with files.atomic_dir(out) as tmp:
        for p in sorted(src.iterdir()):
            if p.is_file() and p.name not in _SKIP_COPY_NAMES and not p.name.endswith(_SKIP_COPY_SUFFIXES):
                shutil.copy2(p, tmp / p.name)
        save_file(weights, str(tmp / "model.safetensors"), metadata=metadata)
        (tmp / "tokenizer.json").write_text(json.dumps(tok_json, ensure_ascii=False), encoding="utf-8")
        files.write_json(tmp / "config.json", config)
        if tok_cfg is not None:
            files.write_json(tmp / "tokenizer_config.json", tok_cfg)
        if verify:
            _verify_written(plan["tokenizer"], tmp / "tokenizer.json",
                            texts.first if isinstance(texts, TextChunks) else texts, kept, verify)
        stats = {
            "pieces_before": plan["pieces_before"],
            "pieces_after": int(len(kept)),
            "bytes_before": bytes_before,
            "bytes_after": 0,  # filled below (the note itself counts)
            "weights_bytes_before": weights_before,
            "weights_bytes_after": (tmp / "model.safetensors").stat().st_size,
            "texts": n_texts,
        }
        files.write_json(tmp / "bertclf_trim.json", _trim_note(src, n_texts, stats, plan, tok_json))
        stats["bytes_after"] = _dir_bytes(tmp)
    stats["out_dir"] = str(out)
    log(f"wrote {out}: {stats['pieces_after']:,} pieces, {stats['bytes_after'] / 1e6:.0f} MB "
        f"(was {stats['bytes_before'] / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f}s")
    return stats


def plan_trim(src_dir: str | os.PathLike, texts: Iterable[str]) -> dict:
    """What trim_vocab would keep, without writing anything: {"pieces_before", "pieces_after", "used",
    "kept_ids" (source ids, ascending; new id = position)}."""
    src = Path(src_dir)
    if not (src / "tokenizer.json").is_file():
        raise UserError(f"{src}: no tokenizer.json")
    tok_json = json.loads((src / "tokenizer.json").read_text(encoding="utf-8"))
    if (tok_json.get("model") or {}).get("type") != "Unigram":
        raise UserError(f"{src / 'tokenizer.json'}: vocabulary trimming needs a Unigram tokenizer")
    plan = _plan(tok_json, [t for t in texts if isinstance(t, str)])
    return {k: plan[k] for k in ("pieces_before", "pieces_after", "used", "kept_ids")}


def trim_vocab_from_file(src_dir: str | os.PathLike, corpus_path: str | os.PathLike, text_col: str = "document",
                         out_dir: str | os.PathLike | None = None,
                         log: Callable[[str], None] | None = print, encoding: str = "utf-8",
                         columns: list[str] | None = None) -> dict:
    """`trim_vocab` on the `text_col` column of a TSV/CSV/JSONL file (read by bertclf.io.rows).

    Empty values are skipped. out_dir defaults to "<src_dir>-trim-<corpus stem>" beside src_dir.
    """
    corpus = Path(corpus_path)
    texts = read_texts(corpus, text_col, encoding=encoding, columns=columns)
    if not texts:
        raise UserError(f"{corpus}: no non-empty values in column {text_col!r}")
    if out_dir is None:
        src = Path(src_dir)
        out_dir = src.parent / f"{src.name}-trim-{corpus.stem}"
    return trim_vocab(src_dir, texts, out_dir, log=log)


def read_texts(path: str | os.PathLike, text_col: str = "document", encoding: str = "utf-8",
               columns: list[str] | None = None) -> list[str]:
    """Non-empty values of column `text_col` of a TSV/CSV/JSONL file (the shared reader's rules)."""
    from bertclf.io.rows import iter_rows

    return [row[text_col] for _n, row in iter_rows(path, [text_col], encoding=encoding, columns=columns,
                                                   col_flags="--text-col") if row[text_col].strip()]


# ------------------------------------------------------------------------------------------- helpers


def _check_dirs(src: Path, out: Path) -> None:
    if not (src / "tokenizer.json").is_file() or not (src / "config.json").is_file():
        raise UserError(f"{src}: not a model directory with tokenizer.json and config.json")
    if out.resolve() == src.resolve() or src.resolve().is_relative_to(out.resolve()):
        raise UserError(f"{out}: the output directory must not be the source directory or contain it")
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file())):
        raise UserError(f"{out}: exists and is not a model directory; choose a new output directory")
    files.check_writable(out)  # now, not after the work


def _plan(tok_json: dict, texts: list[str]) -> dict:
    from tokenizers import Tokenizer

    model = tok_json["model"]
    vocab = model["vocab"]
    n_vocab = len(vocab)
    tok = Tokenizer.from_str(json.dumps(tok_json))
    tok.no_truncation()
    tok.no_padding()
    used = _used_ids(tok, texts)
    used = used[used < n_vocab]  # added tokens beyond the vocabulary are kept anyway
    keep = np.zeros(n_vocab, bool)
    keep[used] = True
    # single characters of every used piece (also the characters the corpus only has inside longer pieces)
    piece_id = {p: i for i, (p, _s) in enumerate(vocab)}
    for c in {c for i in used.tolist() for c in vocab[i][0]}:
        if c in piece_id:
            keep[piece_id[c]] = True
    lowest = int(np.argmin(np.array([s for _p, s in vocab], dtype=np.float64)))
    keep[lowest] = True  # keeps the <unk> penalty (lowest score - 10) unchanged
    if model.get("unk_id") is not None:
        keep[model["unk_id"]] = True
    extra_added = []  # added tokens that live beyond the model vocabulary
    for a in tok_json.get("added_tokens") or []:
        if a["id"] < n_vocab:
            keep[a["id"]] = True
        else:
            extra_added.append(a["id"])
    kept = np.concatenate([np.flatnonzero(keep), np.array(sorted(extra_added), dtype=np.int64)]).astype(np.int64)
    return {"tokenizer": tok, "kept_ids": kept, "used": int(len(used)), "lowest_score_piece": vocab[lowest][0],
            "pieces_before": n_vocab + len(extra_added), "pieces_after": int(len(kept))}


def _remap_tokenizer_json(tok_json: dict, kept: np.ndarray, old_to_new: dict[int, int]) -> None:
    """In place: keep only the `kept` pieces (new id = position in kept) and renumber every id that refers to one."""
    model = tok_json["model"]
    vocab, n_vocab, unk_id = model["vocab"], len(model["vocab"]), model.get("unk_id")
    model["vocab"] = [vocab[i] for i in kept[kept < n_vocab].tolist()]
    if unk_id is not None:
        model["unk_id"] = old_to_new[unk_id]
    for a in tok_json.get("added_tokens") or []:
        a["id"] = old_to_new[a["id"]]
    if tok_json.get("post_processor"):
        _remap_processor(tok_json["post_processor"], old_to_new)
    if tok_json.get("padding") and "pad_id" in tok_json["padding"]:
        tok_json["padding"]["pad_id"] = old_to_new.get(tok_json["padding"]["pad_id"], tok_json["padding"]["pad_id"])


def _trimmed_weights(src: Path, kept: np.ndarray, n_tokens: int):
    """The model's weights with only the `kept` rows of the word embedding (and of any tied output layer).
    Those tensors are read a run of consecutive kept rows at a time, never whole: the full 250k-row embedding
    (384 MB for me5-small) is not held in memory beside its trimmed copy."""
    import torch

    shapes, metadata = _weight_shapes(src)
    emb_keys = [k for k in shapes if k.endswith("word_embeddings.weight")]
    if len(emb_keys) != 1:
        raise UserError(f"{src}: expected one BERT-style word embedding (*word_embeddings.weight), "
                        f"found {emb_keys or 'none'}")
    rows = shapes[emb_keys[0]][1][0]
    if rows < n_tokens:
        raise UserError(f"{src}: the embedding has {rows} rows but the tokenizer has {n_tokens} tokens")
    cuts = np.flatnonzero(np.diff(kept) != 1) + 1  # runs of consecutive kept ids: [a, b) each
    runs = [(int(r[0]), int(r[-1]) + 1) for r in np.split(kept, cuts) if len(r)]
    weights = {}
    for k, (shard, shape) in shapes.items():
        by_row = len(shape) >= 1 and shape[0] == rows and (
            k == emb_keys[0] or "decoder" in k or "lm_head" in k or k.endswith("predictions.bias"))
        with safe_open_pt(shard) as f:
            if by_row:
                part = f.get_slice(k)
                weights[k] = torch.cat([part[a:b] for a, b in runs]).contiguous()
            else:
                weights[k] = f.get_tensor(k)
    return weights, metadata


def _remapped_tokenizer_config(src: Path, old_to_new: dict[int, int]) -> dict | None:
    """tokenizer_config.json with its added_tokens_decoder renumbered (None when the model has no such file)."""
    tok_cfg_path = src / "tokenizer_config.json"
    tok_cfg = json.loads(tok_cfg_path.read_text(encoding="utf-8")) if tok_cfg_path.is_file() else None
    if tok_cfg and isinstance(tok_cfg.get("added_tokens_decoder"), dict):
        tok_cfg["added_tokens_decoder"] = {
            str(old_to_new[int(k)]): v for k, v in tok_cfg["added_tokens_decoder"].items()
            if int(k) in old_to_new}
    return tok_cfg


def _verify_written(old_tok, tokenizer_path: Path, texts: list[str], kept: np.ndarray, verify: int) -> None:
    """Re-tokenise `verify` of the texts (spread evenly; -1 = all) with the written tokenizer: same pieces."""
    from tokenizers import Tokenizer

    step = 1 if verify < 0 or verify >= len(texts) else len(texts) / verify
    sample = texts if step == 1 else [texts[int(i * step)] for i in range(verify)]
    new_tok = Tokenizer.from_file(str(tokenizer_path))
    new_tok.no_truncation()
    new_tok.no_padding()
    _verify(old_tok, new_tok, sample, kept)


def _trim_note(src: Path, n_texts: int, stats: dict, plan: dict, tok_json: dict) -> dict:
    """bertclf_trim.json: what was kept and why, and the id map back to the source."""
    note = {
        "source": str(src.resolve()),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "corpus_texts": n_texts,
        **{k: v for k, v in stats.items() if k != "bytes_after"},
        "kept": {
            "used_by_corpus": plan["used"],
            "single_characters": "every single-character piece of a character in a used piece",
            "specials": [a["content"] for a in tok_json.get("added_tokens") or []],
            "lowest_score_piece": plan["lowest_score_piece"] + " (keeps the <unk> penalty)",
        },
        "kept_source_ids": plan["kept_ids"].tolist(),  # new id i was id kept_source_ids[i] in the source
    }
    prev = src / "bertclf_trim.json"
    if prev.is_file():
        note["previous_trim"] = {k: v for k, v in json.loads(prev.read_text(encoding="utf-8")).items()
                                 if k != "kept_source_ids"}
    return note


def _used_ids(tok, texts, batch: int = 8192) -> np.ndarray:
    seen: set[int] = set()
    parts = texts.batches(batch) if isinstance(texts, TextChunks) else (
        texts[i:i + batch] for i in range(0, len(texts), batch))
    for part in parts:
        for enc in tok.encode_batch(part, add_special_tokens=False):
            seen.update(enc.ids)
    return np.array(sorted(seen), dtype=np.int64)


class TextChunks:
    """A corpus too large for one list (a training file streamed): chunks() gives its texts a list at a time,
    once per pass. After a pass, len() is its count and `first` its first texts (what the trim re-checks)."""

    def __init__(self, chunks: Callable[[], Iterable[list[str]]], keep_first: int = 2000):
        self.chunks, self.keep_first = chunks, keep_first
        self.count, self.first = 0, []

    def __len__(self) -> int:
        return self.count

    def batches(self, batch: int) -> Iterable[list[str]]:
        self.count, self.first = 0, []
        for chunk in self.chunks():
            chunk = [t for t in chunk if isinstance(t, str)]
            self.count += len(chunk)
            if len(self.first) < self.keep_first:
                self.first += chunk[:self.keep_first - len(self.first)]
            for i in range(0, len(chunk), batch):
                yield chunk[i:i + batch]


def _verify(old_tok, new_tok, texts: list[str], kept: np.ndarray, batch: int = 8192) -> None:
    for i in range(0, len(texts), batch):
        chunk = texts[i:i + batch]
        a = old_tok.encode_batch(chunk, add_special_tokens=False)
        b = new_tok.encode_batch(chunk, add_special_tokens=False)
        for t, ea, eb in zip(chunk, a, b):
            if len(ea.ids) != len(eb.ids) or (ea.ids and not np.array_equal(kept[eb.ids], ea.ids)):
                raise RuntimeError(f"vocabulary trim changed the tokenization of {t[:80]!r}: "
                                   f"{ea.tokens[:20]} -> {eb.tokens[:20]}")


def _remap_processor(proc: dict, m: dict[int, int]) -> None:
    if not isinstance(proc, dict):
        return
    for sub in proc.get("processors") or []:
        _remap_processor(sub, m)
    for key in ("sep", "cls"):  # RobertaProcessing / BertProcessing: [token, id]
        if isinstance(proc.get(key), list) and len(proc[key]) == 2 and isinstance(proc[key][1], int):
            proc[key][1] = m.get(proc[key][1], proc[key][1])
    st = proc.get("special_tokens")
    if isinstance(st, dict):  # TemplateProcessing: {name: {"id", "ids", "tokens"}}
        for spec in st.values():
            if isinstance(spec, dict) and isinstance(spec.get("ids"), list):
                spec["ids"] = [m.get(i, i) for i in spec["ids"]]


def _weight_shards(src: Path) -> list[Path]:
    if (src / "model.safetensors").is_file():
        return [src / "model.safetensors"]
    if (src / "model.safetensors.index.json").is_file():
        index = json.loads((src / "model.safetensors.index.json").read_text(encoding="utf-8"))
        return [src / s for s in sorted(set(index["weight_map"].values()))]
    raise UserError(f"{src}: no model.safetensors (vocabulary trimming reads safetensors weights only)")


def _weight_shapes(src: Path) -> tuple[dict[str, tuple[Path, list[int]]], dict]:
    """name -> (its shard, its shape), in the files' order, and the files' metadata; no tensor is read."""
    shapes, metadata = {}, {"format": "pt"}
    for shard in _weight_shards(src):
        with safe_open_pt(shard) as f:
            metadata.update(f.metadata() or {})
            for k in f.keys():
                shapes[k] = (shard, list(f.get_slice(k).get_shape()))
    return shapes, metadata


def safe_open_pt(shard: Path):
    from safetensors import safe_open

    return safe_open(str(shard), framework="pt")


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
