"""Sentence pairs (issue 31): --text-pair-col through training, eval, predict, serve, pipeline and ONNX; grouped
validation (--group-col); the pair baseline; bad pair input.

The fast tests run on a tiny random-weight BERT whose tokenizer is me5-small's (vocabulary trimmed to a KorNLI
slice) with a BERT-style pair template: [CLS] a [SEP] b [SEP] with token type ids 0 / 1, so every path that must
carry token type ids is exercised (me5-small's own template, <s> a </s></s> b </s>, has none)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from _cli import run_cli as bertclf
from conftest import REPO
from same_rows import same_prediction

KORNLI = REPO.parent / "shared" / "data" / "kornli" / "xnli.test.ko.tsv"


@pytest.fixture(scope="session")
def kornli() -> Path:
    if not KORNLI.is_file():
        pytest.skip(f"KorNLI not found at {KORNLI}")
    return KORNLI


def write_premises(src: Path, out: Path, first: int, n: int, header: bool = True) -> Path:
    """The rows of premises [first, first + n) (each premise's 3 rows are consecutive in the file)."""
    lines = src.read_text(encoding="utf-8").splitlines()
    body, seen = [], []
    for line in lines[1:]:
        premise = line.split("\t", 1)[0]
        if not seen or seen[-1] != premise:
            seen.append(premise)
        if first < len(seen) <= first + n:
            body.append(line)
    out.write_text("\n".join(([lines[0]] if header else []) + body) + "\n", encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def pair_slices(kornli, tmp_path_factory) -> dict[str, Path]:
    """train.tsv: 300 premises (900 pairs); test.tsv: the next 60 (180 pairs), premise-disjoint; headerless.tsv: the
    training rows without their header line."""
    d = tmp_path_factory.mktemp("kornli")
    return {"train": write_premises(kornli, d / "train.tsv", 0, 300),
            "test": write_premises(kornli, d / "test.tsv", 300, 60),
            "headerless": write_premises(kornli, d / "headerless.tsv", 0, 300, header=False)}


def bert_style_pairs(tokenizer):
    """The tokenizer with BERT's pair template: [CLS] a [SEP] b [SEP], token type ids 0 for a, 1 for b."""
    from tokenizers.processors import TemplateProcessing

    cls, sep = tokenizer.cls_token, tokenizer.sep_token
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0", pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, tokenizer.cls_token_id), (sep, tokenizer.sep_token_id)])
    tokenizer.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    return tokenizer


@pytest.fixture(scope="session")
def tiny_pair_model_dir(me5_dir, pair_slices, tmp_path_factory) -> Path:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from bertclf.data.dataset import read_labelled
    from bertclf.models.vocab_trim import trim_vocab

    d = tmp_path_factory.mktemp("tinypair")
    texts = []
    for split in ("train", "test"):
        ds = read_labelled(pair_slices[split], "sentence1", "gold_label", pair_col="sentence2")
        texts += ds.all_texts()
    trim_vocab(str(me5_dir), texts, d / "trimmed", log=lambda s: None)
    tok = bert_style_pairs(AutoTokenizer.from_pretrained(d / "trimmed"))
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=514, pad_token_id=tok.pad_token_id,
                     type_vocab_size=2)
    out = d / "model"
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


PAIR_COLS = dict(text_col="sentence1", text_pair_col="sentence2", label_col="gold_label")


@pytest.fixture(scope="session")
def pair_run(tiny_pair_model_dir, pair_slices, tmp_path_factory) -> tuple[Path, list[str]]:
    """(run directory, its training output) of the tiny pair model trained on the slice, premise-grouped."""
    from bertclf.train.loop import TrainConfig, train

    out = tmp_path_factory.mktemp("pairrun") / "run"
    said = []
    train(TrainConfig(out=str(out), train=str(pair_slices["train"]), test=str(pair_slices["test"]),
                      group_col="sentence1", model=str(tiny_pair_model_dir), epochs=2, batch_size=16, lr=2e-3,
                      seed=0, max_length=48, precision="fp32", valid_frac=0.2, **PAIR_COLS), echo=said.append)
    return out, said


# ---------------------------------------------------------------- training

def test_training_reads_pairs_groups_by_premise_and_records_both_columns(pair_run):
    out, said = pair_run
    card = json.loads((out / "bertclf.json").read_text())
    assert card["data"]["text_pair_col"] == "sentence2" and card["data"]["group_col"] == "sentence1"
    assert card["args"]["text_pair_col"] == "sentence2"
    assert card["data"]["train"]["rows"] + card["data"]["valid"]["rows"] == 900
    # whole premises on each side: 300 premises, 20% of them held out
    assert card["data"]["train"]["groups"] + card["data"]["valid"]["groups"] == 300
    assert card["data"]["valid"]["texts_in_train"] == 0 and card["metrics"]["test"]["n"] == 180
    cut = next(s for s in said if s.startswith("tokenized"))
    assert "per training pair" in cut and "the first text shortened in" in cut and "with token type ids" in cut
    assert any("n-gram partner: not fitted for sentence pairs" in s for s in said)
    assert card["calibration"]["temperature"] > 0  # fitted on the 180 validation pairs and folded into the head


def test_pair_tokenization_is_the_tokenizers_template_cut_longest_first(tiny_pair_model_dir):
    """encode_pairs gives what the tokenizer itself gives a pair (what transformers.pipeline feeds the model), and
    a pair over max_length loses tokens from its longer side, whichever side that is; pair_cut counts each side."""
    from bertclf.data.tokens import encode_pairs, pair_cut
    from bertclf.models.resolve import load_tokenizer

    tok = load_tokenizer(str(tiny_pair_model_dir))
    short, long = "영화가 좋다", "나는 어제 친구와 함께 극장에 가서 아주 길고 지루한 영화를 끝까지 보았다 " * 3
    texts, pairs = [long, short, short], [short, long, short]
    ids, types = encode_pairs(tok, texts, pairs, max_length=16)
    for k, (a, b) in enumerate(zip(texts, pairs)):
        ref = tok(a, b, truncation="longest_first", max_length=16)
        assert ids[k].tolist() == ref["input_ids"] and types[k].tolist() == ref["token_type_ids"]
    whole_short = len(tok(short, add_special_tokens=False)["input_ids"])
    assert len(ids[0]) == len(ids[1]) == 16 and len(ids[2]) < 16
    # the long first text was cut and the short second kept whole (its type-1 tokens: itself + one [SEP]), and
    # the other way round
    assert int(types[0].sum()) == whole_short + 1 and int((types[1] == 0).sum()) == whole_short + 2
    assert pair_cut(tok, texts, pairs, ids, 16) == (2, 1, 1)


def test_training_feeds_the_model_the_pair_ids_and_token_types(tiny_pair_model_dir, pair_slices, tmp_path,
                                                                monkeypatch):
    """The inputs the model is actually given (a forward pre-hook on the model the loop trains), in training and in
    validation scoring, are the tokenizer's pair encoding with its token type ids, row for row."""
    from train_hooks import ForwardPreHook
    from bertclf.data.dataset import read_labelled
    from bertclf.models.resolve import load_tokenizer
    from bertclf.train.loop import TrainConfig, train

    fed = {True: set(), False: set()}  # model.training -> (ids, type ids) of each row it was given

    def record(module, args, kwargs):
        assert "token_type_ids" in kwargs
        for row, types, m in zip(kwargs["input_ids"], kwargs["token_type_ids"], kwargs["attention_mask"]):
            fed[module.training].add((tuple(row[m.bool()].tolist()), tuple(types[m.bool()].tolist())))

    train(TrainConfig(out=str(tmp_path / "run"), train=str(pair_slices["train"]), model=str(tiny_pair_model_dir),
                      epochs=1, batch_size=32, lr=2e-3, seed=0, max_length=24, precision="fp32", valid_frac=0.2,
                      ngram="off", **PAIR_COLS), echo=lambda s: None, callbacks=[ForwardPreHook(record)])
    tok = load_tokenizer(str(tiny_pair_model_dir))
    ds = read_labelled(pair_slices["train"], "sentence1", "gold_label", pair_col="sentence2")
    enc = tok(ds.texts, ds.pairs, truncation="longest_first", max_length=24)
    expected = {(tuple(i), tuple(t)) for i, t in zip(enc["input_ids"], enc["token_type_ids"])}
    assert fed[True] and fed[False] and fed[True] | fed[False] <= expected
    assert len(fed[True] | fed[False]) >= 0.95 * len(expected)  # every row trained or validated on (a few repeat)
    assert any(1 in types for _, types in fed[True])


def pairs_parquet(tsv: Path, out: Path) -> Path:
    """The pair rows of a TSV slice as a Parquet file (what a large corpus is kept in: streamed by training)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bertclf.data.dataset import read_labelled

    ds = read_labelled(tsv, "sentence1", "gold_label", pair_col="sentence2")
    pq.write_table(pa.table({"sentence1": ds.texts, "sentence2": ds.pairs, "gold_label": ds.labels}), out,
                   row_group_size=200)
    return out


def _train_keeping_data(cfg, said: list):
    from bertclf.train.callbacks import TrainCallback
    from bertclf.train.loop import train

    kept = {}

    class KeepData(TrainCallback):
        def on_train_begin(self, run):
            kept["data"] = run.data

    card = train(cfg, echo=said.append, callbacks=[KeepData()])
    return card, kept["data"]


def test_a_streamed_pair_file_trains_as_the_same_rows_in_memory(tiny_pair_model_dir, pair_slices, tmp_path,
                                                                monkeypatch):
    """--valid FILE: a Parquet pair file streamed into a token store gives the in-memory path's pair ids, token
    type ids (the tiny model's type embeddings differ, so a lost type id changes the losses), trimmed vocabulary
    (of both texts), batches and losses."""
    from bertclf.data import file_store as FS
    from bertclf.train.loop import TrainConfig

    monkeypatch.setenv("BERTCLF_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(FS, "CHUNK_ROWS", 256)  # several chunks
    train_pq = pairs_parquet(pair_slices["train"], tmp_path / "train.parquet")
    valid_pq = pairs_parquet(pair_slices["test"], tmp_path / "valid.parquet")
    runs = {}
    for name, mode in (("memory", "off"), ("stream", "on")):
        said = []
        cfg = TrainConfig(out=str(tmp_path / name), train=str(train_pq), valid=str(valid_pq),
                          model=str(tiny_pair_model_dir), max_steps=4, log_every=1, batch_size=16, lr=2e-3, seed=0,
                          max_length=32, precision="fp32", ngram="off", calibrate=False, trim_vocab=True,
                          token_store=mode, **PAIR_COLS)
        runs[name] = (*_train_keeping_data(cfg, said), said)
    (mem_card, mem, mem_said), (card, stream, said) = runs["memory"], runs["stream"]
    assert isinstance(stream.train_ds, FS.StoredDataset) and stream.train_ds.pairs is not None
    assert len(stream.train_ids) == len(mem.train_ids) == 900
    assert all(np.array_equal(mem.train_ids[i], stream.train_ids[i]) and
               np.array_equal(mem.train_types[i], stream.train_types[i]) for i in range(900))
    assert any(stream.train_types[i].any() for i in range(900))
    losses = {name: [r["loss"] for r in map(json.loads, (tmp_path / name / "train_log.jsonl").read_text()
                                            .splitlines()) if "loss" in r] for name in runs}
    assert len(losses["memory"]) == 4 and losses["memory"] == losses["stream"]
    assert card["data"]["train"] == mem_card["data"]["train"]
    cut = next(s for s in said if s.startswith("tokenized"))
    assert "per training pair" in cut and "the first text shortened in" in cut and "with token type ids" in cut
    assert any(s.startswith("token store:") and "built in" in s for s in said)


def test_a_streamed_pair_file_holds_out_whole_groups(tiny_pair_model_dir, pair_slices, tmp_path, monkeypatch):
    """--group-col on a streamed file: every premise on one side, about --valid-frac of the rows held out, no
    repeated-text hint; the validation split's pairs and token type ids reach scoring and the card."""
    from bertclf.data.file_store import StoredDataset
    from bertclf.train.loop import TrainConfig

    monkeypatch.setenv("BERTCLF_CACHE", str(tmp_path / "cache"))
    said = []
    card, data = _train_keeping_data(TrainConfig(
        out=str(tmp_path / "run"), train=str(pairs_parquet(pair_slices["train"], tmp_path / "train.parquet")),
        model=str(tiny_pair_model_dir), group_col="sentence1", valid_frac=0.2, token_store="on", max_steps=2,
        batch_size=16, lr=2e-3, seed=0, max_length=32, precision="fp32", **PAIR_COLS), said)
    assert isinstance(data.train_ds, StoredDataset) and isinstance(data.valid_ds, StoredDataset)
    assert np.intersect1d(data.train_ds.groups, data.valid_ds.groups).size == 0
    assert len(data.train_ds) + len(data.valid_ds) == 900 and len(data.valid_ds) == 180  # 60 premises of 3 pairs
    assert card["data"]["train"]["groups"] + card["data"]["valid"]["groups"] == 300
    assert data.valid_types is not None and card["metrics"]["valid"]["n"] == 180
    assert not any("hint:" in s for s in said) and card["data"]["group_col"] == "sentence1"


# ---------------------------------------------------------------- eval, predict, Classifier

def test_eval_scores_held_out_pairs_as_classifier_predict_does(pair_run, pair_slices, capsys):
    from bertclf.cli import main
    from bertclf.data.dataset import read_labelled
    from bertclf.inference.classifier import Classifier

    run, _ = pair_run
    capsys.readouterr()
    assert main(["eval", str(run), "--test", str(pair_slices["test"]), "--json", "--precision", "fp32"]) == 0
    rep = json.loads(capsys.readouterr().out)
    ds = read_labelled(pair_slices["test"], "sentence1", "gold_label", pair_col="sentence2")
    clf = Classifier.load(str(run), precision="fp32")
    preds = clf.predict(list(zip(ds.texts, ds.pairs)))
    assert rep["n"] == 180 and rep["accuracy"] == pytest.approx(np.mean([p["label"] == y for p, y in
                                                                        zip(preds, ds.labels)]))
    # one pair alone: a tuple or the Inference API's dict, the same answer
    one = clf.predict((ds.texts[0], ds.pairs[0]))
    assert one == clf.predict({"text": ds.texts[0], "text_pair": ds.pairs[0]}) == preds[0]


def test_eval_and_predict_default_to_the_cards_pair_columns(tiny_pair_model_dir, pair_slices, tmp_path, capsys):
    """A pair model trained on a header-less file (--columns): eval and predict read both columns of such a file
    without a flag, as with every flag given (the text_pair_col case of tests/io/test_card_defaults.py)."""
    from bertclf.cli import main
    from bertclf.train.loop import TrainConfig, train

    run = tmp_path / "run"
    train(TrainConfig(out=str(run), train=str(pair_slices["headerless"]), columns=["premise", "hypothesis", "y"],
                      text_col="premise", text_pair_col="hypothesis", label_col="y", model=str(tiny_pair_model_dir),
                      max_steps=3, batch_size=16, seed=0, max_length=32, precision="fp32", ngram="off"),
          echo=lambda s: None)
    every = ["--columns", "premise,hypothesis,y", "--text-col", "premise", "--text-pair-col", "hypothesis"]
    reports = []
    for flags in ([], every + ["--label-col", "y"]):
        capsys.readouterr()
        assert main(["eval", str(run), "--test", str(pair_slices["headerless"]), "--json", "--precision", "fp32",
                     *flags]) == 0, capsys.readouterr().err
        rep = json.loads(capsys.readouterr().out)
        rep.pop("seconds")
        reports.append(rep)
    assert reports[0] == reports[1] and reports[0]["n"] == 900
    outs = []
    for flags in ([], every):
        out = tmp_path / f"p{len(outs)}.jsonl"
        assert main(["predict", str(run), "--input", str(pair_slices["headerless"]), "--output", str(out),
                     "--precision", "fp32", *flags]) == 0
        outs.append(out.read_text(encoding="utf-8"))
    assert outs[0] == outs[1] and outs[0].count("\n") == 900
    first = json.loads(outs[0].splitlines()[0])
    assert set(first) >= {"row", "text", "text_pair", "label", "probabilities"}


def test_predict_reads_pairs_from_tsv_csv_jsonl_and_the_command_line(pair_run, pair_slices, tmp_path):
    """One answer per pair whichever way it comes in: the training TSV's columns, a CSV, a JSONL with the
    Inference API's field names, and --pair TEXT TEXT_PAIR on the command line; each equals Classifier.predict."""
    from bertclf.data.dataset import read_labelled
    from bertclf.inference.classifier import Classifier

    run, _ = pair_run
    ds = read_labelled(pair_slices["test"], "sentence1", "gold_label", pair_col="sentence2")
    pairs = list(zip(ds.texts, ds.pairs))[:12]
    expected = Classifier.load(str(run), precision="fp32").predict(pairs)
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": a, "text_pair": b}, ensure_ascii=False) + "\n" for a, b in pairs),
                     encoding="utf-8")
    with open(tmp_path / "pairs.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([["sentence1", "sentence2"], *pairs])
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("sentence1\tsentence2\n" + "".join(f"{a}\t{b}\n" for a, b in pairs), encoding="utf-8")
    for source in (["--input", jsonl], ["--input", tmp_path / "pairs.csv"], ["--input", tsv],
                   [x for a, b in pairs for x in ("--pair", a, b)]):
        out = tmp_path / "out.jsonl"
        r = bertclf("predict", run, *source, "--output", out, "--precision", "fp32")
        assert r.returncode == 0, r.stderr
        got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        assert [(g["text"], g["text_pair"]) for g in got] == pairs, source[:2]
        assert [g["label"] for g in got] == [e["label"] for e in expected]
        assert [g["score"] for g in got] == pytest.approx([e["score"] for e in expected], abs=1e-5)


# ---------------------------------------------------------------- serve, transformers.pipeline

def test_serve_answers_the_inference_api_pair_form_and_refuses_single_texts(pair_run, pair_slices, tmp_path):
    """A real server on localhost: {"inputs": {"text", "text_pair"}} and a list of them are answered as
    Classifier.predict answers the pairs; a single text sent to a pair model is a 422 with one line."""
    httpx = pytest.importorskip("httpx")
    from _server_process import ServerProcess

    from bertclf.data.dataset import read_labelled
    from bertclf.inference.classifier import Classifier

    run, _ = pair_run
    ds = read_labelled(pair_slices["test"], "sentence1", "gold_label", pair_col="sentence2")
    pairs = list(zip(ds.texts, ds.pairs))[:5]
    expected = Classifier.load(str(run), precision="fp32").predict(pairs)
    server = ServerProcess(run, tmp_path, ["--precision", "fp32"])
    try:
        one = httpx.post(f"{server.url}/predict", json={"inputs": {"text": pairs[0][0], "text_pair": pairs[0][1]}},
                         timeout=30)
        assert one.status_code == 200, one.text
        assert one.json()[0][0]["label"] == expected[0]["label"]
        assert one.json()[0][0]["score"] == pytest.approx(expected[0]["score"], abs=1e-5)
        many = httpx.post(f"{server.url}/predict", json={"inputs": [{"text": a, "text_pair": b} for a, b in pairs]},
                          timeout=30)
        assert many.status_code == 200, many.text
        assert [r[0]["label"] for r in many.json()] == [e["label"] for e in expected]
        for body, says in (({"inputs": "전제 하나"}, "reads sentence pairs"),
                           ({"inputs": {"text": "전제"}}, "needs both fields"),
                           ({"inputs": [{"text": "전제", "text_pair": " "}]}, "inputs[0].text_pair is empty")):
            r = httpx.post(f"{server.url}/predict", json=body, timeout=30)
            assert r.status_code == 422 and says in r.json()["error"] and "\n" not in r.json()["error"], r.text
    finally:
        server.terminate()


def test_pipeline_on_the_saved_directory_answers_text_and_text_pair(pair_run, pair_slices):
    """transformers.pipeline on the run folder takes {"text", "text_pair"} as is and gives bertclf's answer: the
    saved tokenizer carries the pair template and its token type ids."""
    from transformers import pipeline

    from bertclf.data.dataset import read_labelled
    from bertclf.inference.classifier import Classifier

    run, _ = pair_run
    ds = read_labelled(pair_slices["test"], "sentence1", "gold_label", pair_col="sentence2")
    clf = Classifier.load(str(run), precision="fp32")
    pipe = pipeline("text-classification", model=str(run))
    for a, b in list(zip(ds.texts, ds.pairs))[:6]:
        got = pipe({"text": a, "text_pair": b})
        got = got[0] if isinstance(got, list) else got
        want = clf.predict((a, b))
        assert got["label"] == want["label"] and got["score"] == pytest.approx(want["score"], abs=1e-5)


# ---------------------------------------------------------------- ONNX export, int8 check

def test_onnx_export_and_int8_check_carry_token_type_ids(pair_run, pair_slices, tmp_path):
    """The export of a pair model has a token_type_ids input and gives torch's probabilities on pairs; the int8
    check runs on the rebuilt (premise-grouped) validation pairs; predict on the export reads the pair file."""
    pytest.importorskip("onnxruntime")
    import onnx

    from bertclf.data.dataset import read_labelled
    from bertclf.inference.classifier import Classifier

    run, _ = pair_run
    ds = read_labelled(pair_slices["test"], "sentence1", "gold_label", pair_col="sentence2")
    pairs = list(zip(ds.texts, ds.pairs))
    # logits, relative to their size: the tiny model learns no NLI, so its fitted temperature makes them small
    torch_logits = Classifier.load(str(run), precision="fp32").logits(pairs)
    scale = np.abs(torch_logits).max()
    fp32, int8 = tmp_path / "fp32", tmp_path / "int8"
    r = bertclf("export", run, "--onnx", "--out", fp32)
    assert r.returncode == 0, r.stderr[-2000:]
    graph = onnx.load(str(fp32 / "model.onnx"))
    assert [i.name for i in graph.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    onnx_clf = Classifier.load(str(fp32))
    assert onnx_clf.backend == "onnx"
    assert np.abs(onnx_clf.logits(pairs) - torch_logits).max() < 1e-4 * scale
    # the types matter: the same ids with all-zero type ids give other logits (so a dropped input would show)
    from bertclf.data.long_text import encode_long

    enc = encode_long(onnx_clf.tokenizer, ds.texts[:20], onnx_clf.max_length, pairs=ds.pairs[:20])
    with_types = onnx_clf.model.predict_logits(enc.ids, onnx_clf.pad_id, types=enc.types)
    without = onnx_clf.model.predict_logits(enc.ids, onnx_clf.pad_id)
    assert np.abs(with_types - without).max() > 1e-3 * scale
    r = bertclf("export", run, "--onnx", "--int8", "--min-agreement", "0.5", "--out", int8)
    assert r.returncode == 0, r.stderr[-2000:]
    card = json.loads((int8 / "bertclf.json").read_text())
    check = card["export"]["int8_check"]
    assert "validation rows" in check["rows_from"] and check["rows"] == json.loads(
        (run / "bertclf.json").read_text())["data"]["valid"]["rows"]
    out = tmp_path / "onnx.jsonl"
    r = bertclf("predict", int8, "--input", pair_slices["test"], "--output", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(out.read_text(encoding="utf-8").splitlines()) == 180


# ---------------------------------------------------------------- --shard, Ray

def test_shards_of_a_pair_file_add_up_to_the_whole(pair_run, pair_slices, tmp_path):
    run, _ = pair_run
    outs = []
    for spec in ("all", "0/2", "1/2"):
        out = tmp_path / f"{spec.replace('/', '-')}.jsonl"
        flags = [] if spec == "all" else ["--shard", spec]
        r = bertclf("predict", run, "--input", pair_slices["test"], "--output", out, "--precision", "fp32", *flags)
        assert r.returncode == 0, r.stderr
        outs.append([json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()])
    whole, even, odd = outs
    union = sorted(even + odd, key=lambda x: x["row"])
    assert [x["row"] for x in union] == [x["row"] for x in whole] and {x["row"] % 2 for x in even} == {0}
    assert all(same_prediction(a, b) for a, b in zip(union, whole))  # not bit-identical: tests/support/same_rows.py
    assert all("text_pair" in x for x in whole)


def test_ray_engine_writes_the_local_pair_records(pair_run, pair_slices, tmp_path):
    """--engine ray (a local Ray instance, 2 actors) writes the local engine's records for a pair file."""
    pytest.importorskip("ray")
    run, _ = pair_run
    local, ray_out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert bertclf("predict", run, "--input", pair_slices["test"], "--output", local, "--precision", "fp32"
                   ).returncode == 0
    r = bertclf("predict", run, "--input", pair_slices["test"], "--output", ray_out, "--precision", "fp32",
                "--engine", "ray", "--workers", 2, extra_env={"RAY_USAGE_STATS_ENABLED": "0"}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = [json.loads(line) for line in ray_out.read_text(encoding="utf-8").splitlines()]
    want = [json.loads(line) for line in local.read_text(encoding="utf-8").splitlines()]
    assert [(g["row"], g["text"], g["text_pair"], g["label"]) for g in got] == \
        [(w["row"], w["text"], w["text_pair"], w["label"]) for w in want]
    assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want], abs=1e-5)


# ---------------------------------------------------------------- bad pair input: one line, exit 2

def _one_line_error(capsys, argv) -> str:
    from bertclf.cli import main

    capsys.readouterr()
    status = main([str(a) for a in argv])
    err = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("bertclf: warning")]
    assert status == 2 and len(err) == 1 and err[0].startswith("bertclf: error: "), (status, err[-3:])
    return err[0]


def test_bad_pair_input_is_one_line(pair_run, pair_slices, trained_tiny_dir, nsmc_slices, tiny_pair_model_dir,
                                    tmp_path, capsys):
    run, _ = pair_run
    train = ["train", "--train", pair_slices["train"], "--model", tiny_pair_model_dir, "--text-col", "sentence1",
             "--label-col", "gold_label", "--out", tmp_path / "never"]
    cases = [
        (train + ["--text-pair-col", "hypothesis"], "column 'hypothesis' not in header"),
        (train + ["--text-pair-col", "sentence1"], "--text-col and --text-pair-col are both 'sentence1'"),
        (train + ["--text-pair-col", "sentence2", "--long-text", "head-tail"], "--long-text: head-tail is for single"),
        (train + ["--group-col", "premise"], "column 'premise' not in header"),
        (train + ["--group-col", "sentence1", "--valid", pair_slices["test"]], "--group-col: groups the validation"),
        # a single-text file for the pair model: its second column is missing
        (["eval", run, "--test", nsmc_slices["test"], "--text-col", "document", "--label-col", "label"],
         "column 'sentence2' not in header"),
        (["predict", run, "--input", nsmc_slices["test"], "--text-col", "document"],
         "column 'sentence2' not in header"),
        # a single text sent to the pair model, a pair to a single-text model
        (["predict", run, "전제 하나"], "reads sentence pairs"),
        (["predict", trained_tiny_dir, "--pair", "전제", "가설"], "reads single texts"),
        (["eval", trained_tiny_dir, "--test", pair_slices["test"], "--text-pair-col", "sentence2"],
         "reads single texts"),
        (["predict", run, "--explain", "전제 하나"], "reads sentence pairs"),
        (["predict", trained_tiny_dir, "--explain", "--pair", "전제", "가설"], "reads single texts"),
        (["eval", run, "--test", pair_slices["test"], "--long-text", "window"], "not supported for sentence pairs"),
        (["distill", run, "--layers", 1, "--out", tmp_path / "never"], "distilling pair models is not supported"),
    ]
    for argv, says in cases:
        line = _one_line_error(capsys, argv)
        assert says in line, (argv[:2], line)
    assert not (tmp_path / "never").exists()


# ---------------------------------------------------------------- demo page, report

def test_the_report_names_both_text_columns(pair_run):
    from bertclf.report import write_report

    run, _ = pair_run
    html = Path(write_report([str(run)])).read_text(encoding="utf-8")
    assert "sentence1 / sentence2 / gold_label" in html and "validation split grouped by" in html


# ---------------------------------------------------------------- word scores on both sides (--explain, demo)

@pytest.fixture(scope="module")
def explain_run(tiny_pair_model_dir, pair_slices, tmp_path_factory) -> Path:
    """A pair run whose probabilities move with the words. The tiny model learns no NLI: trained, it settles on the
    label prior (pair_run's fitted temperature, ~50, flattens it to 1/3), and its word scores are ~1e-7, float
    noise. So: one step at a negligible rate (a run directory and card), then its random-start head scaled 100x;
    its pairs' p(label) - p(label | baseline) are then ~1e-4, three orders over float32's rounding."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from bertclf.train.loop import TrainConfig, train

    out = tmp_path_factory.mktemp("explainrun") / "run"
    train(TrainConfig(out=str(out), train=str(pair_slices["train"]), model=str(tiny_pair_model_dir), max_steps=1,
                      batch_size=16, lr=1e-6, seed=0, max_length=64, precision="fp32", calibrate=False,
                      ngram="off", group_col="sentence1", **PAIR_COLS), echo=lambda s: None)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    with torch.no_grad():
        model.classifier.weight.mul_(100)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def pair_clf(explain_run):
    pytest.importorskip("captum")
    from bertclf.inference.classifier import Classifier

    return Classifier.load(str(explain_run), precision="fp32", compile="off")


@pytest.fixture(scope="module")
def test_pairs(pair_slices, pair_clf) -> list[tuple[str, str]]:
    """Test pairs that fit in 40 tokens (room for a word more under the model's 64)."""
    from bertclf.data.dataset import read_labelled

    ds = read_labelled(pair_slices["test"], "sentence1", "gold_label", pair_col="sentence2")
    return [(a, b) for a, b in zip(ds.texts, ds.pairs) if len(pair_clf.tokenizer(a, b)["input_ids"]) <= 40]


def _assert_words_of(text: str, words: list[dict]) -> None:
    assert [w["token"] for w in words] == text.split()
    assert all(text[w["start"]:w["end"]] == w["token"] for w in words)


def test_explain_scores_the_words_of_each_text_of_a_pair(pair_clf, test_pairs):
    """The pair is attributed as the model reads it (its token type ids too: label and probability are
    predict's), and each side's pieces land on that side's words: the scores of both sides add up to
    p(label) - p(label | baseline), and a word only the second text has is scored there."""
    from bertclf.inference.explain import explain

    a, b = test_pairs[0]
    extra = next(w for _, other in test_pairs[1:] for w in other.split() if w not in a and w not in b)
    b = f"{b} {extra}"
    ex = explain(pair_clf, (a, b))
    _assert_words_of(a, ex["tokens"])
    _assert_words_of(b, ex["tokens_pair"])
    assert not ex["truncated"] and not ex["truncated_pair"]
    want = pair_clf.predict((a, b))
    # the segment ids were fed: predict's probability, and not the one without them
    assert ex["label"] == want["label"] and ex["score"] == pytest.approx(want["score"], abs=1e-6)
    assert abs(ex["score"] - _probability_without_token_types(pair_clf, a, b, ex["label"])) > 1e-4
    diff = ex["score"] - ex["baseline_score"]
    total = sum(w["score"] for w in ex["tokens"] + ex["tokens_pair"])
    assert abs(diff) > 5e-5 and total == pytest.approx(diff, abs=0.05 * abs(diff) + 2 * ex["convergence_delta"])
    assert ex["tokens_pair"][-1]["token"] == extra and ex["tokens_pair"][-1]["score"] != 0
    assert any(w["score"] != 0 for w in ex["tokens"]) and any(w["score"] != 0 for w in ex["tokens_pair"][:-1])
    # the dict form (the Inference API's) is the same pair
    again = explain(pair_clf, {"text": a, "text_pair": b}, steps=8)
    assert [w["token"] for w in again["tokens_pair"]] == b.split() and again["steps"] == 8


def _probability_without_token_types(clf, a: str, b: str, label: str) -> float:
    """p(label) of the pair with every token type id 0: what a path that dropped the segment ids would give."""
    import torch

    enc = clf.tokenizer(a, b, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        probs = torch.softmax(clf.model(**enc).logits[0], -1)
    return float(probs[clf.labels.index(label)])


def test_explain_on_a_cut_pair_marks_the_side_that_was_cut(pair_clf, test_pairs):
    """Cut longest-first, as predict cuts it: a long first text loses its tail, the short second text is whole."""
    from bertclf.inference.explain import explain

    a, b = test_pairs[0]
    long_a = " ".join([a] * 6)
    limit = 2 * len(pair_clf.tokenizer(b, add_special_tokens=False)["input_ids"]) + 8  # b fits beside a's cut
    ex = explain(pair_clf, (long_a, b), steps=4, max_tokens=limit)
    assert ex["truncated"] and not ex["truncated_pair"] and ex["max_tokens"] == limit
    assert 0 < len(ex["tokens"]) < len(long_a.split())
    assert [w["token"] for w in ex["tokens"]] == long_a.split()[:len(ex["tokens"])]
    _assert_words_of(b, ex["tokens_pair"])


def test_predict_explain_prints_and_writes_both_texts_words(explain_run, test_pairs, tmp_path, capsys):
    """The terminal shows each text with its own words for and against; --output writes records with both
    texts and both word lists (rows numbered as predict numbers them: a pair with an empty side is skipped)."""
    from bertclf.cli import main

    run = explain_run
    (a, b), (c, d) = test_pairs[:2]
    capsys.readouterr()
    assert main(["predict", str(run), "--explain", "--precision", "fp32", "--pair", a, b]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"  text: {a}" and lines[2].startswith("    toward ")
    at = lines.index(f"  text_pair: {b}")
    assert lines[at + 1].startswith("    toward ")
    src, out = tmp_path / "pairs.jsonl", tmp_path / "explained.jsonl"
    src.write_text("".join(json.dumps({"text": x, "text_pair": y}, ensure_ascii=False) + "\n"
                           for x, y in ((a, b), (c, " "), (c, d))), encoding="utf-8")
    assert main(["predict", str(run), "--explain", "--precision", "fp32", "--input", str(src),
                 "--output", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["row"] for r in records] == [0, 2]
    for r, (x, y) in zip(records, ((a, b), (c, d))):
        assert (r["text"], r["text_pair"]) == (x, y)
        _assert_words_of(x, r["tokens"])
        _assert_words_of(y, r["tokens_pair"])


def test_demo_server_scores_both_texts_and_the_page_shades_both_boxes(explain_run, test_pairs, tmp_path):
    """A real `bertclf serve` of the pair model on 127.0.0.1: POST /explain takes the Inference API's pair form
    and answers both texts' words; a single text is a 422 naming the pair form; in headless Chromium, both
    boxes typed and Ctrl+Enter shade the words of both texts with the endpoint's scores."""
    pytest.importorskip("captum")
    from _server_process import ServerProcess
    from headless_chromium import chromium_driver

    a, b = test_pairs[3]
    server = ServerProcess(explain_run, tmp_path, ["--precision", "fp32"])
    try:
        import httpx

        with httpx.Client(base_url=server.url, timeout=120) as client:
            r = client.post("/explain", json={"inputs": {"text": a, "text_pair": b}})
            assert r.status_code == 200, r.text
            ex = r.json()
            _assert_words_of(a, ex["tokens"])
            _assert_words_of(b, ex["tokens_pair"])
            assert ex["label"] == client.post("/predict", json={"inputs": {"text": a, "text_pair": b}}
                                              ).json()[0][0]["label"]
            for body, says in (({"inputs": a}, "reads sentence pairs"),
                               ({"inputs": {"text": a, "text_pair": " "}}, "inputs.text_pair is empty"),
                               ({"inputs": [{"text": a, "text_pair": b}]}, "one sentence pair")):
                r = client.post("/explain", json=body)
                assert r.status_code == 422 and says in r.json()["error"], r.text
            page = client.get("/").text  # two boxes, the script posting the Inference API's pair form
            assert 'id="text_pair"' in page and '"pair": true' in page and '"explain": true' in page
            spec = client.get("/openapi.json").json()["components"]["schemas"]["ExplainRequest"]
            assert spec["properties"]["inputs"]["required"] == ["text", "text_pair"]
        with chromium_driver() as browser:
            _browser_shades_both_boxes(browser, server.url, a, b, ex)
    finally:
        server.terminate(timeout=30)
    assert "Traceback" not in server.err.read_text()


def _browser_shades_both_boxes(browser, url: str, a: str, b: str, ex: dict) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url + "/")
    browser.find_element(By.ID, "text").send_keys(a)
    box = browser.find_element(By.ID, "text_pair")
    box.send_keys(b)
    box.send_keys(Keys.CONTROL, Keys.ENTER)
    WebDriverWait(browser, 120).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#shaded-pair .word"))
    for box_id, text, words in (("shaded", a, ex["tokens"]), ("shaded-pair", b, ex["tokens_pair"])):
        shown = browser.find_elements(By.CSS_SELECTOR, f"#{box_id} .word")
        assert [w.text for w in shown] == text.split()
        assert browser.find_element(By.ID, box_id).text == text
        assert [float(w.get_attribute("data-score")) for w in shown] == pytest.approx(
            [w["score"] for w in words], abs=1e-4)
    assert browser.find_element(By.ID, "status").text == ""


# ---------------------------------------------------------------- baseline and audit on pairs

def test_baseline_and_audit_read_pairs_and_keep_groups_together(pair_slices, tmp_path):
    """baseline: pair features (each text's n-grams and their product), a premise-grouped test split; audit:
    premise-grouped out-of-fold probabilities, the TSV with both texts."""
    from bertclf.data.dataset import read_labelled
    from bertclf.models.baseline import PairFeatures, run_baseline

    ds = read_labelled(pair_slices["train"], "sentence1", "gold_label", pair_col="sentence2")
    feats = PairFeatures().fit(ds.inputs())
    x = feats.transform(ds.inputs()[:5])
    width = len(feats.vectorizer.vocabulary_)
    assert x.shape == (5, 3 * width)
    assert np.allclose(x[:, 2 * width:].toarray(), (x[:, :width].multiply(x[:, width:2 * width])).toarray())
    res = run_baseline(train=str(pair_slices["train"]), text_col="sentence1", text_pair_col="sentence2",
                       label_col="gold_label", group_col="sentence1", log=lambda s: None)
    assert "their product" in res["method"] and res["n_train"] + res["n_test"] == 900
    out = tmp_path / "audit.tsv"
    r = bertclf("audit", "--train", pair_slices["train"], "--text-col", "sentence1", "--text-pair-col", "sentence2",
                "--label-col", "gold_label", "--group-col", "sentence1", "--folds", 3, "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    header = out.read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert header[:4] == ["row", "line", "text", "text_pair"]
    # the page's most suspect rows: both texts, each in a column named after the file's
    from report_pages import tables  # tests/support

    with open(out, encoding="utf-8", newline="") as f:
        flagged = list(csv.DictReader(f, delimiter="\t"))
    shown = tables((tmp_path / "audit.html").read_text(encoding="utf-8"))["audit-rows"]
    assert shown[0][:4] == ["row", "line", "sentence1", "sentence2"] and len(shown) > 1
    assert [r[2:4] for r in shown[1:]] == [[r["text"], r["text_pair"]] for r in flagged[:len(shown) - 1]]


def test_grouped_split_never_puts_a_group_on_both_sides():
    from bertclf.data.dataset import grouped_indices

    rng = np.random.default_rng(0)
    groups = [f"g{rng.integers(0, 97)}" for _ in range(1000)]
    labels = [str(rng.integers(0, 3)) for _ in range(1000)]
    for seed in range(5):
        for frac in (0.05, 0.2, 0.5):
            taken, rest = grouped_indices(groups, labels, frac, seed)
            assert {groups[i] for i in taken}.isdisjoint({groups[i] for i in rest})
            assert sorted(taken + rest) == list(range(1000)) and taken


def test_vocabulary_trim_class_weights_and_multi_label_work_on_pairs(tiny_pair_model_dir, pair_slices, tmp_path):
    """--trim-vocab keeps the pieces of both texts (each second text tokenizes to the same pieces as before the
    trim), with --class-weights auto and --multi-label on the same pairs."""
    from bertclf.data.dataset import read_labelled
    from bertclf.inference.classifier import Classifier
    from bertclf.models.resolve import load_tokenizer
    from bertclf.train.loop import TrainConfig, train

    run = tmp_path / "run"
    card = train(TrainConfig(out=str(run), train=str(pair_slices["train"]), model=str(tiny_pair_model_dir),
                             trim_vocab=True, class_weights="auto", multi_label=True, max_steps=3, batch_size=16,
                             seed=0, max_length=32, precision="fp32", ngram="off", group_col="sentence1",
                             **PAIR_COLS), echo=lambda s: None)
    assert card["classification"]["class_weights"] and card["data"]["group_col"] == "sentence1"
    ds = read_labelled(pair_slices["train"], "sentence1", "gold_label", pair_col="sentence2")
    before, after = load_tokenizer(str(tiny_pair_model_dir)), load_tokenizer(str(run))
    assert len(after) < len(before)  # the slice's test rows had pieces of their own
    for text in ds.pairs:
        assert after.tokenize(text) == before.tokenize(text)
    pred = Classifier.load(str(run), precision="fp32").predict((ds.texts[0], ds.pairs[0]))
    assert "labels" in pred and set(pred["probabilities"]) == {"contradiction", "entailment", "neutral"}


# ---------------------------------------------------------------- the real builtin model (slow)

# Measured 0.5788 on this half of the training premises (4 epochs, bf16, Zen 4 CPU), TF-IDF + LR on the same pairs
# 0.4900, chance 0.333: the floor leaves 2.9 pt for another CPU's precision and rounding
ME5_NLI_FLOOR = 0.55
ME5_NLI_OVER_TFIDF = 0.05


@pytest.mark.slow
@pytest.mark.whole_cpu
def test_me5_small_learns_premise_disjoint_nli(kornli, tmp_path):
    """Defaults only, on benchmarks/quality/datasets.py's NLI split (80% of the 1,670 premises for training, the
    other 20% held out whole), trained on half of the training premises (2,004 pairs) to keep CI under 30 minutes:
    the pair default's ~400 steps give 4 epochs here too (240 steps, ~3.5 min of both cores; all 3,807 pairs took
    5-6.5 min). All of them score 0.6158 (TF-IDF + 10.1 pt, issue 31's target:
    `python -m benchmarks.quality.datasets run nli`). The model must beat TF-IDF + LR trained on the same pairs by 5
    pt (measured +8.9) and clear the floor, far above chance, where a model fed one side or scrambled pairs stays."""
    from bertclf.data import dataset as D
    from bertclf.models.baseline import run_baseline
    from bertclf.train.loop import TrainConfig, train

    nli = D.read_labelled(kornli, "sentence1", "gold_label", pair_col="sentence2", group_col="sentence1")
    test_idx, train_idx = D.grouped_indices(nli.groups, nli.labels, 0.2, 42)
    _, half = D.grouped_indices([nli.groups[i] for i in train_idx], [nli.labels[i] for i in train_idx], 0.5, 42)
    files = {}
    for name, idx in (("train", [train_idx[i] for i in half]), ("test", test_idx)):
        files[name] = tmp_path / f"{name}.tsv"
        with open(files[name], "w", encoding="utf-8", newline="") as f:  # quoted as the reader unquotes
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["sentence1", "sentence2", "gold_label"])
            w.writerows([nli.texts[i], nli.pairs[i], nli.labels[i]] for i in idx)
    card = train(TrainConfig(out=str(tmp_path / "run"), train=str(files["train"]), test=str(files["test"]),
                             group_col="sentence1", **PAIR_COLS), echo=print)
    tfidf = run_baseline(train=str(files["train"]), test=str(files["test"]), text_pair_col="sentence2",
                         **{k: PAIR_COLS[k] for k in ("text_col", "label_col")}, log=lambda s: None)["accuracy"]
    acc = card["metrics"]["test"]["accuracy"]
    assert card["metrics"]["test"]["n"] == len(test_idx) and card["training"]["epochs"] == 4
    assert acc >= ME5_NLI_FLOOR, f"held-out accuracy {acc:.4f} < {ME5_NLI_FLOOR}"
    assert acc >= tfidf + ME5_NLI_OVER_TFIDF, f"held-out accuracy {acc:.4f}, TF-IDF + LR on the same pairs {tfidf:.4f}"


def test_a_file_whose_text_column_repeats_gets_the_group_col_hint(pair_slices):
    from bertclf.data.dataset import load_training_data
    from bertclf.train.config import TrainConfig

    said = []
    load_training_data(TrainConfig(out="unused", train=str(pair_slices["train"]), **PAIR_COLS), log=said.append)
    assert len([s for s in said if "--group-col sentence1" in s]) == 1, said
    said.clear()
    train, valid, _ = load_training_data(TrainConfig(out="unused", train=str(pair_slices["train"]),
                                                     group_col="sentence1", **PAIR_COLS), log=said.append)
    assert not said and set(train.groups).isdisjoint(valid.groups)
