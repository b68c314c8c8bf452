"""Test-only entry point: the crescent CLI, SIGKILLed by itself at a chosen micro batch of training.

    python tests/helpers/kill_train.py KILL KEY=VALUE ...

KILL = "n": the process kills itself (SIGKILL: no finally, no atexit, no Lightning teardown) when its (n+1)-th
micro batch starts, i.e. after n micro batches of this process and everything Lightning does at their end
(checkpoint writes included). KILL = "ne": at the end of its n-th micro batch, after the batch's optimizer step (if
it makes one) but before Lightning's checkpoint callback writes (Lightning runs ModelCheckpoint hooks last).
KILL = "-1": no kill (the run goes to the end). The kill comes from a callback in place of the live-eval callbacks
(crescent.eval.callback.eval_callbacks), so it is deterministic, unlike a timed kill from outside, and the rest
of the process is the real CLI.
"""
import os
import signal
import sys

import lightning as L


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class KillAfter(L.Callback):
    def __init__(self, n: int, at_end: bool):
        self.n, self.at_end, self.started = n, at_end, 0

    def on_train_batch_start(self, trainer, *args) -> None:
        if self.started == self.n and not self.at_end:
            _die()
        self.started += 1

    def on_train_batch_end(self, trainer, *args) -> None:
        if self.started == self.n and self.at_end:
            _die()


def main() -> None:
    spec = sys.argv.pop(1)
    n, at_end = int(spec.removesuffix("e")), spec.endswith("e")
    import crescent.eval.callback

    crescent.eval.callback.eval_callbacks = lambda *a, **k: [KillAfter(n, at_end)] if n >= 0 else []
    from crescent.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
