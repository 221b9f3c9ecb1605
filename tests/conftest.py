"""Shared fixtures: NSMC location, the builtin model, and a tiny random-weight BERT with the real tokenizer.

In CI (the `CI` environment variable set, as .ci/run and hosted CI services do) a skip is a failure: a suite
that skips its data, browser or server tests must not pass. Only tests marked `gpu` (CI has no GPU) or `hardware`
(a precondition that depends on the CPU) may skip there. Every skip names what is missing; `-rs` (pyproject.toml)
prints the reasons."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "support"))  # the tests' shared helpers (tests/support/), importable by name
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on the two cores: one thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the CLI processes the tests start
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    os.environ.setdefault("BERTCLF_THREADS", "1")  # onnxruntime's sessions: two spinning threads slowed the other
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # worker's fine-tune 3-4x (KOTE 80 s alone, 330 s)


def pytest_configure(config):
    """With pytest-xdist workers: a folder for their locks (tests/support/whole_cpu.py), made before they start."""
    if not os.environ.get("PYTEST_XDIST_WORKER") and (config.getoption("numprocesses", None) or 0) > 0:
        import tempfile

        os.environ["BERTCLF_TEST_LOCKS"] = tempfile.mkdtemp(prefix="bertclf-test-locks-")


def pytest_unconfigure(config):
    if not os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("BERTCLF_TEST_LOCKS"):
        import shutil

        shutil.rmtree(os.environ.pop("BERTCLF_TEST_LOCKS"), ignore_errors=True)


@pytest.fixture(autouse=True)
def _cpu_turn(request):
    """Tests marked whole_cpu (real fine-tunes) run alone on both threads; the others wait for them."""
    from whole_cpu import machine_shared, whole_cpu

    with whole_cpu() if request.node.get_closest_marker("whole_cpu") else machine_shared():
        yield


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _may_skip_in_ci(item) -> bool:
    """gpu tests (CI has no GPU) and hardware tests (their precondition depends on the CPU, e.g. a quantization
    outcome that only some CPUs give) may skip in CI; nothing else may."""
    return item is not None and any(item.get_closest_marker(m) is not None for m in ("gpu", "hardware"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci() and not _may_skip_in_ci(item) and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI is set, so this skip fails the run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci():  # a whole module skipped, e.g. by pytest.importorskip
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI is set, so skipping {collector.nodeid} fails the run: {reason}"


# The longest test files, longest first. `make test`'s workers take whole files in collection order, so these
# start at once on both workers and the short files fill in around them, instead of one worker finishing a
# ten-minute fine-tune alone at the end (seconds per file: the suite's --durations).
LONGEST_FIRST = ("tests/models/test_me5_finetune.py", "tests/test_pairs.py", "tests/models/test_me5_tasks.py",
                 "tests/inference/test_ray_predict.py", "tests/export/test_export.py", "tests/test_mutation_gate.py",
                 "tests/train/test_distributed.py", "tests/inference/test_engine_equivalence.py",
                 "tests/serve/test_server_memory.py", "tests/test_task_matrix.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).relative_to(REPO).as_posix(), len(rank)))


def nsmc_dir_or_none() -> Path | None:
    for d in (os.environ.get("BERTCLF_DATA_DIR"), REPO.parent / "shared" / "data" / "nsmc"):
        if d and (Path(d) / "ratings_train.txt").is_file() and (Path(d) / "ratings_test.txt").is_file():
            return Path(d)
    return None


@pytest.fixture(scope="session")
def nsmc_dir() -> Path:
    d = nsmc_dir_or_none()
    if d is None:
        pytest.skip("NSMC not found: set BERTCLF_DATA_DIR or put it in ../shared/data/nsmc")
    return d


def write_nsmc_slice(nsmc: Path, split: str, out: Path, start: int, n: int) -> Path:
    """Rows [start, start+n) of ratings_{split}.txt as a small TSV with the same header."""
    lines = (nsmc / f"ratings_{split}.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    out.write_text(lines[0] + "".join(lines[1 + start:1 + start + n]), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def nsmc_slices(nsmc_dir, tmp_path_factory) -> dict[str, Path]:
    """train.tsv (3,000 rows), test.tsv (500 rows) taken from the real NSMC files."""
    d = tmp_path_factory.mktemp("nsmc")
    return {"train": write_nsmc_slice(nsmc_dir, "train", d / "train.tsv", 0, 3000),
            "test": write_nsmc_slice(nsmc_dir, "test", d / "test.tsv", 0, 500)}


@pytest.fixture(scope="session")
def me5_dir() -> Path:
    from bertclf.models.builtin import builtin_model_path

    return builtin_model_path("me5-small", log=lambda s: None)


@pytest.fixture(scope="session")
def tiny_model_dir(me5_dir, nsmc_slices, tmp_path_factory) -> Path:
    """A tiny random-weight BERT (2 layers, hidden 32) with me5-small's real tokenizer, vocabulary trimmed to
    an NSMC slice: a valid starting point for `--model` that trains in seconds."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from bertclf.data.dataset import read_labelled
    from bertclf.models.vocab_trim import trim_vocab

    d = tmp_path_factory.mktemp("tiny")
    texts = read_labelled(nsmc_slices["train"], "document", "label").texts
    texts += read_labelled(nsmc_slices["test"], "document", "label").texts
    trim_vocab(str(me5_dir), texts, d / "trimmed", log=lambda s: None)
    tok = AutoTokenizer.from_pretrained(d / "trimmed")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=514, pad_token_id=tok.pad_token_id)
    out = d / "model"
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def trained_tiny_dir(tiny_model_dir, nsmc_slices, tmp_path_factory) -> Path:
    """The tiny model fine-tuned for a few seconds on the NSMC slice by `bertclf train` (labels negative/positive
    are '0'/'1' here since the slice is a plain file)."""
    from bertclf.train.loop import TrainConfig, train

    out = tmp_path_factory.mktemp("trained") / "run"
    train(TrainConfig(out=str(out), train=str(nsmc_slices["train"]), test=str(nsmc_slices["test"]),
                      text_col="document", model=str(tiny_model_dir), epochs=2, batch_size=16, lr=2e-3, seed=0),
          echo=lambda s: None)
    return out


# The real me5-small fine-tune the slow tests share (tests/models/test_me5_finetune.py holds its accuracy floor
# and measures faithfulness and the int8 export on it): 5,000 NSMC training reviews (rows 10,000-14,999), one
# epoch, scored on 1,000 test reviews (rows 10,000-10,999). Precision auto: bf16 where the CPU has it natively
# (2.4x fp32's speed on Zen 4, one thread), fp32 elsewhere; in bf16 it scored 0.819 (fp32 0.820) and its int8
# export agreed with torch on 97.3% of 5,000 reviews, accuracy -0.38 pt (AMX dev machine).
ME5_NSMC_TRAIN = dict(epochs=1, batch_size=32, lr=1e-4, seed=0, trim_vocab=True, max_length=96)


@pytest.fixture(scope="session")
def me5_nsmc_run(me5_dir, nsmc_dir, tmp_path_factory) -> tuple[Path, dict]:
    """(run directory, card) of that fine-tune: minutes on 2 cores, once per session."""
    from bertclf.train.loop import TrainConfig, train

    d = tmp_path_factory.mktemp("me5")
    tr = write_nsmc_slice(nsmc_dir, "train", d / "train.tsv", 10_000, 5000)
    te = write_nsmc_slice(nsmc_dir, "test", d / "test.tsv", 10_000, 1000)
    out = d / "run"
    from whole_cpu import whole_cpu

    with whole_cpu():
        card = train(TrainConfig(out=str(out), train=str(tr), test=str(te), text_col="document", model="me5-small",
                                 **ME5_NSMC_TRAIN), echo=print)
    return out, card
