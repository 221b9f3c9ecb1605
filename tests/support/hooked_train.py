"""Test-only entry point: `python tests/support/hooked_train.py train ARGS...` (or `torchrun ... tests/support/hooked_train.py
train ARGS...`) is `bertclf train ARGS...` with the callbacks of tests/support/train_hooks.py that the environment asks
for (BERTCLF_TEST_PAUSE_AT, BERTCLF_TEST_OOM_AT, BERTCLF_TEST_SIGNAL_AT,
BERTCLF_TEST_DISK_FULL_AT), passed to `bertclf.train.loop.train(cfg, callbacks=...)`."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bertclf.train.loop  # noqa: E402
import train_hooks  # noqa: E402
from bertclf.cli import main  # noqa: E402

_train = bertclf.train.loop.train


def train_with_hooks(cfg, echo=print, callbacks=()):
    return _train(cfg, echo=echo, callbacks=[*callbacks, *train_hooks.from_env()])


bertclf.train.loop.train = train_with_hooks  # the CLI looks it up when it runs the train command
sys.exit(main(sys.argv[1:]))
