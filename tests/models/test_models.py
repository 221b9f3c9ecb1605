"""--model resolution: builtin name, local directory, and hub names through the real Hugging Face cache."""
import shutil

import pytest

from bertclf.errors import UserError
from bertclf.models.resolve import load_classifier, load_tokenizer, resolve


def make_hub_cache(cache, repo_id, src):
    """Lay out `src` as the hub cache does after a download: models--org--name/{refs/main,snapshots/<sha>/}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    shutil.copytree(src, folder / "snapshots" / commit)


def test_hub_name_loads_from_the_local_hf_cache_offline(tiny_model_dir, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    make_hub_cache(cache, "bertclf-test/tiny-bert", tiny_model_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    name = resolve("bertclf-test/tiny-bert")
    assert name == "bertclf-test/tiny-bert"
    model = load_classifier(name, {0: "neg", 1: "pos"})
    assert model.config.id2label == {0: "neg", 1: "pos"}
    assert load_tokenizer(name)("좋아요")["input_ids"][0] == 0


def test_uncached_hub_name_offline_names_the_builtin_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match=r"cannot load model 'nobody/no-such-model'.*--model me5-small") as e:
        load_classifier(resolve("nobody/no-such-model"), {0: "a", 1: "b"})
    assert "\n" not in str(e.value)


def test_local_dirs(tiny_model_dir, tmp_path, me5_dir):
    assert resolve(str(tiny_model_dir)) == str(tiny_model_dir)
    assert resolve("me5-small") == str(me5_dir)
    with pytest.raises(UserError, match="no config.json"):
        resolve(str(tmp_path))
    with pytest.raises(UserError, match="model directory not found"):
        resolve("./does/not/exist")
