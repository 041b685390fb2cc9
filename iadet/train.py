"""Train a detector: ``python -m iadet.train --config CFG [--opts k=v ...] [--resume auto|PATH]``.

Under torchrun the same command trains with DistributedDataParallel (gloo on CPU, nccl on
GPU); only rank 0 writes the run folder (``work_dirs/<config name>`` by default).
"""
import argparse
import signal
import sys
from pathlib import Path

from iadet.config import ConfigError, load_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m iadet.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="YAML config")
    p.add_argument("--opts", nargs="*", default=[], help="overrides key=value (YAML values)")
    p.add_argument("--resume", default=None,
                   help="'auto': continue from the newest valid checkpoint of the run folder; or a path")
    p.add_argument("--work-dir", default=None, help="run folder (default: train.work_dir or work_dirs/<config name>)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def end_progress_bars() -> None:
    """Close the tqdm bars still open (training, evaluation): each ends its line, so what is
    printed next (an error, a traceback) starts on a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # a bar on a closed stream: nothing to end
            pass


def resolve_work_dir(args, cfg) -> Path:
    if args.work_dir:
        return Path(args.work_dir)
    if cfg.train.work_dir:
        return Path(cfg.train.work_dir)
    return Path("work_dirs") / Path(args.config).stem


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from iadet.data.loading import error_message
    from iadet.engine.checkpointing import find_resume_checkpoint
    from iadet.distributed import cleanup, init_distributed
    from iadet.engine.trainer import NonFiniteLossError, Trainer, TrainingInterrupted

    try:
        cfg = load_config(args.config, args.opts)
        work_dir = resolve_work_dir(args, cfg)
        resume = None
        if args.resume == "auto":
            resume = find_resume_checkpoint(work_dir)
            print(f"--resume auto: {'continuing from ' + str(resume) if resume else 'no checkpoint in ' + str(work_dir) + ', starting fresh'}")
        elif args.resume:
            resume = Path(args.resume)
            if not resume.is_file():
                raise FileNotFoundError(f"--resume checkpoint not found: {resume}")
        dist = init_distributed(args.device)
        trainer = Trainer(cfg, work_dir, dist=dist, resume=resume, argv=argv, progress=not args.no_progress)
        try:
            trainer.train()
        except BaseException:  # the bar's line has no newline yet: the message must not land on it
            end_progress_bars()
            raise
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        print(f"error: {error_message(exc)}", file=sys.stderr)  # one line, also from a loader worker
        sys.exit(2)
    except NonFiniteLossError as exc:
        print(f"error: non-finite loss: {exc}", file=sys.stderr)
        sys.exit(3)
    except TrainingInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        sys.exit(128 + int(exc.signum))  # the shell's convention for a signal
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (start-up, final evaluation)
        print("interrupted: SIGINT (Ctrl-C) outside the training loop; every checkpoint already in the "
              "work dir is complete: continue with --resume auto", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
