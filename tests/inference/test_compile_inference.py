"""--compile for scoring (bertclf/inference/compiled.py): the compiled forward on static shapes gives eager's
logits, compiles one graph per (rows, width) and no more, and the commands take the flag.

Kept to --max-length 24 (static widths 16 and 24) and batches of 4, so inductor compiles 2 or 3 graphs on the
CPU; the tiny model in fp32, where compiled and eager differ by float rounding only."""
from __future__ import annotations

import numpy as np
import pytest

from bertclf.cli import main
from bertclf.data.batches import static_widths
from bertclf.inference.classifier import Classifier

# Reviews of 2 to 30+ tokens: both widths, a batch of 4 and the last batch of 2 (padded to 2 rows).
TEXTS = ["재밌다", "시간 아깝다 진짜", "배우들 연기는 좋았는데 이야기가 너무 늘어진다",
         "정말 최고의 영화 다시 보고 싶다", "별로", "처음부터 끝까지 지루했고 결말은 더 실망스러웠다 돈이 아깝고 "
         "시간이 아까운 영화였다 추천하지 않는다 배우들이 불쌍하다"]
# fp32: compiled and eager sum the same products in other orders (measured: at most 1.5e-8 apart on these logits, the largest 4.2).
TOLERANCE = 1e-4


def test_compiled_scoring_matches_eager_with_one_graph_per_shape(trained_tiny_dir):
    import torch._dynamo.utils

    eager = Classifier.load(str(trained_tiny_dir), device="cpu", max_length=24, precision="fp32", compile="off")
    compiled = Classifier.load(str(trained_tiny_dir), device="cpu", max_length=24, precision="fp32", compile="on")
    assert eager.compiled is None and compiled.compiled is not None
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    want = eager.logits(TEXTS, batch_size=4)
    got = compiled.logits(TEXTS, batch_size=4)
    np.testing.assert_allclose(got, want, rtol=TOLERANCE, atol=TOLERANCE)
    shapes = sorted(compiled.compiled.first_seconds)
    assert shapes == [(2, 16), (4, 24)], shapes  # the long four at width 24, the short two at 16
    # the same texts again, and one alone (rows 1): its shape only is new
    np.testing.assert_allclose(compiled.logits(TEXTS, batch_size=4), want, rtol=TOLERANCE, atol=TOLERANCE)
    np.testing.assert_allclose(compiled.logits(TEXTS[:1], batch_size=4), want[:1], rtol=TOLERANCE, atol=TOLERANCE)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs_before
    assert static_widths(24) == (16, 24) and len(compiled.compiled.first_seconds) == 3 and graphs == 3


def test_predict_and_eval_take_compile(trained_tiny_dir, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert main(["predict", str(trained_tiny_dir), *TEXTS[:2], "--compile", "on", "--precision", "fp32",
                 "--batch-size", "4", "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == 2
    assert "torch.compile: 1 shape(s) compiled (rows x tokens: 2x16)" in capsys.readouterr().err
    assert main(["predict", str(trained_tiny_dir), "text", "--compile", "sometimes"]) == 2
    assert "--compile" in capsys.readouterr().err


@pytest.mark.parametrize("requested, device, on", [("auto", "cpu", False), ("auto", "cuda", True),
                                                    ("on", "cpu", True), ("off", "cuda", False)])
def test_auto_is_on_for_cuda_only(requested, device, on):
    from bertclf.train.compiled import wants_compile

    assert wants_compile(requested, device) is on
