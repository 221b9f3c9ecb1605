"""Training from a Parquet file streamed into a token store (bertclf/train/streamed.py): the in-memory path's
batches, losses and weights; the rule that picks the path; the n-gram partner's bounded fit."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertclf.data.dataset import read_labelled
from bertclf.data.file_store import StoredDataset
from bertclf.models import ngram
from bertclf.train import prepare as P
from bertclf.train.callbacks import TrainCallback
from bertclf.train.finish import partner_rows
from bertclf.train.loop import train

from tiny_runs import tiny_cfg
from train_hooks import CrashAfter


def to_parquet(tsv: Path, out: Path, lo: int, hi: int) -> Path:
    ds = read_labelled(tsv, "document", "label")
    pq.write_table(pa.table({"document": ds.texts[lo:hi], "label": [int(x) for x in ds.labels[lo:hi]]}), out,
                   row_group_size=500)
    return out


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run_dir / "train_log.jsonl").read_text().splitlines()) if "loss" in r]


def test_streamed_training_equals_training_in_memory(tiny_model_dir, nsmc_slices, tmp_path, monkeypatch):
    """--valid FILE, no --sample: the same rows in the same order, so the same batches, losses and weights bit
    for bit; a second run reuses the file's hash, trim and store and reads no row into a list."""
    from safetensors.torch import load_file

    monkeypatch.setenv("BERTCLF_CACHE", str(tmp_path / "cache"))
    train_pq = to_parquet(nsmc_slices["train"], tmp_path / "train.parquet", 0, 2600)
    valid_pq = to_parquet(nsmc_slices["train"], tmp_path / "valid.parquet", 2600, 3000)
    kw = dict(train=str(train_pq), valid=str(valid_pq), test=None, max_steps=5, log_every=1, precision="fp32",
              ngram="off", calibrate=False, trim_vocab=True)
    said, data = {}, {}

    class KeepData(TrainCallback):
        def __init__(self, name):
            self.name = name

        def on_train_begin(self, run):
            data[self.name] = run.data

    for name, mode in (("memory", "off"), ("stream", "on"), ("again", "on")):
        said[name] = []
        train(tiny_cfg(tmp_path / name, nsmc_slices, tiny_model_dir, token_store=mode, **kw), echo=said[name].append,
              callbacks=[KeepData(name)])
    assert isinstance(data["stream"].train_ds, StoredDataset) and not isinstance(data["memory"].train_ds,
                                                                                  StoredDataset)
    assert np.array_equal(data["memory"].train_len, data["stream"].train_len)
    assert np.array_equal(data["memory"].y_train, data["stream"].y_train)
    assert all(np.array_equal(data["memory"].train_ids[i], data["stream"].train_ids[i]) for i in range(2600))
    assert len(_losses(tmp_path / "memory")) == 5
    assert _losses(tmp_path / "memory") == _losses(tmp_path / "stream") == _losses(tmp_path / "again")
    a, b = load_file(tmp_path / "memory" / "model.safetensors"), load_file(tmp_path / "stream" / "model.safetensors")
    assert all(bool((a[k] == b[k]).all()) for k in a)
    card = json.loads((tmp_path / "stream" / "bertclf.json").read_text())
    assert card["data"]["train"] == json.loads((tmp_path / "memory" / "bertclf.json").read_text())["data"]["train"]
    built = [s for s in said["stream"] if s.startswith("token store:")]
    assert len(built) == 1 and "built in" in built[0], built
    again = [s for s in said["again"] if s.startswith("token store:")]
    assert len(again) == 1 and "reused" in again[0], again
    assert any(s.startswith("vocabulary: the trim of these texts, reused") for s in said["again"])


def test_the_streamed_path_is_for_large_columnar_files(nsmc_slices, tmp_path, monkeypatch):
    pq_file = to_parquet(nsmc_slices["train"], tmp_path / "t.parquet", 0, 3000)
    cfg = lambda **kw: tiny_cfg(tmp_path / "o", nsmc_slices, "m", **kw)  # noqa: E731
    assert not P.streams_file(cfg(train=str(pq_file)))  # auto: 3,000 rows by the Parquet footer, below 100k
    assert P.streams_file(cfg(train=str(pq_file), token_store="on"))
    monkeypatch.setattr(P, "STORE_FROM_ROWS", 3000)
    assert P.streams_file(cfg(train=str(pq_file)))
    assert not P.streams_file(cfg(train=str(pq_file), token_store="off"))
    assert not P.streams_file(cfg(token_store="on"))  # a TSV: read into lists (its store keyed by content)
    assert P.streams_file(cfg(train=str(pq_file), group_col="label"))  # groups and pairs stream too
    assert P.streams_file(cfg(train=str(pq_file), text_pair_col="label2"))


def test_the_ngram_partner_fits_on_a_bounded_sample(nsmc_slices, monkeypatch):
    ds = read_labelled(nsmc_slices["train"], "document", "label")
    y = np.array([int(x) for x in ds.labels])
    said = []
    texts, y_fit = partner_rows(ds, y, None, 0, said.append)  # task: only read for --texts rows
    assert texts is ds.texts and y_fit is y and not said  # up to FIT_ROWS rows: all of them, as before
    monkeypatch.setattr(ngram, "FIT_ROWS", 500)
    texts, y_fit = partner_rows(ds, y, None, 0, said.append)  # task: only read for --texts rows
    assert len(texts) == len(y_fit) == 500 and len(set(texts)) > 450
    assert set(zip(texts, y_fit.tolist())) <= set(zip(ds.texts, y.tolist()))  # each text with its own label
    assert said == [f"n-gram partner: fitted on a random 500 of the 3,000 training rows ({ngram.FIT_WHY})"]


def test_a_streamed_run_resumes_exactly_and_refuses_a_changed_file(tiny_model_dir, nsmc_slices, tmp_path,
                                                                    monkeypatch):
    """Killed after step 3 (checkpoint at 2): the file rewritten with its rows reordered (the same rows, another
    SHA-256, a new modification time) is refused in one line; the original bytes back, the resumed run ends
    with the uninterrupted run's losses."""
    import pytest

    from bertclf.errors import UserError

    monkeypatch.setenv("BERTCLF_CACHE", str(tmp_path / "cache"))
    data = to_parquet(nsmc_slices["train"], tmp_path / "train.parquet", 0, 1200)
    kw = dict(train=str(data), test=None, max_steps=5, checkpoint_every=2, log_every=1, precision="fp32",
              ngram="off", calibrate=False, token_store="on")
    cfg = lambda name, **more: tiny_cfg(tmp_path / name, nsmc_slices, tiny_model_dir, **kw, **more)  # noqa: E731
    train(cfg("whole"), echo=lambda s: None)
    with pytest.raises(RuntimeError, match="crash after step 3"):
        train(cfg("resumed"), echo=lambda s: None, callbacks=[CrashAfter(3)])
    original, table = data.read_bytes(), pq.read_table(data)
    pq.write_table(table.take(list(range(1, len(table))) + [0]), data)
    with pytest.raises(UserError, match=r"--resume: .*train\.parquet changed since .*SHA-256 differs"):
        train(cfg("resumed", resume=True), echo=lambda s: None)
    data.write_bytes(original)
    train(cfg("resumed", resume=True), echo=lambda s: None)
    assert len(_losses(tmp_path / "whole")) == 5
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "whole")
