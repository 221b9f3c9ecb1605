"""benchmarks/quality/selection_trace.py's Trace callback on the tiny model: the held-out rows scored at each
validation with the raw weights and each moving average (which, after one step, is the raw weights)."""
import json

from benchmarks.quality.selection_trace import Trace
from bertclf.data.dataset import read_labelled
from bertclf.train.loop import train

from tiny_runs import tiny_cfg


def test_trace_scores_raw_weights_and_averages_at_each_validation(tiny_model_dir, nsmc_slices, tmp_path, capsys):
    test = read_labelled(nsmc_slices["test"], "document", "label")
    train(tiny_cfg(tmp_path / "run", nsmc_slices, tiny_model_dir, max_steps=3, eval_every=1, precision="fp32"),
          echo=lambda s: None, callbacks=[Trace(test, [0.9], 1)])
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [(r["step"], r["v"]) for r in rows] == [(s, v) for s in (1, 2, 3) for v in ("raw", "ema0.9")]
    first = {r["v"]: r for r in rows if r["step"] == 1}
    assert first["raw"] == first["ema0.9"] | {"v": "raw"}  # one step in: the average is the weights themselves
    assert all(0 <= r["acc"] <= 1 and 0 <= r["ece"] <= 1 for r in rows)
