"""R-Drop (--rdrop, bertclf/train/rdrop.py): the loss on synthetic logits against a hand computation, and a run on
the tiny model: without dropout both copies agree, so the run equals a plain one; with dropout it does not."""
import json

import numpy as np
import pytest
import torch

from bertclf.data.labels import LabelMap
from bertclf.data.task import MultiLabel, SingleLabel
from bertclf.train import rdrop
from bertclf.train.loop import train

from tiny_runs import tiny_cfg, without_dropout


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_single_label_loss_is_both_copies_cross_entropy_plus_symmetric_kl():
    task = SingleLabel(LabelMap(["a", "b", "c"]))
    rng = np.random.default_rng(0)
    first, second = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    y = np.array([0, 2, 1, 1])
    logits = torch.tensor(np.concatenate([first, second]))
    got = rdrop.loss(task, logits, torch.tensor(np.concatenate([y, y])), alpha=0.7).item()
    p, q = _softmax(first), _softmax(second)
    ce = -(np.log(p[range(4), y]).sum() + np.log(q[range(4), y]).sum()) / 8
    sym_kl = ((p * np.log(p / q)).sum(-1) + (q * np.log(q / p)).sum(-1)).mean() / 2
    assert got == pytest.approx(ce + 0.7 * sym_kl, rel=1e-6)
    same = torch.tensor(np.concatenate([first, first]))  # identical copies: nothing to agree on
    assert rdrop.loss(task, same, torch.tensor(np.concatenate([y, y])), alpha=5.0).item() == pytest.approx(
        task.loss(torch.tensor(first), torch.tensor(y)).item(), rel=1e-6)


def test_multi_label_agreement_is_the_mean_bernoulli_kl():
    task = MultiLabel(LabelMap(["x", "y"]))
    first, second = np.array([[2.0, -1.0]]), np.array([[0.5, 1.0]])
    y = np.array([[1.0, 0.0]])
    logits = torch.tensor(np.concatenate([first, second]))
    both_y = torch.tensor(np.concatenate([y, y]))
    agreement = rdrop.loss(task, logits, both_y, alpha=1.0).item() - task.loss(logits, both_y).item()
    p, q = 1 / (1 + np.exp(-first)), 1 / (1 + np.exp(-second))

    def kl(a, b):
        return a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))

    assert agreement == pytest.approx(((kl(p, q) + kl(q, p)) / 2).mean(), rel=1e-5)


def test_without_dropout_rdrop_trains_the_same_weights_and_with_dropout_it_does_not(
        tiny_model_dir, nsmc_slices, tmp_path):
    from safetensors.torch import load_file

    still = without_dropout(tiny_model_dir, tmp_path / "still")
    runs = {}
    for name, model, alpha in (("plain", still, 0.0), ("rdrop", still, 1.0), ("dropout", tiny_model_dir, 1.0)):
        card = train(tiny_cfg(tmp_path / name, nsmc_slices, model, max_steps=6, precision="fp32", rdrop=alpha),
                     echo=lambda s: None)
        runs[name] = load_file(tmp_path / name / "model.safetensors")
        assert card["args"]["rdrop"] == alpha
    worst = max((runs["plain"][k] - runs["rdrop"][k]).abs().max().item() for k in runs["plain"])
    assert worst < 1e-4, worst
    moved = max((runs["plain"][k] - runs["dropout"][k]).abs().max().item() for k in runs["plain"])
    assert moved > 1e-3, moved


def test_rdrop_must_not_be_negative(tiny_model_dir, nsmc_slices, tmp_path):
    from bertclf.errors import UserError

    with pytest.raises(UserError, match="--rdrop"):
        train(tiny_cfg(tmp_path / "neg", nsmc_slices, tiny_model_dir, rdrop=-0.5), echo=lambda s: None)
