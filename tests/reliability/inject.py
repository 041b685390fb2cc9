"""``python -m iadet.train`` with one fault injected at an exact point, in a real process.

    python -m tests.reliability.inject [--nan-at I] [--nan-term loss_reg] [--nan-value nan]
        [--signal SIGINT --signal-at startup|eval|final-eval] -- <iadet.train arguments>

``--nan-at I``: the loss term of training step ``I`` (0-based: the step that makes iteration
I + 1) becomes non-finite; the poisoned image ids are printed as ``inject: ... on images [...]``.
``--signal S --signal-at P``: the process sends itself signal S once, when it starts building
the datasets (``startup``), at the start of the first evaluation during training (``eval``) or
of the final evaluation (``final-eval``).
"""
import argparse
import os
import signal
import sys


def inject_nan(at: int, term: str, value: float) -> None:
    from iadet.engine.trainer import Trainer

    original = Trainer.train_step

    def train_step(self, batch):
        if self.iteration != at:
            return original(self, batch)
        criterion = self.criterion

        def poisoned(*args, **kwargs):
            losses = criterion(*args, **kwargs)
            losses[term] = losses[term] * value  # stays in the autograd graph
            return losses

        ids = [t["image_id"] for t in batch["targets"]]
        print(f"inject: {term} = {value} at iteration {at} on images {ids}", flush=True)
        self.criterion = poisoned
        try:
            return original(self, batch)
        finally:
            self.criterion = criterion

    Trainer.train_step = train_step


def inject_signal(signum: int, phase: str) -> None:
    import iadet.engine.trainer as trainer

    if signum == signal.SIGINT:
        # what a Ctrl-C in a terminal meets: Python's KeyboardInterrupt handler, even when this
        # process inherited SIGINT ignored (a test run started in the background without job
        # control, e.g. `(make test &)`, ignores it, and Python keeps it ignored)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    fired = []

    def fire():
        if not fired:
            fired.append(True)
            print(f"inject: sending {signal.Signals(signum).name} at {phase}", flush=True)
            os.kill(os.getpid(), signum)

    if phase == "startup":
        build_dataset = trainer.build_dataset

        def patched_build_dataset(*args, **kwargs):
            fire()
            return build_dataset(*args, **kwargs)

        trainer.build_dataset = patched_build_dataset
        return
    evaluate = trainer.Trainer.evaluate

    def patched_evaluate(self, final=False):
        if final == (phase == "final-eval"):
            fire()
        return evaluate(self, final=final)

    trainer.Trainer.evaluate = patched_evaluate


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="python -m tests.reliability.inject")
    p.add_argument("--nan-at", type=int)
    p.add_argument("--nan-term", default="loss_reg")
    p.add_argument("--nan-value", type=float, default=float("nan"))
    p.add_argument("--signal", type=lambda name: signal.Signals[name])
    p.add_argument("--signal-at", choices=["startup", "eval", "final-eval"])
    args = p.parse_args(argv[:split])
    if args.nan_at is not None:
        inject_nan(args.nan_at, args.nan_term, args.nan_value)
    if args.signal is not None:
        inject_signal(args.signal, args.signal_at)
    from iadet.train import main as train_main
    train_main(argv[split + 1:])


if __name__ == "__main__":
    main()
