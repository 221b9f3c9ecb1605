"""The token store (bertclf/data/token_store.py): the same ids, batches and losses as the in-memory path, reuse
by a second run, a new store for changed rows, and no usable store after an interrupted build."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bertclf.data import token_store as TS
from bertclf.data.dataset import read_labelled
from bertclf.data.long_text import encode_rows
from bertclf.models.resolve import load_tokenizer
from bertclf.train.loop import train

from tiny_runs import tiny_cfg

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def rows(nsmc_slices):
    return read_labelled(nsmc_slices["train"], "document", "label").texts[:700]


def test_store_rows_are_encode_rows_token_for_token(tiny_model_dir, rows, tmp_path, monkeypatch):
    monkeypatch.setattr(TS, "BUILD_ROWS", 256)  # several build steps, the last one short
    tok = load_tokenizer(str(tiny_model_dir))
    for mode in ("truncate", "head-tail"):
        want, _ = encode_rows(tok, rows, None, 24, mode)
        store = TS.open_or_build(tok, rows, None, 24, mode, log=lambda s: None, root=tmp_path)
        assert len(store) == len(rows) and store.types is None
        assert all(np.array_equal(store.ids[i], w) for i, w in enumerate(want))
        assert np.array_equal(store.lengths, [len(w) for w in want])
        assert store.meta["bytes"] == sum(f.stat().st_size for f in store.path.glob("*.bin"))
    assert len(list(tmp_path.iterdir())) == 2  # one store per --long-text mode
    same = rows[:3] + [rows[0]]
    assert TS.repeats_in(TS.text_hashes(same), TS.text_hashes(rows[:1])) == 2


def test_pair_rows_keep_their_token_type_ids(tiny_model_dir, rows, tmp_path):
    """Sentence pairs through a tokenizer with BERT's pair template: ids and token type ids as encode_pairs."""
    from tokenizers.processors import TemplateProcessing

    tok = load_tokenizer(str(tiny_model_dir))
    cls, sep = tok.cls_token, tok.sep_token
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, tok.cls_token_id), (sep, tok.sep_token_id)])
    tok.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    texts, pairs = rows[:300], rows[300:600]
    ids, types = encode_rows(tok, texts, pairs, 24)
    store = TS.open_or_build(tok, texts, pairs, 24, "truncate", log=lambda s: None, root=tmp_path)
    assert all(np.array_equal(store.ids[i], ids[i]) and np.array_equal(store.types[i], types[i])
               for i in range(len(ids)))
    assert any(store.types[i].any() for i in range(len(ids)))
    assert TS.repeats_in(TS.text_hashes(texts[:5], pairs[:5]), store.hashes) == 5
    assert TS.repeats_in(TS.text_hashes(texts[:5], pairs[1:6]), store.hashes) == 0


def _losses(run_dir: Path) -> list[float]:
    lines = [json.loads(x) for x in (run_dir / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if "loss" in r]


def test_training_from_the_store_equals_training_in_memory(tiny_model_dir, nsmc_slices, tmp_path, monkeypatch):
    """Same batches, same losses, same weights, bit for bit (vocabulary trimmed, as for the builtin models); a
    second run reuses the store and the trim, changed rows build another store."""
    from safetensors.torch import load_file

    monkeypatch.setenv("BERTCLF_CACHE", str(tmp_path / "cache"))
    kw = dict(sample=0.2, max_steps=6, log_every=1, precision="fp32", test=None, ngram="off", calibrate=False,
              trim_vocab=True)
    said = {}
    for name, mode in (("memory", "off"), ("store", "on"), ("again", "on")):
        said[name] = []
        train(tiny_cfg(tmp_path / name, nsmc_slices, tiny_model_dir, token_store=mode, **kw),
              echo=said[name].append)
    assert len(_losses(tmp_path / "memory")) == 6
    assert _losses(tmp_path / "memory") == _losses(tmp_path / "store") == _losses(tmp_path / "again")
    a, b = load_file(tmp_path / "memory" / "model.safetensors"), load_file(tmp_path / "store" / "model.safetensors")
    assert all(bool((a[k] == b[k]).all()) for k in a)
    built = [s for s in said["store"] if s.startswith("token store:")]
    assert len(built) == 2 and all("built in" in s for s in built), built  # training and validation rows
    again = [s for s in said["again"] if s.startswith("token store:")]
    assert len(again) == 2 and all("reused" in s for s in again), again
    assert any(s.startswith("vocabulary: the trim of these texts, reused") for s in said["again"])
    assert not any(s.startswith("vocabulary: the trim") for s in said["store"] + said["memory"])
    assert not any(s.startswith("token store:") for s in said["memory"])
    # changed training texts (every one gains a word): new stores, not the ones built for the old file
    changed = tmp_path / "changed.tsv"
    lines = nsmc_slices["train"].read_text(encoding="utf-8").splitlines(keepends=True)
    edit = lambda ln: "\t".join([c + " 다시" if k == 1 else c for k, c in enumerate(ln.split("\t"))])  # noqa: E731
    changed.write_text(lines[0] + "".join(edit(ln) for ln in lines[1:]), encoding="utf-8")
    cfg = tiny_cfg(tmp_path / "changed", nsmc_slices, tiny_model_dir, token_store="on", **kw | {"max_steps": 1})
    cfg.train, out = str(changed), []
    train(cfg, echo=out.append)
    stores = [s for s in out if s.startswith("token store:")]
    assert len(stores) == 2 and all("built in" in s for s in stores), stores
    assert len([p for p in (tmp_path / "cache" / "token-store").iterdir() if not p.name.startswith(".")]) == 4


def test_an_interrupted_build_leaves_no_store(tiny_model_dir, rows, tmp_path, monkeypatch):
    """An exception mid-build removes the half store; a SIGKILL mid-build leaves only a hidden temporary folder,
    which the next build does not take for a store."""
    tok = load_tokenizer(str(tiny_model_dir))
    monkeypatch.setattr(TS, "BUILD_ROWS", 200)
    real, calls = TS.encode_rows, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk went away")
        return real(*a, **k)

    monkeypatch.setattr(TS, "encode_rows", failing)
    with pytest.raises(RuntimeError):
        TS.open_or_build(tok, rows, None, 32, "truncate", log=lambda s: None, root=tmp_path)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(TS, "encode_rows", real)

    script = (f"import sys, time\nsys.path.insert(0, {str(REPO)!r})\n"
              "from bertclf.data import token_store as TS\nfrom bertclf.models.resolve import load_tokenizer\n"
              "from bertclf.data.dataset import read_labelled\n"
              f"rows = read_labelled({str(tmp_path / 'rows.tsv')!r}, 'document', None).texts\n"
              "real, n = TS.encode_rows, [0]\n"
              "def slow(*a, **k):\n"
              "    n[0] += 1\n"
              "    if n[0] == 2:\n"
              "        print('mid-build', flush=True); time.sleep(60)\n"
              "    return real(*a, **k)\n"
              "TS.encode_rows, TS.BUILD_ROWS = slow, 200\n"
              f"TS.open_or_build(load_tokenizer({str(tiny_model_dir)!r}), rows, None, 32, 'truncate', "
              f"root=__import__('pathlib').Path({str(tmp_path / 'kill')!r}))\n")
    (tmp_path / "rows.tsv").write_text("document\n" + "".join(r.replace("\t", " ") + "\n" for r in rows),
                                       encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "mid-build"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    left = list((tmp_path / "kill").iterdir())
    assert left and all(p.name.startswith(".") and p.name.endswith(".tmp") for p in left), left
    said = []
    store = TS.open_or_build(tok, rows, None, 32, "truncate", log=said.append, root=tmp_path / "kill")
    assert "built in" in said[0] and len(store) == len(rows)
    assert all(np.array_equal(store.ids[i], w) for i, w in enumerate(encode_rows(tok, rows, None, 32)[0]))


def test_a_damaged_store_is_refused_in_one_line(tiny_model_dir, rows, tmp_path):
    from bertclf.errors import UserError

    tok = load_tokenizer(str(tiny_model_dir))
    store = TS.open_or_build(tok, rows[:50], None, 32, "truncate", log=lambda s: None, root=tmp_path)
    with open(store.path / "ids.bin", "r+b") as f:
        f.truncate(8)
    with pytest.raises(UserError, match="ids.bin does not match meta.json"):
        TS.open_or_build(tok, rows[:50], None, 32, "truncate", log=lambda s: None, root=tmp_path)


def test_a_build_removes_the_folders_of_builds_killed_long_ago(tiny_model_dir, rows, tmp_path):
    """A killed build's hidden .tmp folder is removed by the next build once nothing in it changed for a day;
    a folder a build still writes to (a fresh file in it, however old the folder) is left alone."""
    tok = load_tokenizer(str(tiny_model_dir))
    day_ago = __import__("time").time() - TS.STALE_BUILD_S - 60
    folders = {name: tmp_path / f".{name}.x1y2.tmp" for name in ("killed", "live", "fresh")}
    for name, folder in folders.items():
        folder.mkdir()
        (folder / "ids.bin").write_bytes(b"\0" * 64)
        if name != "fresh":
            os.utime(folder, (day_ago, day_ago))
        if name == "killed":
            os.utime(folder / "ids.bin", (day_ago, day_ago))
    store = TS.open_or_build(tok, rows[:20], None, 32, "truncate", log=lambda s: None, root=tmp_path)
    assert len(store) == 20
    assert not folders["killed"].exists() and folders["live"].is_dir() and folders["fresh"].is_dir()
