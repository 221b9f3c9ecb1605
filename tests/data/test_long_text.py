"""Texts longer than --max-length (issue 17 item 3): truncate, head-tail, window; the tiny trained model and the
real tokenizer."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bertclf.data.long_text import HEAD_SHARE, encode_long
from bertclf.data.tokens import encode

from _cli import run_cli  # noqa: E402


@pytest.fixture(scope="module")
def reviews(nsmc_slices):
    from bertclf.data.dataset import read_labelled

    ds = read_labelled(nsmc_slices["test"], "document", "label")
    return ds.texts, ds.labels


@pytest.fixture(scope="module")
def long_texts(reviews):
    """Documents of 21 reviews each (a few hundred tokens)."""
    texts = reviews[0]
    return [" ".join(texts[i:i + 21]) for i in range(0, 21 * 6, 21)]


@pytest.fixture(scope="module")
def tokenizer(trained_tiny_dir):
    from bertclf.models.resolve import load_tokenizer

    return load_tokenizer(str(trained_tiny_dir))


def classifier(model_dir, **kw):
    from bertclf.inference.classifier import Classifier

    return Classifier.load(str(model_dir), device="cpu", precision="fp32", **kw)


def test_truncate_is_the_plain_truncation_and_counts_the_long_texts(tokenizer, reviews, long_texts):
    texts = reviews[0][:50] + long_texts
    enc = encode_long(tokenizer, texts, 64, "truncate")
    plain = encode(tokenizer, texts, 64)
    assert len(enc.ids) == len(texts) and all(np.array_equal(a, b) for a, b in zip(enc.ids, plain))
    full = [len(x) for x in tokenizer(texts)["input_ids"]]
    assert enc.cut == sum(n > 64 for n in full) and enc.cut >= len(long_texts)


def test_window_on_texts_that_fit_equals_truncate_exactly(trained_tiny_dir, reviews):
    texts = reviews[0][:100]
    window = classifier(trained_tiny_dir, long_text="window").logits(texts)
    truncate = classifier(trained_tiny_dir, long_text="truncate").logits(texts)
    assert np.array_equal(window, truncate)


def test_window_logits_are_the_mean_of_the_chunks_by_hand(trained_tiny_dir, tokenizer, long_texts, reviews):
    import torch

    max_length, stride = 32, 8
    # the encoder alone, checked against its own chunk logits (an n-gram partner reads the whole text)
    clf = classifier(trained_tiny_dir, long_text="window", stride=stride, max_length=max_length, ngram=False)
    texts = [long_texts[0], reviews[0][0], long_texts[1]]
    got = clf.logits(texts)
    room = max_length - tokenizer.num_special_tokens_to_add()
    n_chunks = []
    for text, row in zip(texts, got):
        full = tokenizer(text)["input_ids"]  # [CLS] body [SEP] (<s> body </s>)
        body = full[1:-1]
        starts = range(0, max(len(body) - stride, 1), room - stride)  # each chunk repeats `stride` tokens
        chunks = [full[:1] + body[s:s + room] + full[-1:] for s in starts]
        assert chunks[-1][-2] == body[-1]  # the chunks reach the end of the text
        with torch.no_grad():
            each = [clf.model(input_ids=torch.tensor([c])).logits[0].numpy() for c in chunks]
        np.testing.assert_allclose(row, np.mean(each, axis=0), rtol=1e-5, atol=1e-5)
        n_chunks.append(len(chunks))
    assert n_chunks[1] == 1 and min(n_chunks[0], n_chunks[2]) > 2  # the short review is one chunk


def test_head_tail_keeps_the_first_and_the_last_tokens(tokenizer, long_texts, reviews):
    max_length = 64
    enc = encode_long(tokenizer, long_texts + reviews[0][:5], max_length, "head-tail")
    room = max_length - tokenizer.num_special_tokens_to_add()
    head = round(room * HEAD_SHARE)
    assert enc.cut == len(long_texts)
    for text, ids in zip(long_texts, enc.ids):
        full = tokenizer(text)["input_ids"]
        body = full[1:-1]
        assert len(ids) == max_length and len(body) > room
        assert list(ids) == full[:1] + body[:head] + body[-(room - head):] + full[-1:]
    short = encode(tokenizer, reviews[0][:5], max_length)
    assert all(np.array_equal(a, b) for a, b in zip(enc.ids[len(long_texts):], short))  # texts that fit: as is


def test_head_tail_counts_an_unk_at_either_end_as_text(trained_tiny_dir, tokenizer, reviews):
    """A text whose first or last character the vocabulary lacks starts or ends with <unk>, which the special-tokens
    mask also marks: head-tail must still keep exactly max_length tokens (it kept max_length + 1, and at 512 the
    model's position table overflowed with a traceback)."""
    body = " ".join(reviews[0][:120])  # well over 512 tokens
    texts = ["🫠 " + body + " 🫠", "🫠 " + body, body + " 🫠"]
    unk = tokenizer.unk_token_id
    assert tokenizer(texts[2])["input_ids"][-2] == unk  # the case that broke: <unk> right before </s>
    for max_length in (64, 512):
        enc = encode_long(tokenizer, texts, max_length, "head-tail")
        room = max_length - tokenizer.num_special_tokens_to_add()
        head = round(room * HEAD_SHARE)
        for text, ids in zip(texts, enc.ids):
            full = tokenizer(text)["input_ids"]
            assert unk in full[1:3] + full[-2:-1]
            assert list(ids) == full[:1] + full[1:-1][:head] + full[1:-1][-(room - head):] + full[-1:]
    probs = classifier(trained_tiny_dir, max_length=512, long_text="head-tail").predict_proba(texts)
    assert probs.shape == (3, 2) and np.allclose(probs.sum(1), 1)


def test_eval_prints_how_many_rows_were_cut_and_window_works(trained_tiny_dir, reviews, long_texts, tmp_path):
    f = tmp_path / "long.tsv"
    rows = [("document", "label")] + [(t, "1") for t in long_texts]  # the model's training columns + list(zip(reviews[0][:20], reviews[1][:20]))
    f.write_text("".join(f"{a}\t{b}\n" for a, b in rows), encoding="utf-8")
    n = len(rows) - 1
    r = run_cli("eval", trained_tiny_dir, "--test", f, "--precision", "fp32")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{len(long_texts)} of {n} rows longer than 128 tokens: cut to their first tokens" in r.stderr
    r = run_cli("eval", trained_tiny_dir, "--test", f, "--precision", "fp32", "--long-text", "window", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(r.stdout)
    assert rep["long_text"] == {"mode": "window", "max_length": 128, "rows_longer": len(long_texts), "stride": 32}
    assert rep["n"] == n


def test_predict_window_matches_the_library(trained_tiny_dir, long_texts):
    r = run_cli("predict", trained_tiny_dir, long_texts[0], "--long-text", "window", "--precision", "fp32")
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.splitlines()[0])
    want = classifier(trained_tiny_dir, long_text="window").predict(long_texts[0])
    assert got["label"] == want["label"] and got["score"] == pytest.approx(want["score"], abs=1e-6)


@pytest.mark.parametrize("flags, needle", [(["--long-text", "middle"], "--long-text"),
                                           (["--long-text", "window", "--stride", "500"], "--stride"),
                                           (["--stride", "-1"], "--stride")])
def test_bad_long_text_flags_exit_2_with_one_line(trained_tiny_dir, flags, needle, capsys):
    """The CLI's own main() in this process (a subprocess per case would mostly import torch)."""
    from bertclf.cli import main

    status = main(["predict", str(trained_tiny_dir), "some text", *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and needle in err[0], err


def test_training_with_head_tail_is_recorded_and_inference_follows_it(tiny_model_dir, nsmc_slices, tmp_path):
    from bertclf.train.loop import TrainConfig, train

    out = tmp_path / "ht"
    train(TrainConfig(out=str(out), train=str(nsmc_slices["train"]), text_col="document", model=str(tiny_model_dir),
                      sample=0.2, max_steps=2, batch_size=16, lr=2e-3, seed=0, max_length=32,
                      long_text="head-tail"), echo=lambda s: None)
    assert json.loads((out / "bertclf.json").read_text())["args"]["long_text"] == "head-tail"
    assert classifier(out).long_text == "head-tail"
    assert classifier(out, long_text="window").long_text == "window"


def test_serve_window_answers_as_the_library(trained_tiny_dir, long_texts, tmp_path):
    import httpx
    from _server_process import ServerProcess

    server = ServerProcess(trained_tiny_dir, tmp_path, ["--long-text", "window", "--stride", "16",
                                                        "--precision", "fp32"])
    try:
        r = httpx.post(f"{server.url}/predict", json={"inputs": long_texts[:3]}, timeout=120)
    finally:
        server.terminate()
    assert r.status_code == 200, r.text
    want = classifier(trained_tiny_dir, long_text="window", stride=16).predict_proba(long_texts[:3])
    labels = classifier(trained_tiny_dir).labels
    got = np.array([[{d["label"]: d["score"] for d in row}[lab] for lab in labels] for row in r.json()])
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.fixture
def one_thread():
    """On a busy 2-core machine two torch threads per process are several times slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_training_feeds_the_model_the_head_tail_ids_of_long_texts(tiny_model_dir, nsmc_slices, tmp_path, monkeypatch,
                                                                  one_thread):
    """--long-text head-tail in training: the token ids the model is actually given (a forward pre-hook on the
    model the loop trains) are the inference encoder's head-tail ids (encode_long), not the start of the text. The
    card test above passed with a prepare() that dropped the argument and trained on truncated texts."""
    from collections import Counter

    from train_hooks import ForwardPreHook
    from bertclf.data.dataset import read_labelled
    from bertclf.train.loop import TrainConfig, train
    from bertclf.models.resolve import load_tokenizer

    max_length = 24
    fed = {True: [], False: []}  # model.training -> the unpadded id sequences it was given

    def record(module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        fed[module.training] += [tuple(row[m.bool()].tolist()) for row, m in zip(ids.cpu(), mask.cpu())]

    rows = nsmc_slices["train"].read_text(encoding="utf-8").splitlines(keepends=True)[:601]
    f = tmp_path / "train.tsv"
    f.write_text("".join(rows), encoding="utf-8")
    train(TrainConfig(out=str(tmp_path / "ht"), train=str(f), text_col="document", model=str(tiny_model_dir),
                      epochs=1, batch_size=32, lr=2e-3, seed=0, max_length=max_length, precision="fp32",
                      long_text="head-tail"), echo=lambda s: None, callbacks=[ForwardPreHook(record)])

    texts = read_labelled(f, "document", "label").texts
    tok = load_tokenizer(str(tiny_model_dir))
    head_tail = encode_long(tok, texts, max_length, "head-tail")
    expected = Counter(tuple(x.tolist()) for x in head_tail.ids)
    truncated = {tuple(x.tolist()) for x in encode(tok, texts, max_length)}
    long_ht = {tuple(x.tolist()) for x, full in zip(head_tail.ids, tok(texts)["input_ids"]) if len(full) > max_length}
    assert head_tail.cut > 100 and long_ht.isdisjoint(truncated)  # many texts are cut, and the two ways differ

    trained = Counter(fed[True])
    assert sum(trained.values()) >= 540, "every training row once (one epoch of ~570 rows)"
    not_head_tail = [s for s in trained if trained[s] > expected[s]]
    plain = sum(s in truncated for s in not_head_tail)
    assert not not_head_tail, (f"{len(not_head_tail)} of {len(trained)} training inputs are not the head-tail ids of "
                               f"a training text, e.g. {not_head_tail[0]} ({plain} of them are plain truncations)")
    assert sum(s in long_ht for s in fed[True]) > 100, "long texts were trained on, as head + tail"
    validated = set(fed[False])  # scored at each validation and again at the end
    assert validated and validated <= set(expected), "validation inputs: head-tail too"
