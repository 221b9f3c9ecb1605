"""What checkpoint selection costs: `bertclf train` (the real loop, untouched) on a datasets split, and at each
validation the held-out test rows scored too, with the current weights and with exponential moving averages of
them (--ema decays). Prints one JSON line per (step, variant); research, not a default path.

    python -m benchmarks.quality.selection_trace nsmc --work /tmp/ds --scores-per-epoch 2 --ema 0.98,0.99,0.995
    python -m benchmarks.quality.selection_trace nsmc --work /tmp/ds --set epochs=3 --set lr=2e-4 --ema 0.99
    python -m benchmarks.quality.selection_trace nsmc --work /tmp/ds --ema "" --set seed=1

The loop's public callbacks (bertclf/train/callbacks.py) do the work: on_train_begin hands over the set-up run,
on_step_end moves the averages, on_evaluate scores the test rows. --scores-per-epoch K also scores them K-1
times between validations (validation itself stays where --set eval_every=N or the default puts it).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import run
from benchmarks.quality import datasets as DS
from bertclf.train.callbacks import TrainCallback


class Trace(TrainCallback):
    """Scores the held-out rows with the raw weights and each moving average; training is left as it is."""

    def __init__(self, test, decays: list[float], per_epoch: int):
        self.test, self.decays, self.per_epoch = test, decays, per_epoch

    def on_train_begin(self, run):
        from bertclf.data.tokens import encode

        self.run, m = run, run.unwrapped()
        self.ema = {d: [p.detach().float().clone() for p in m.parameters()] for d in self.decays}
        self.n = 0
        self.ids = encode(run.learner.tokenizer, self.test.texts, run.cfg.max_length)
        self.y = run.task.encode(self.test.labels, "test")
        self.every = max(1, run.plan.steps_per_epoch // self.per_epoch)

    def on_step_end(self, step):
        import torch

        self.n += 1
        ps = [p.detach().float() for p in self.run.unwrapped().parameters()]
        for d, e in self.ema.items():
            torch._foreach_lerp_(e, ps, 1 - min(d, 1 - 1 / self.n))  # a running mean until n reaches 1/(1-d)
        plan = self.run.plan
        if self.per_epoch > 1 and step % self.every == 0 and step % plan.eval_every and step != plan.total_steps:
            self.score_all(step)

    def on_evaluate(self, step, report):
        self.score_all(step)

    def score_all(self, step: int) -> None:
        """The raw weights, then each average swapped in and the raw weights put back."""
        import torch

        m = self.run.unwrapped()
        was = m.training
        m.eval()
        self.score("raw", step)
        saved = [p.detach().clone() for p in m.parameters()]
        with torch.no_grad():
            for d, e in self.ema.items():
                for p, q in zip(m.parameters(), e):
                    p.copy_(q)
                self.score(f"ema{d}", step)
            for p, q in zip(m.parameters(), saved):
                p.copy_(q)
        m.train(was)

    def score(self, tag: str, step: int) -> None:
        import torch
        from sklearn.metrics import accuracy_score, f1_score

        from bertclf.data.metrics import expected_calibration_error
        from bertclf.train.scoring import gathered_logits

        r = self.run
        lg = gathered_logits(r.unwrapped(), self.ids, r.learner.pad_id, 128, None, r.autocast_dtype)
        p = torch.softmax(torch.tensor(lg).float(), -1).numpy()
        pred, y = p.argmax(1), self.y
        print(json.dumps({"step": step, "v": tag, "acc": round(accuracy_score(y, pred), 4),
                          "wf1": round(f1_score(y, pred, average="weighted"), 4),
                          "mf1": round(f1_score(y, pred, average="macro"), 4),
                          "ece": round(expected_calibration_error(y, p), 4)}), flush=True)


def set_field(cfg, kv: str) -> None:
    """--set FIELD=VALUE on a TrainConfig, typed like the field's current value (numbers when it is None)."""
    k, v = kv.split("=", 1)
    cur = getattr(cfg, k)
    setattr(cfg, k, type(cur)(v) if cur is not None else int(v) if v.lstrip("-").isdigit() else float(v))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=["nsmc", "hate", "bias"])
    ap.add_argument("--work", type=Path, required=True, help="datasets.py's --work folder (splits made if missing)")
    ap.add_argument("--ema", default="0.99,0.995,0.998", help="decays of the moving averages ('' for none)")
    ap.add_argument("--set", action="append", default=[], help="a TrainConfig field, e.g. epochs=3")
    ap.add_argument("--scores-per-epoch", type=int, default=1, help="score the test rows this often per epoch")
    a = ap.parse_args()

    from bertclf.data import dataset as D
    from bertclf.train.loop import TrainConfig, train

    t = DS.TASKS[a.task]
    train_file, test_file = DS.make_splits(a.work, 0.1)[a.task]  # bias reads hate's split with its own label
    cfg = TrainConfig(out=str(a.work / f"trace-{a.task}"), train=str(train_file), text_col=t["text"],
                      label_col=t["label"], overwrite=True, calibrate=False)
    for kv in a.set:
        set_field(cfg, kv)
    decays = [float(x) for x in a.ema.split(",")] if a.ema else []
    test = D.read_labelled(str(test_file), t["text"], t["label"])
    t0 = time.time()
    card = train(cfg, callbacks=[Trace(test, decays, a.scores_per_epoch)])
    print("valid", json.dumps(card["metrics"]["valid"].get("accuracy")), "seconds", round(time.time() - t0))


if __name__ == "__main__":
    run(main)
