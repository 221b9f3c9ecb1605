"""The n-gram partner (bertclf/models/ngram.py): the weight rule on synthetic probabilities, the pickle-free save/load
round trip against `bertclf baseline`'s own model, and tiny-model runs with the partner (single- and multi-label):
the card, eval's components, predict / Classifier / eval agreeing, the encoder alone, and --ngram off."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bertclf.models import ngram
from bertclf.data.dataset import read_labelled
from bertclf.errors import UserError
from bertclf.data.task import task_from_card

KOTE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kote"


# --- the weight rule ------------------------------------------------------------------------------------------


def synthetic(rng, n: int, accuracy: float, y: np.ndarray) -> np.ndarray:
    """Binary probabilities right on ~`accuracy` of the rows, with confidences spread over (0.5, 1)."""
    right = rng.random(n) < accuracy
    conf = 0.5 + 0.5 * rng.beta(2, 2, n)
    p_true = np.where(right, conf, 1 - conf)
    p = np.empty((n, 2))
    p[np.arange(n), y] = p_true
    p[np.arange(n), 1 - y] = 1 - p_true
    return p


def single_label_task():
    return task_from_card({"classification": {"type": "single_label", "metric": "accuracy"}}, ["neg", "pos"])


def test_weight_leans_to_the_better_model():
    rng = np.random.default_rng(0)
    n = 2000
    y = rng.integers(0, 2, n)
    good, weak = synthetic(rng, n, 0.92, y), synthetic(rng, n, 0.65, y)
    w = ngram.choose_weight(y, good, weak, multi_label=False)["weight"]
    assert w >= 0.7
    w_rev = ngram.choose_weight(y, weak, good, multi_label=False)["weight"]
    assert w_rev <= 0.3


def test_weight_stays_at_the_prior_when_the_two_are_alike():
    """Two equally good, independent models on a few hundred rows: the weight leaves the prior (the encoder's side,
    ngram.PRIOR_WEIGHT) toward the lowest-loss weight only as far as the rows show a difference, and from a prior
    of 0.5 it stays at about 0.5."""
    for seed in range(5):
        rng = np.random.default_rng(seed)
        n = 300
        y = rng.integers(0, 2, n)
        a, b = synthetic(rng, n, 0.8, y), synthetic(rng, n, 0.8, y)
        choice = ngram.choose_weight(y, a, b, multi_label=False)
        assert choice["lowest_loss_weight"] < choice["weight"] <= ngram.PRIOR_WEIGHT, (seed, choice)
        assert choice["log_loss"]["chosen"] - choice["log_loss"]["lowest"] <= choice["standard_error"] + 1e-12
        assert abs(ngram.choose_weight(y, a, b, multi_label=False, prior=0.5)["weight"] - 0.5) <= 0.1, seed


def test_the_rows_move_the_weight_off_the_prior_toward_a_much_better_partner():
    """The prior is where the rule starts, not where it stays: a partner far better on 300 rows takes the weight."""
    rng = np.random.default_rng(7)
    n = 300
    y = rng.integers(0, 2, n)
    choice = ngram.choose_weight(y, synthetic(rng, n, 0.6, y), synthetic(rng, n, 0.95, y), multi_label=False)
    assert choice["weight"] <= 0.3 and choice["weight"] < ngram.PRIOR_WEIGHT
    _, record, _, _ = ngram.judge(single_label_task(), y, np.log(synthetic(rng, n, 0.8, y)), synthetic(rng, n, 0.8, y),
                                  "auto")
    assert f"nearest {ngram.PRIOR_WEIGHT}" in record["rule"]


def test_auto_says_no_when_the_partner_only_hurts():
    rng = np.random.default_rng(1)
    n = 400
    y = rng.integers(0, 2, n)
    encoder = synthetic(rng, n, 0.9, y)
    partner = synthetic(rng, n, 0.3, y)  # worse than chance: it only hurts
    task = single_label_task()
    kept, record, _, _ = ngram.judge(task, y, np.log(encoder), partner, "auto")
    assert not kept and record["kept"] is False and record["files"] == []
    assert record["valid"]["encoder"] > record["valid"]["ngram"]
    assert "n-gram partner: weight" in ngram.describe(record) and "(not kept)" in ngram.describe(record)
    kept_on, record_on, _, _ = ngram.judge(task, y, np.log(encoder), partner, "on")  # on: kept whatever it scores
    assert kept_on and record_on["weight"] == record["weight"]


def test_auto_keeps_a_partner_that_helps():
    rng = np.random.default_rng(2)
    n = 600
    y = rng.integers(0, 2, n)
    kept, record, blend, _ = ngram.judge(single_label_task(), y, np.log(synthetic(rng, n, 0.8, y)),
                                         synthetic(rng, n, 0.8, y), "auto")
    assert kept and record["valid"]["blend"] > max(record["valid"]["encoder"], record["valid"]["ngram"])
    assert blend.dtype == np.float32 and blend.shape == (n, 2)


def test_multilabel_weight_rule_runs_per_label():
    rng = np.random.default_rng(3)
    n, k = 500, 6
    y = (rng.random((n, k)) < 0.3).astype(np.float32)
    good = np.clip(np.where(y > 0, 0.8, 0.2) + rng.normal(0, 0.15, (n, k)), 0.01, 0.99)
    noise = rng.random((n, k))
    assert ngram.choose_weight(y, good, noise, multi_label=True)["weight"] >= 0.8


# --- the saved partner: no pickle, the baseline's exact probabilities ----------------------------------------------


@pytest.fixture(scope="module")
def nsmc_rows(nsmc_slices):
    train = read_labelled(nsmc_slices["train"], "document", "label")
    test = read_labelled(nsmc_slices["test"], "document", "label")
    return train.texts[:1500], np.array([int(v) for v in train.labels[:1500]]), test.texts


def assert_safe_files(folder: Path):
    """Only ngram.json (plain JSON: strings, numbers, lists) and ngram.safetensors (raw arrays): nothing a loader
    could run."""
    from safetensors.numpy import load_file

    meta = json.loads((folder / ngram.JSON_FILE).read_text(encoding="utf-8"))
    assert all(isinstance(v, (str, int, float, bool, list, type(None))) for v in meta["vectorizer"].values())
    arrays = load_file(folder / ngram.ARRAYS_FILE)
    assert all(a.dtype != object for a in arrays.values())
    for name in (ngram.JSON_FILE, ngram.ARRAYS_FILE):
        assert b"\x80\x04\x95" not in (folder / name).read_bytes()[:64]  # no pickle protocol-4 header


def test_round_trip_single_label_equals_the_baseline(nsmc_rows, tmp_path):
    from bertclf.models.baseline import fit_predict

    texts, y, test = nsmc_rows
    fitted = ngram.fit(texts, y, 2, multi_label=False)
    fitted.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [ngram.JSON_FILE, ngram.ARRAYS_FILE]
    assert_safe_files(tmp_path)
    loaded = ngram.NgramPartner.load(tmp_path)
    assert (loaded.vectorizer.transform(test) != fitted.vectorizer.transform(test)).nnz == 0  # the same transform
    reference = fit_predict(texts, y, test, 2)  # `bertclf baseline`'s own fit and scikit-learn's predict_proba
    assert np.abs(loaded.probs(test) - reference).max() < 1e-6
    # three classes (multinomial softmax), one label id never seen (probability 0)
    y3 = np.where(np.arange(len(y)) % 5 == 0, 2, y)
    ngram.fit(texts, y3, 4, multi_label=False).save(tmp_path)
    got = ngram.NgramPartner.load(tmp_path).probs(test)
    assert np.abs(got - fit_predict(texts, y3, test, 4)).max() < 1e-6 and not got[:, 3].any()


def test_round_trip_multi_label_equals_the_baseline(nsmc_rows, tmp_path):
    from bertclf.models.baseline import fit_multilabel

    texts, y, test = nsmc_rows
    rng = np.random.default_rng(0)
    multi = np.zeros((len(texts), 4), np.float32)
    multi[:, 0], multi[:, 1], multi[:, 2] = y, rng.random(len(texts)) < 0.2, 1  # label 2 always on, 3 never
    ngram.fit(texts, multi, 4, multi_label=True).save(tmp_path)
    assert_safe_files(tmp_path)
    got = ngram.NgramPartner.load(tmp_path).probs(test)
    assert np.abs(got - fit_multilabel(texts, multi)(test)).max() < 1e-6
    assert (got[:, 2] == 1).all() and (got[:, 3] == 0).all()  # constant labels at their training prior


def test_a_mismatched_arrays_file_is_refused(nsmc_rows, tmp_path):
    texts, y, _ = nsmc_rows
    ngram.fit(texts[:300], y[:300], 2, multi_label=False).save(tmp_path)
    other = tmp_path / "other"
    ngram.fit(texts[300:600], y[300:600], 2, multi_label=False).save(other)
    (other / ngram.ARRAYS_FILE).replace(tmp_path / ngram.ARRAYS_FILE)
    with pytest.raises(UserError, match="damaged"):
        ngram.NgramPartner.load(tmp_path)


# --- tiny-model runs with a partner ----------------------------------------------------------------------------

RUN = dict(text_col="document", epochs=1, batch_size=32, lr=2e-3, seed=0, sample=0.5, valid_frac=0.1)


def train_tiny(out: Path, nsmc_slices, tiny_model_dir, **kw) -> tuple[dict, list[str]]:
    from bertclf.train.loop import TrainConfig, train

    lines: list[str] = []
    card = train(TrainConfig(out=str(out), train=str(nsmc_slices["train"]), test=str(nsmc_slices["test"]),
                             model=str(tiny_model_dir), **RUN, **kw), echo=lines.append)
    return card, lines


@pytest.fixture(scope="module")
def on_run(tiny_model_dir, nsmc_slices, tmp_path_factory):
    out = tmp_path_factory.mktemp("ngram-on") / "run"
    card, lines = train_tiny(out, nsmc_slices, tiny_model_dir, ngram="on")
    return out, card, lines


@pytest.fixture(scope="module")
def off_run(tiny_model_dir, nsmc_slices, tmp_path_factory):
    out = tmp_path_factory.mktemp("ngram-off") / "run"
    card, lines = train_tiny(out, nsmc_slices, tiny_model_dir, ngram="off")
    return out, card, lines


def test_card_records_the_blend(on_run):
    out, card, lines = on_run
    rec = card["ngram"]
    assert rec["kept"] and rec["mode"] == "on" and 0 <= rec["weight"] <= 1 and rec["metric"] == "accuracy"
    assert set(rec["valid"]) == {"encoder", "ngram", "blend"} and "standard error" in rec["rule"]
    assert set(rec["test"]) == {"encoder", "ngram"}
    assert (out / ngram.JSON_FILE).is_file() and (out / ngram.ARRAYS_FILE).is_file()
    assert_safe_files(out)
    said = [ln for ln in lines if ln.startswith("n-gram partner: weight")]
    assert said == [ngram.describe(rec)] and said[0].endswith("(kept)")
    cal = card["calibration"]  # fitted after the blend, on its log-probabilities; not folded into the head
    assert cal["applied_to"] == "blend" and cal["folded_into"] is None and cal["temperature"] > 0
    assert card["metrics"]["valid"]["accuracy"] == pytest.approx(rec["valid"]["blend"])


def test_eval_reports_the_blend_and_its_components(on_run, nsmc_slices):
    from bertclf.inference.evaluate import evaluate

    out, card, _ = on_run
    rep = evaluate(str(out), test=str(nsmc_slices["test"]), log=lambda s: None)
    assert set(rep["components"]) == {"encoder", "ngram"} and rep["ngram_weight"] == card["ngram"]["weight"]
    enc, ng = rep["components"]["encoder"], rep["components"]["ngram"]
    assert enc["n"] == ng["n"] == rep["n"] == 500
    # the card's test scores are the same (one row of bf16 rounding at most)
    assert abs(rep["accuracy"] - card["metrics"]["test"]["accuracy"]) <= 1 / 500
    assert abs(enc["accuracy"] - card["ngram"]["test"]["encoder"]) <= 1 / 500
    assert ng["accuracy"] == pytest.approx(card["ngram"]["test"]["ngram"])  # numpy only: exact


def test_predict_classifier_and_eval_agree(on_run, nsmc_slices, tmp_path):
    from bertclf.cli import main
    from bertclf.inference.evaluate import evaluate
    from bertclf.inference.classifier import Classifier

    out, _, _ = on_run
    test = read_labelled(nsmc_slices["test"], "document", "label")
    clf = Classifier.load(str(out))
    assert clf.partner is not None
    probs = clf.predict_proba(test.texts)
    dest = tmp_path / "pred.jsonl"
    assert main(["predict", str(out), "--input", str(nsmc_slices["test"]), "--output", str(dest)]) == 0
    rows = [json.loads(x) for x in dest.read_text(encoding="utf-8").splitlines()]
    cli = np.array([[r["probabilities"][lab] for lab in clf.labels] for r in rows])
    assert np.abs(cli - probs).max() < 1e-6
    y = clf.task.encode(test.labels, "test")
    rep = evaluate(str(out), test=str(nsmc_slices["test"]), log=lambda s: None)
    assert rep["accuracy"] == pytest.approx(float((probs.argmax(1) == y).mean()))
    records = clf.predict(test.texts[:20])
    assert [r["label"] for r in records] == [clf.labels[i] for i in probs[:20].argmax(1)]


def test_blend_logits_are_the_blend_of_the_two_sides(on_run, nsmc_slices):
    from scipy.special import softmax

    from bertclf.inference.classifier import Classifier

    out, card, _ = on_run
    texts = read_labelled(nsmc_slices["test"], "document", "label").texts[:64]
    clf = Classifier.load(str(out), precision="fp32")
    parts: dict = {}
    blended, _ = clf.logits_and_cut(texts, parts=parts)
    alone = Classifier.load(str(out), precision="fp32", ngram=False)
    assert alone.partner is None and np.allclose(alone.logits(texts), parts["encoder"], atol=1e-5)
    w, t = card["ngram"]["weight"], card["calibration"]["temperature"]
    expect = w * softmax(parts["encoder"], axis=1) + (1 - w) * np.exp(parts["ngram"])
    assert np.allclose(softmax(blended * t, axis=1), expect, atol=1e-5)


def test_pipeline_loads_the_encoder_alone(on_run):
    from transformers import pipeline

    from bertclf.inference.classifier import Classifier

    out, _, _ = on_run
    texts = ["정말 재밌어요", "시간 아깝다"]
    pipe = pipeline("text-classification", model=str(out), device="cpu", top_k=None)
    alone = Classifier.load(str(out), precision="fp32", ngram=False).predict(texts)
    for got, mine in zip(pipe(texts), alone):
        for d in got:
            assert d["score"] == pytest.approx(mine["probabilities"][d["label"]], abs=1e-5)


def test_off_is_the_model_without_a_partner(on_run, off_run):
    """--ngram off: no partner files, the temperature folded into the head as before, and otherwise the very
    weights and encoder scores of the run with a partner (training is deterministic; only the end differs)."""
    from safetensors.numpy import load_file

    on_dir, on_card, _ = on_run
    off_dir, off_card, off_lines = off_run
    assert off_card["ngram"] is None and not ngram.find(off_dir) and not (off_dir / ngram.ARRAYS_FILE).exists()
    assert not any(ln.startswith("n-gram partner") for ln in off_lines)
    assert off_card["calibration"]["folded_into"].startswith("classifier weights")
    t = off_card["calibration"]["temperature"]
    on_w, off_w = load_file(on_dir / "model.safetensors"), load_file(off_dir / "model.safetensors")
    assert on_w.keys() == off_w.keys()
    head = {k for k in on_w if k.startswith("classifier.")}
    assert head and all(np.array_equal(on_w[k], off_w[k]) for k in on_w if k not in head)
    assert all(np.allclose(on_w[k] / t, off_w[k], rtol=1e-6, atol=1e-7) for k in head)
    assert off_card["metrics"]["valid"]["accuracy"] == pytest.approx(on_card["ngram"]["valid"]["encoder"])
    assert abs(off_card["metrics"]["test"]["accuracy"] - on_card["ngram"]["test"]["encoder"]) <= 1 / 500


def test_auto_not_kept_is_the_model_without_a_partner(off_run, nsmc_slices, tiny_model_dir, tmp_path, monkeypatch):
    """--ngram auto that drops the partner (forced here: weight 1) saves exactly --ngram off's model and metrics,
    and records what the partner scored."""
    from safetensors.numpy import load_file

    real = ngram.choose_weight
    monkeypatch.setattr(ngram, "choose_weight", lambda *a, **kw: real(*a, **kw) | {"weight": 1.0})
    out = tmp_path / "run"
    card, lines = train_tiny(out, nsmc_slices, tiny_model_dir)  # the default: auto
    rec = card["ngram"]
    assert rec["mode"] == "auto" and not rec["kept"] and rec["files"] == [] and not ngram.find(out)
    assert [ln for ln in lines if ln.startswith("n-gram partner")][0].endswith("(not kept)")
    assert set(rec["test"]) == {"encoder", "ngram"} and rec["test"]["encoder"] == card["metrics"]["test"]["accuracy"]
    off_dir, off_card, _ = off_run
    a, b = load_file(out / "model.safetensors"), load_file(off_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    for split in ("valid", "test"):
        got, want = card["metrics"][split], off_card["metrics"][split]
        assert got.keys() == want.keys()
        assert all(got[k] == want[k] for k in ("n", "accuracy", "macro_f1", "weighted_f1"))
        assert got["ece"] == pytest.approx(want["ece"], abs=1e-6)  # probabilities: bf16 inference, to rounding
    assert card["calibration"] == off_card["calibration"]


def test_a_retrained_folder_drops_the_old_partner(on_run, nsmc_slices, tiny_model_dir, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(on_run[0], out)
    card, _ = train_tiny(out, nsmc_slices, tiny_model_dir, ngram="off", overwrite=True, max_steps=2)
    assert card["ngram"] is None and not ngram.find(out)


def test_ngram_flag_is_checked():
    from bertclf.train.config import TrainConfig, validate_config

    with pytest.raises(UserError, match="--ngram: must be auto, on or off"):
        validate_config(TrainConfig(out="x", data="nsmc", ngram="yes"))


# --- multi-label ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ml_run(tiny_model_dir, tmp_path_factory):
    import csv

    if not (KOTE / "val.tsv").is_file():
        pytest.skip("KOTE not in ../shared/data/kote")
    from bertclf.train.loop import TrainConfig, train

    d = tmp_path_factory.mktemp("ngram-ml")
    lines = (KOTE / "val.tsv").read_text(encoding="utf-8").splitlines()
    files = {}
    for name, rows in (("train", lines[:500]), ("test", lines[500:600])):
        with open(d / f"{name}.tsv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["id", "text", "labels"])
            w.writerows(ln.split("\t") for ln in rows)
        files[name] = d / f"{name}.tsv"
    out = d / "run"
    card = train(TrainConfig(out=str(out), train=str(files["train"]), test=str(files["test"]), text_col="text",
                             label_col="labels", multi_label=True, label_names=str(KOTE / "labels.txt"),
                             model=str(tiny_model_dir), epochs=1, batch_size=32, lr=3e-3, seed=0, ngram="on"),
                 echo=lambda s: None)
    return out, card, files


def test_multilabel_blend(ml_run):
    from bertclf.inference.evaluate import evaluate
    from bertclf.inference.classifier import Classifier

    out, card, files = ml_run
    rec = card["ngram"]
    assert rec["kept"] and rec["metric"] == "macro_f1" and card["calibration"] is None
    names = card["labels"]
    assert set(rec["thresholds"]) == {"encoder", "ngram"} and set(rec["thresholds"]["ngram"]) == set(names)
    rep = evaluate(str(out), test=str(files["test"]), log=lambda s: None)
    assert rep["macro_f1"] == pytest.approx(card["metrics"]["test"]["macro_f1"], abs=0.02)
    assert rep["components"]["ngram"]["macro_f1"] == pytest.approx(rec["test"]["ngram"])
    clf = Classifier.load(str(out))
    texts = read_labelled(files["test"], "text", "labels").texts
    probs = clf.predict_proba(texts)
    assert ((probs > 0) & (probs < 1)).all()
    decided = clf.task.decide(probs)
    assert [r["labels"] for r in clf.predict(texts[:10])] == [
        [names[i] for i in np.argsort(-row, kind="stable") if chosen[i]] for row, chosen in zip(probs, decided)][:10]
    alone = Classifier.load(str(out), ngram=False)  # the encoder alone, at its own thresholds
    assert alone.partner is None
    assert list(alone.task.thresholds) == pytest.approx([rec["thresholds"]["encoder"][n] for n in names])
