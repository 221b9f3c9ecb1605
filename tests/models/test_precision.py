"""CPU matrix features (bertclf/cpu.py) and the precision choice (bertclf/models/precision.py) for train and predict.

Runs on any CPU: bf16 is forced with precision="bf16" where the CPU has no native bf16 (emulated, slow, but
it must run and agree with fp32); what `auto` picks is checked against the CPU's own flags.
"""
from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pytest
import torch

import _cli  # tests/support/_cli.py
from bertclf import cpu
from bertclf.errors import UserError
from bertclf.models.precision import inference_dtype, pick_precision

on_gpu = torch.cuda.is_available()


def run_cli(*args):
    return _cli.run_cli(*args, extra_env={"BERTCLF_NO_PROGRESS": "1"})


def proc_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or not Path("/proc/cpuinfo").is_file(),
                    reason="the cross-check reads x86 flags from /proc/cpuinfo")
def test_features_agree_with_proc_cpuinfo():
    flags = proc_flags()
    assert cpu.native_bf16() == bool({"amx_bf16", "avx512_bf16"} & flags)
    assert cpu.fast_int8() == bool({"amx_int8", "avx512_vnni", "avx_vnni"} & flags)
    assert cpu._proc_cpuinfo_features() >= {f for f in ("amx_bf16", "avx512_bf16", "avx512_vnni", "avx2") if f in flags}
    assert ("avx2" in flags) == ("avx2" in cpu._proc_cpuinfo_features())


def test_describe_names_the_model_and_features():
    text = cpu.describe(threads=3)
    assert text.startswith("cpu: ") and cpu.model_name() in text and text.endswith("; 3 threads)")
    for label in cpu.feature_labels():
        assert label in text
    s = cpu.summary()
    assert s["native_bf16"] == cpu.native_bf16() and s["fast_int8"] == cpu.fast_int8()
    assert ("AMX-BF16" in s["features"] or "AVX512-BF16" in s["features"]) == cpu.native_bf16() or \
        platform.machine() not in ("x86_64", "AMD64")


@pytest.mark.skipif(on_gpu, reason="the CPU rules")
def test_training_precision_on_cpu():
    assert pick_precision("fp32") == "no"
    assert pick_precision("bf16") == "bf16"  # any CPU: emulated where not native
    assert pick_precision("auto") == ("bf16" if cpu.native_bf16() else "no")
    with pytest.raises(UserError, match="fp16: needs a CUDA GPU"):
        pick_precision("fp16")
    with pytest.raises(UserError, match="must be one of"):
        pick_precision("fp8")


def test_auto_follows_the_cpu_feature(monkeypatch):
    """Both sides of the rule on one machine: the feature check is what decides."""
    for native in (True, False):
        monkeypatch.setattr(cpu, "native_bf16", lambda native=native: native)
        assert inference_dtype("auto", "cpu") == (torch.bfloat16 if native else None)
        if not on_gpu:
            assert pick_precision("auto") == ("bf16" if native else "no")
    assert inference_dtype("fp32", "cpu") is None and inference_dtype("bf16", "cpu") is torch.bfloat16
    with pytest.raises(UserError, match="must be one of auto, fp32, bf16"):
        inference_dtype("fp16", "cpu")


@pytest.fixture(scope="module")
def texts(nsmc_slices):
    from bertclf.data.dataset import read_labelled

    return read_labelled(nsmc_slices["test"], "document", "label").texts[:200]


def test_classifier_bf16_agrees_with_fp32(trained_tiny_dir, texts):
    from bertclf.inference.classifier import Classifier

    fp32 = Classifier.load(str(trained_tiny_dir), device="cpu", precision="fp32")
    bf16 = Classifier.load(str(trained_tiny_dir), device="cpu", precision="bf16")
    auto = Classifier.load(str(trained_tiny_dir), device="cpu")
    assert (fp32.precision, bf16.precision) == ("fp32", "bf16")
    assert auto.precision == ("bf16" if cpu.native_bf16() else "fp32")
    a, b = fp32.logits(texts), bf16.logits(texts)
    assert b.dtype == np.float32 and np.isfinite(b).all()
    assert 0 < np.abs(a - b).max() < 0.1 * max(1.0, np.abs(a).max()), "bf16 should differ from fp32, a little"
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.97


def test_bf16_classifier_is_stored_in_bf16_once_and_matches_the_model_cast_whole(trained_tiny_dir, texts):
    """The bf16 Classifier holds every weight in bf16 (cast once at load, not on every call), and its logits are
    bit-identical to the fp32 model cast to bf16 whole and run under autocast; fp32 stays fp32."""
    import torch

    from bertclf.models.forward import predict_logits
    from bertclf.models.resolve import load_classifier
    from bertclf.inference.classifier import Classifier
    from bertclf.data.tokens import encode

    # the encoder alone, against the model cast by hand (an n-gram partner would blend its logits)
    bf16 = Classifier.load(str(trained_tiny_dir), device="cpu", precision="bf16", ngram=False)
    params = list(bf16.model.parameters())
    assert params and all(p.dtype == torch.bfloat16 for p in params)
    cast_whole = load_classifier(str(trained_tiny_dir)).eval().to(torch.bfloat16)
    ids = encode(bf16.tokenizer, texts, bf16.max_length)
    under_autocast = predict_logits(cast_whole, ids, bf16.pad_id, 64, autocast_dtype=torch.bfloat16)
    assert np.array_equal(bf16.logits(texts), under_autocast)
    fp32 = Classifier.load(str(trained_tiny_dir), device="cpu", precision="fp32")
    assert all(p.dtype == torch.float32 for p in fp32.model.parameters())


def test_explain_runs_on_a_bf16_classifier(trained_tiny_dir):
    from bertclf.inference.explain import explain
    from bertclf.inference.classifier import Classifier

    out = explain(Classifier.load(str(trained_tiny_dir), device="cpu", precision="bf16"), "정말 재밌어요 최고", steps=8)
    assert out["tokens"] and all(np.isfinite(t["score"]) for t in out["tokens"])


def test_cli_precision_flags(trained_tiny_dir, nsmc_slices, tmp_path):
    r = run_cli("predict", trained_tiny_dir, "정말 재밌어요", "--precision", "bf16")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[0])["label"] in ("0", "1")
    r = run_cli("eval", trained_tiny_dir, "--test", nsmc_slices["test"], "--text-col", "document", "--json",
                "--precision", "bf16")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["precision"] == "bf16" and rep["accuracy"] > 0.5
    r = run_cli("predict", trained_tiny_dir, "x", "--precision", "fp16")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--precision fp16" in r.stderr


def test_train_in_bf16_on_any_cpu(tiny_model_dir, nsmc_slices, tmp_path):
    """--precision bf16 trains (autocast through Accelerate) and records itself; on CPUs without native bf16
    it is emulated, so only a few steps."""
    from bertclf.train.loop import TrainConfig, train

    out = tmp_path / "bf16"
    card = train(TrainConfig(out=str(out), train=str(nsmc_slices["train"]), text_col="document",
                             model=str(tiny_model_dir), sample=0.2, max_steps=8, batch_size=16, lr=2e-3, seed=0,
                             precision="bf16"), echo=lambda s: None)
    assert card["training"]["precision"] == "bf16"
    assert card["metrics"]["valid"]["accuracy"] > 0
    assert json.loads((out / "bertclf.json").read_text())["training"]["precision"] == "bf16"
