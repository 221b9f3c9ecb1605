"""--resume from a checkpoint that does not fit this run's model or optimizer: one line, nothing written.

Found for real: a `bertclf distill --resume auto` of a checkpoint written before the classification head got
its own lr group (2 optimizer parameter groups then, 4 now) ended in torch's ValueError traceback."""
from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from bertclf.rundir import checkpoint as ckpt
from bertclf.errors import UserError


def _model(num_labels: int = 2):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     num_labels=num_labels)
    return BertForSequenceClassification(cfg)


def _adamw(model, groups: int):
    """AdamW over the model's parameters in `groups` parameter groups (the layout decides what loads)."""
    params = list(model.parameters())
    return torch.optim.AdamW([{"params": params[i::groups]} for i in range(groups)], lr=1e-4)


def _saved(tmp_path, model, optimizer):
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([1])).loss.backward()
    optimizer.step()
    return ckpt.save_checkpoint(tmp_path / "run", 10, model, optimizer, scheduler, {"step": 10})


def _refusal(found, model, optimizer) -> str:
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    before = sorted(p.name for p in found.iterdir())
    with pytest.raises(UserError) as e:
        ckpt.load_checkpoint(found, model, optimizer, scheduler)
    assert sorted(p.name for p in found.iterdir()) == before  # the checkpoint is left as it was
    msg = str(e.value)
    assert "\n" not in msg and str(found) in msg and "--overwrite" in msg, msg
    return msg


def test_another_optimizer_layout_is_one_line(tmp_path):
    model = _model()
    found = _saved(tmp_path, model, _adamw(model, 2))
    msg = _refusal(found, _model(), _adamw(_model(), 4))
    assert "parameter groups" in msg, msg


def test_another_model_shape_is_one_line(tmp_path):
    model = _model()
    found = _saved(tmp_path, model, _adamw(model, 2))
    three = _model(num_labels=3)
    msg = _refusal(found, three, _adamw(three, 2))
    assert "size mismatch for classifier.weight" in msg, msg


def test_the_same_layout_still_loads(tmp_path):
    model = _model()
    opt = _adamw(model, 2)
    found = _saved(tmp_path, model, opt)
    again = _model()
    opt2 = _adamw(again, 2)
    state = ckpt.load_checkpoint(found, again, opt2, torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 1.0))
    assert state == {"step": 10}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_a_refused_default_lr_is_named_with_the_flag_that_moved_it(tmp_path):
    """--resume with only --batch-size changed: the default lr follows the batch size, so it differs too; the line
    says so instead of naming an --lr the user never passed."""
    from bertclf.train.prepare import default_lr, refuse_changed_settings

    model = _model()
    optimizer = _adamw(model, 2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    from dataclasses import asdict

    from bertclf.train.config import TrainConfig

    args = asdict(TrainConfig(out=str(tmp_path / "run"))) | {"batch_size": 32, "lr": default_lr(32)}
    ckpt.save_checkpoint(tmp_path / "run", 10, model, optimizer, scheduler, {"step": 10, "args": args})
    with pytest.raises(UserError) as e:
        refuse_changed_settings(tmp_path / "run", args | {"batch_size": 16, "lr": default_lr(16)},
                                {"lr": "--batch-size"})
    assert str(e.value).startswith("--resume: --batch-size, --lr (its default follows --batch-size) differ from ")
    with pytest.raises(UserError) as e:  # an --lr the user passed is named plainly
        refuse_changed_settings(tmp_path / "run", args | {"lr": 1e-3}, {})
    assert str(e.value).startswith("--resume: --lr differs from ")
