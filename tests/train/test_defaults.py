"""Defaults that are decided per run: the vocabulary is trimmed for the builtin models unless told otherwise."""
from bertclf.cli import build_parser
from bertclf.train.config import TrainConfig, trims_vocab


def test_trim_vocab_default_is_on_for_builtin_models_only(tiny_model_dir):
    assert trims_vocab(TrainConfig(out="x", model="me5-small"))
    assert not trims_vocab(TrainConfig(out="x", model="me5-small", trim_vocab=False))
    assert not trims_vocab(TrainConfig(out="x", model=str(tiny_model_dir)))
    assert trims_vocab(TrainConfig(out="x", model=str(tiny_model_dir), trim_vocab=True))


def test_trim_vocab_flags():
    parse = build_parser().parse_args
    assert parse(["train", "--out", "o"]).trim_vocab is None
    assert parse(["train", "--out", "o", "--trim-vocab"]).trim_vocab is True
    assert parse(["train", "--out", "o", "--no-trim-vocab"]).trim_vocab is False


def test_recipe_defaults_by_batch_and_data_size():
    """The default recipe's rules (benchmarks/quality/recipe_sweep.md): lr by batch, epochs by steps per epoch,
    validation share by task type and rows."""
    from bertclf.data.dataset import default_valid_frac
    from bertclf.train.prepare import default_epochs, default_lr

    assert default_lr(32) == 1e-4 and abs(default_lr(8) - 5e-5) < 1e-12
    assert default_lr(128) == default_lr(256) == 2e-4  # capped: the GPU default batch keeps its 2e-4
    assert default_epochs(400, True) == 2 and default_epochs(100, True) == 8 and default_epochs(3, True) == 10
    assert default_epochs(1000, True) == 2  # never fewer than 2 passes
    assert default_epochs(3, False) == default_epochs(400, False) == 2
    # sentence pairs: ~400 steps, 2-4 passes (KorNLI's 3,807 training pairs at batch 32: 119 steps, 4 passes)
    assert default_epochs(119, False, pairs=True) == 4 and default_epochs(150, False, pairs=True) == 3
    assert default_epochs(5, False, pairs=True) == 4 and default_epochs(1000, False, pairs=True) == 2
    assert default_valid_frac(4000, multi_label=False) == 0.05
    assert default_valid_frac(4000, multi_label=True) == 0.2
    assert default_valid_frac(10_000, multi_label=True) == 0.1
    assert default_valid_frac(100_000, multi_label=True) == 0.05
    parse = build_parser().parse_args
    args = parse(["train", "--out", "o"])
    assert args.epochs is None and args.lr is None and args.valid_frac is None


def test_head_learns_faster_and_multi_label_bias_starts_at_the_priors(tiny_model_dir):
    from dataclasses import replace

    import numpy as np
    import torch

    from bertclf.data.labels import LabelMap
    from bertclf.models.resolve import load_classifier
    from bertclf.train.prepare import HEAD_LR, Plan, make_optimizer
    from bertclf.data.task import MultiLabel, output_layer

    model = load_classifier(str(tiny_model_dir), {0: "a", 1: "b", 2: "c"})
    plan = Plan(batch_size=8, lr=1e-4, eff_batch=8, steps_per_epoch=10, total_steps=10, n_epochs=1, log_every=1,
                eval_every=10)
    optimizer, _ = make_optimizer(TrainConfig(out="x"), model, plan)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    head = {n for n, p in model.named_parameters() if lr_of[id(p)] == HEAD_LR}
    assert head == {"classifier.weight", "classifier.bias"} and HEAD_LR == 1e-3
    assert {lr_of[id(p)] for n, p in model.named_parameters() if n not in head} == {1e-4}
    big, _ = make_optimizer(TrainConfig(out="x"), model, replace(plan, lr=2e-3))
    assert {g["lr"] for g in big.param_groups} == {2e-3}  # a peak lr above HEAD_LR: the head at the same lr
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))

    # --layer-decay 0.5 on the 2-layer tiny BERT: top layer and pooler 1e-4, layer 0 5e-5, embeddings 2.5e-5
    decayed, _ = make_optimizer(TrainConfig(out="x", layer_decay=0.5), model, plan)
    lr_of = {id(p): g["lr"] for g in decayed.param_groups for p in g["params"]}
    by_name = {n: lr_of[id(p)] for n, p in model.named_parameters()}
    assert by_name["classifier.weight"] == HEAD_LR and by_name["bert.pooler.dense.weight"] == 1e-4
    assert {v for n, v in by_name.items() if ".layer.1." in n} == {1e-4}
    assert {v for n, v in by_name.items() if ".layer.0." in n} == {5e-5}
    assert {v for n, v in by_name.items() if "embeddings" in n} == {2.5e-5}
    assert sum(len(g["params"]) for g in decayed.param_groups) == len(list(model.parameters()))

    y = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=np.float32)  # priors 3/4, 1/4, 0
    MultiLabel(LabelMap(["a", "b", "c"], {})).init_head(model, y)
    bias = output_layer(model, 3).bias.detach()
    assert torch.allclose(torch.sigmoid(bias[:2]), torch.tensor([0.75, 0.25]), atol=1e-6)
    assert 0 < torch.sigmoid(bias[2]) < 0.2  # a label never seen: small, not -inf
