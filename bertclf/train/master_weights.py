"""--precision bf16-weights: the model held in bf16 for the forward and backward, fp32 master weights in the optimizer.

bf16 autocast (--precision bf16) keeps fp32 weights and casts them, and activations, per op: on a GPU ~645
autocast casts a training step (benchmarks/RESULTS.md, "GPU: one H200"). Held in bf16, the model's matmuls read
their weights as they are and no op casts (the loss upcasts the logits). Updates of lr x ~1e-3 are below bf16's
resolution (8 bits of mantissa) for most weights, so the optimizer steps fp32 copies (the master weights: fp32
AdamW, as Megatron and apex O2 do) and rounds them into the model after each step. torch has no such optimizer;
torchao's bf16 AdamW rounds stochastically instead (no masters, a random draw per weight per step), which would
need its generator's state in the checkpoint for an exact resume; the fp32 copies need only themselves.

The master weights are in the optimizer's state_dict (so in every checkpoint: an exact resume), and the weights
that leave the run (checkpoints/best, the final model) are the fp32 masters: `full_precision(model, optimizer)`.
Gradients accumulate in bf16 over micro-batches (each micro-batch's share is added in bf16) and are clipped there.
"""
from __future__ import annotations

import contextlib

import torch


class MasterWeightsAdamW(torch.optim.AdamW):
    """AdamW over fp32 copies of the model's parameters, which it casts to `dtype` (in place, the same Parameter
    objects). step(): the model's gradients into the copies, an fp32 AdamW step, the copies rounded into the model."""

    def __init__(self, groups: list[dict], dtype=torch.bfloat16, **kwargs):
        self.model_params = [p for g in groups for p in g["params"]]
        masters = []
        for g in groups:
            copies = [p.detach().float().clone() for p in g["params"]]
            masters.append({**g, "params": copies})
        super().__init__(masters, **kwargs)
        self.masters = [m for g in self.param_groups for m in g["params"]]
        for p in self.model_params:
            p.data = p.data.to(dtype)

    @torch.no_grad()
    def step(self, closure=None):
        for master, p in zip(self.masters, self.model_params):
            master.grad = None if p.grad is None else p.grad.float()
        loss = super().step(closure)
        self.round_into_model()
        return loss

    @torch.no_grad()
    def round_into_model(self) -> None:
        torch._foreach_copy_(self.model_params, self.masters)  # copy_ rounds fp32 to the model's bf16

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        for p in self.model_params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self):
        return super().state_dict() | {"master_weights": [m.detach().clone() for m in self.masters]}

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        saved = state_dict.pop("master_weights", None)
        if saved is None or len(saved) != len(self.masters):
            raise ValueError("the optimizer state holds no master weights of this model (written with another "
                             "--precision)")
        super().load_state_dict(state_dict)
        with torch.no_grad():
            torch._foreach_copy_(self.masters, [s.to(m.device) for s, m in zip(saved, self.masters)])
        self.round_into_model()


def masters_of(optimizer) -> MasterWeightsAdamW | None:
    """The MasterWeightsAdamW inside `optimizer` (Accelerate wraps it), or None."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return inner if isinstance(inner, MasterWeightsAdamW) else None


@contextlib.contextmanager
def full_precision(model, optimizer):
    """Within: the model's parameters are fp32 and hold the master weights (for writing the weights that leave
    the run); after: bf16 again, the masters rounded into them. Without master weights: nothing changes."""
    masters = masters_of(optimizer)
    if masters is None:
        yield model
        return
    dtype = masters.model_params[0].dtype
    with torch.no_grad():
        for p, m in zip(masters.model_params, masters.masters):
            p.data = m.detach().clone()
    try:
        yield model
    finally:
        with torch.no_grad():
            for p, m in zip(masters.model_params, masters.masters):
                p.data = m.detach().to(dtype)


def to_full_precision(model, optimizer) -> None:
    """For good, at the end of training: the model's parameters in fp32, holding the master weights."""
    masters = masters_of(optimizer)
    if masters is None:
        return
    with torch.no_grad():
        for p, m in zip(masters.model_params, masters.masters):
            p.data = m.detach().clone()
