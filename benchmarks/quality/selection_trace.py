"""What checkpoint selection costs: `bertclf train` (the real loop) on a benchmarks/datasets.py split, and at each
validation the held-out test rows scored too, with the current weights and with exponential moving averages of
them (--ema decays). Prints one JSON line per (step, variant); research, not a default path.

    python benchmarks/selection_trace.py nsmc --work /tmp/ds --evals-per-epoch 2 --ema 0.98,0.99,0.995
    python benchmarks/selection_trace.py nsmc --work /tmp/ds --set epochs=3 --set lr=2e-4 --ema 0.99
    python benchmarks/selection_trace.py nsmc --work /tmp/ds --ema "" --set lr=2e-4 --llrd 0.9   # layer-wise lr decay

It wraps two functions of bertclf.train.loop (prepare, to reach the run; validate, to score the test rows after each
validation): the loop's public callbacks do not hand out the model. Training itself is untouched (but for --llrd).
"""
import sys, json, time, argparse
from pathlib import Path
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO)); sys.path.insert(0, str(REPO / 'benchmarks'))
import torch
import bertclf.train.loop as L
from bertclf.data import dataset as D
from bertclf.data.tokens import encode
from bertclf.train.scoring import gathered_logits
from bertclf.data.metrics import expected_calibration_error
from sklearn.metrics import accuracy_score, f1_score
ap = argparse.ArgumentParser(); ap.add_argument('task', choices=['nsmc', 'hate', 'bias']); ap.add_argument('--ema', default='0.99,0.995,0.998')
ap.add_argument('--set', action='append', default=[], help='a TrainConfig field, e.g. epochs=3')
ap.add_argument('--const', action='append', default=[], help='a bertclf.train.prepare recipe constant, e.g. HEAD_LR=1e-3')
ap.add_argument('--evals-per-epoch', type=int, default=1)
ap.add_argument('--llrd', type=float, help='layer-wise lr decay: layer i of L trains at lr x DECAY^(L-i), embeddings at DECAY^(L+1)')
ap.add_argument('--work', type=Path, required=True, help="datasets.py's --work folder (its splits are made there if missing)")
a = ap.parse_args()
import datasets as DS
from bertclf.train import prepare as P


def make_optimizer_llrd(cfg, model, plan):
    """prepare.make_optimizer with the encoder's lr decayed layer by layer from the top (--llrd)."""
    import re
    from transformers import get_linear_schedule_with_warmup
    prefix, n_layers, groups = model.base_model_prefix + ".", model.config.num_hidden_layers, {}
    for n, p in model.named_parameters():
        decays, head = p.ndim >= 2 and "LayerNorm" not in n, not n.startswith(prefix)
        m = re.search(r"encoder\.layer\.(\d+)\.", n)
        depth = n_layers - int(m.group(1)) if m else (n_layers + 1 if "embeddings" in n else 0)
        lr = max(plan.lr, P.HEAD_LR) if head else plan.lr * a.llrd ** depth
        groups.setdefault((decays, lr), []).append(p)
    opt = torch.optim.AdamW([{"params": ps, "weight_decay": cfg.weight_decay if d else 0.0, "lr": lr}
                             for (d, lr), ps in sorted(groups.items())], lr=plan.lr, fused=True)
    return opt, get_linear_schedule_with_warmup(opt, int(cfg.warmup * plan.total_steps), plan.total_steps)


if a.llrd:
    P.make_optimizer = make_optimizer_llrd
for kv in a.const:
    k, v = kv.split('='); setattr(P, k, float(v))
t = DS.TASKS[a.task]
if t.get('multi_label'):
    sys.exit('selection_trace.py: single-label tasks only (nsmc, hate, bias)')
train_file, test_file = DS.make_splits(a.work, 0.1)[a.task]  # bias reads hate's split with its own label
cfg = L.TrainConfig(out=str(a.work / f'trace-{a.task}'), train=str(train_file), text_col=t['text'], label_col=t['label'],
                    overwrite=True, calibrate=False)
for kv in a.set:
    k, v = kv.split('='); cur = getattr(cfg, k)
    setattr(cfg, k, type(cur)(v) if cur is not None else int(v) if v.lstrip('-').isdigit() else float(v))
decays = [float(x) for x in a.ema.split(',')] if a.ema else []
test = D.read_labelled(str(test_file), t['text'], t['label'])
S = {}
orig_prepare = L.prepare
def prepare(*args, **kw):
    run = orig_prepare(*args, **kw)
    S['run'] = run
    if run.cfg.eval_every is None and a.evals_per_epoch > 1:
        run.plan.eval_every = max(1, run.plan.steps_per_epoch // a.evals_per_epoch)
    m = run.unwrapped()
    S['ema'] = {d: [p.detach().float().clone() for p in m.parameters()] for d in decays}
    S['n'] = 0
    S['test_ids'] = encode(run.tokenizer, test.texts, run.cfg.max_length)
    S['y'] = run.task.encode(test.labels, 'test')
    return run
L.prepare = prepare
from bertclf.train.callbacks import TrainCallback
class CB(TrainCallback):
    def on_step_end(self, step):
        m = S['run'].unwrapped(); S['n'] += 1
        ps = [p.detach().float() for p in m.parameters()]
        for d, e in S['ema'].items():
            dd = min(d, 1 - 1 / S["n"])  # a running mean until n reaches 1/(1-d)
            torch._foreach_lerp_(e, ps, 1 - dd)
def score(tag, step):
    run = S['run']; m = run.unwrapped()
    lg = gathered_logits(m, S['test_ids'], run.pad_id, 128, None, run.autocast_dtype)
    p = torch.softmax(torch.tensor(lg).float(), -1).numpy(); pred = p.argmax(1); y = S['y']
    print(json.dumps({'step': step, 'v': tag, 'acc': round(accuracy_score(y, pred), 4), 'wf1': round(f1_score(y, pred, average='weighted'), 4),
                      'mf1': round(f1_score(y, pred, average='macro'), 4), 'ece': round(expected_calibration_error(y, p), 4)}), flush=True)
orig_validate = L.validate
def validate(run, meter, events):
    r = orig_validate(run, meter, events)
    m = run.unwrapped(); was = m.training; m.eval()
    score('raw', run.state.step)
    saved = [p.detach().clone() for p in m.parameters()]
    for d, e in S['ema'].items():
        with torch.no_grad():
            for p, q in zip(m.parameters(), e): p.copy_(q)
        score(f'ema{d}', run.state.step)
    with torch.no_grad():
        for p, q in zip(m.parameters(), saved): p.copy_(q)
    m.train(was)
    return r
L.validate = validate
t0 = time.time()
card = L.train(cfg, callbacks=[CB()])
print('valid', json.dumps(card['metrics']['valid'].get('accuracy')), 'seconds', round(time.time() - t0))
