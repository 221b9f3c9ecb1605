"""--precision bf16-weights (bertclf/train/master_weights.py): the model held in bf16, fp32 master weights in the
optimizer. Its losses track bf16 autocast's, the weights that leave the run are the fp32 masters, a killed run
resumes exactly (the masters are in the checkpoint), and the masters take the small updates bf16 weights alone
would lose. The tiny model without dropout (the two paths would draw other masks), 6 steps of 2 x 16 rows."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from bertclf.models.precision import pick_precision
from bertclf.rundir import layout as rundir
from bertclf.train.callbacks import TrainCallback
from bertclf.train.loop import train
from bertclf.train.master_weights import MasterWeightsAdamW

from tiny_runs import tiny_cfg, without_dropout

SHORT = dict(sample=0.05, max_length=16, batch_size=16, grad_accum=2, max_steps=6, epochs=2, log_every=1,
             ngram="off", calibrate=False, test=None)
# bf16 weights round every weight to 8 bits of mantissa where autocast rounds each product's inputs alike:
# the same bf16 matmuls, other roundings of the LayerNorms, softmax and residual sums (in fp32 under autocast).
# Measured over these 6 steps: at most 9.7e-5 relative (bf16 autocast vs fp32: 1.2e-5).
TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def no_dropout_model(tiny_model_dir, tmp_path_factory):
    return without_dropout(tiny_model_dir, tmp_path_factory.mktemp("no-dropout") / "model")


def _losses(out) -> list[float]:
    return [r["loss"] for r in map(json.loads, rundir.log_path(out).read_text().splitlines()) if "loss" in r]


def test_losses_track_bf16_autocast_and_the_model_leaves_in_fp32(no_dropout_model, nsmc_slices, tmp_path):
    assert pick_precision("bf16-weights") == "bf16-weights"
    autocast, weights = tmp_path / "autocast", tmp_path / "weights"
    train(tiny_cfg(autocast, nsmc_slices, no_dropout_model, precision="bf16", **SHORT), echo=lambda s: None)
    card = train(tiny_cfg(weights, nsmc_slices, no_dropout_model, precision="bf16-weights", **SHORT),
                 echo=lambda s: None)
    assert len(_losses(weights)) == 6
    assert _losses(weights) == pytest.approx(_losses(autocast), rel=TOLERANCE)
    assert card["training"]["precision"] == "bf16-weights"
    with safe_open(str(weights / "model.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    # the fp32 masters, not bf16-rounded weights widened again
    assert any(not torch.equal(t, t.bfloat16().float()) for t in tensors.values())


class _Killed(Exception):
    pass


class _KillAfter(TrainCallback):
    def on_step_end(self, step: int) -> None:
        if step == 3:  # after the checkpoint of step 2, before step 3's
            raise _Killed


def test_a_killed_run_resumes_exactly(no_dropout_model, nsmc_slices, tmp_path):
    cfg = lambda out: tiny_cfg(out, nsmc_slices, no_dropout_model, precision="bf16-weights",  # noqa: E731
                               **SHORT | {"max_steps": 5, "checkpoint_every": 2})
    train(cfg(tmp_path / "whole"), echo=lambda s: None)
    with pytest.raises(_Killed):
        train(cfg(tmp_path / "run"), echo=lambda s: None, callbacks=[_KillAfter()])
    said = []
    train(replace(cfg(tmp_path / "run"), resume=True), echo=said.append)
    assert any("step-00000002" in s for s in said), said
    assert (tmp_path / "run/model.safetensors").read_bytes() == (tmp_path / "whole/model.safetensors").read_bytes()


def test_master_weights_keep_updates_too_small_for_bf16():
    """lr 2e-4 on weights of 1: each step moves a weight ~2e-4, under half of bf16's spacing there (2^-8 below 1,
    2^-7 above): bf16 AdamW alone never moves them; with fp32 masters they move ~2.4e-3 in 12 steps, and the
    model's bf16 weights that went down follow (past the midpoint 1 - 2^-9)."""
    torch.manual_seed(0)
    plain, mastered = torch.nn.Linear(8, 1, bias=False), torch.nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        plain.weight.fill_(1.0)
        mastered.weight.fill_(1.0)
    plain.to(torch.bfloat16)
    opt_plain = torch.optim.AdamW(plain.parameters(), lr=2e-4, weight_decay=0.0)
    opt_master = MasterWeightsAdamW([{"params": list(mastered.parameters())}], lr=2e-4, weight_decay=0.0)
    assert mastered.weight.dtype == torch.bfloat16 and opt_master.masters[0].dtype == torch.float32
    x = torch.randn(4, 8).bfloat16()
    for _ in range(12):
        for model, opt in ((plain, opt_plain), (mastered, opt_master)):
            opt.zero_grad()
            model(x).float().sum().backward()
            opt.step()
    assert torch.all(plain.weight == 1.0)  # every update rounded away
    moved = (opt_master.masters[0] - 1.0).abs()
    assert torch.all(moved > 2e-3) and torch.all(moved < 3e-3)
    assert not torch.all(mastered.weight == 1.0)
    state = opt_master.state_dict()
    assert torch.equal(state["master_weights"][0], opt_master.masters[0])
