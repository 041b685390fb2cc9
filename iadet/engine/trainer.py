"""The training loop: one readable step, full-state checkpoints, evaluation, logging."""
import json
import math
import random
import signal
import sys
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from iadet.builder import build_criterion, build_dataset, build_detector, build_optimizer, build_schedule
from iadet.config import ConfigError, config_to_dict
from iadet.data.loading import build_dataloader
from iadet.engine.checkpointing import rng_state, save_checkpoint, set_rng_state
from iadet.distributed import DistInfo, all_gather_objects, barrier, broadcast_object
from iadet.engine.run_dir import RunLogger
from iadet.evaluation.metrics import evaluate_coco, format_metrics
from iadet.evaluation.predict import coco_ground_truth, predict_dataset
from iadet.checkpoint import load_checkpoint_file
from iadet.io import atomic_write_text

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingInterrupted(RuntimeError):
    """SIGTERM or Ctrl-C: the run saved ``latest.pth`` and stopped (``signum`` says which)."""

    def __init__(self, signum: int, iteration: int, path: Path):
        self.signum, self.iteration, self.path = signum, iteration, path
        super().__init__(f"{signal.Signals(signum).name} at iteration {iteration}: saved {path}; "
                         "continue with --resume auto")


class NonFiniteLossError(RuntimeError):
    """Raised when a loss term is NaN or infinite; the message says where."""


class Trainer:
    """Trains ``build_detector(cfg)`` on ``cfg.data.train`` and evaluates on ``cfg.data.val``.

    Args:
        cfg: the resolved :class:`~iadet.config.Config`.
        work_dir: the run folder (checkpoints, logs).
        dist: this process's rank, world size and device.
        resume: a checkpoint path to continue from, or None.
        argv: the command line, recorded in the run folder.
        progress: show the tqdm bar (rank 0 only).
    """

    def __init__(self, cfg, work_dir: Path, dist: DistInfo = DistInfo(), resume: Optional[Path] = None,
                 argv=(), progress: bool = True):
        self.cfg, self.dist, self.work_dir = cfg, dist, Path(work_dir)
        t = cfg.train
        random.seed(t.seed)  # every RNG a checkpoint saves starts from the config's seed
        np.random.seed(t.seed)
        torch.manual_seed(t.seed)
        self.logger = RunLogger(self.work_dir, enabled=dist.is_main)
        self.logger.record_start(cfg, list(argv))
        self.progress = progress and dist.is_main

        # rank 0 generates a synthetic dataset first so the others find it complete
        if dist.is_main:
            self.train_set = build_dataset(cfg, "train")
        barrier()
        if not dist.is_main:
            self.train_set = build_dataset(cfg, "train")
        # The flips draw from torch's global RNG, which checkpoints save and restore, so a
        # resumed run is bit-exact with data.num_workers: 0 (workers re-seed per epoch).
        self.val_set = None
        self.loader = build_dataloader(self.train_set, t.batch_size, num_workers=cfg.data.num_workers, shuffle=True,
                                       seed=t.seed, distributed=(dist.rank, dist.world_size) if dist.distributed else None)
        self.iters_per_epoch = len(self.loader)
        if self.iters_per_epoch == 0:
            raise ConfigError(f"the training set has {len(self.train_set)} images, fewer than one batch of "
                              f"{t.batch_size} per rank x {dist.world_size} ranks", key="train.batch_size")
        self.max_iters = t.max_iters or t.epochs * self.iters_per_epoch
        step_unit = 1 if t.max_iters else self.iters_per_epoch

        model = build_detector(cfg, class_names=self.train_set.class_names).to(dist.device)
        if t.sync_bn and dist.distributed:
            if cfg.model.backbone.norm != "bn":
                raise ConfigError("needs model.backbone.norm: bn (statistics that train)", key="train.sync_bn")
            if dist.device.type != "cuda":
                raise ConfigError("SyncBatchNorm runs on GPUs only; set it false on CPU", key="train.sync_bn")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.net = nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None) if dist.distributed else model
        self.criterion = build_criterion(cfg)
        total_batch = t.batch_size * dist.world_size
        self.optimizer = build_optimizer(cfg, model, total_batch)
        self.schedule = build_schedule(cfg, total_batch, [s * step_unit for s in t.lr_steps])
        self.amp_dtype = AMP_DTYPES[t.amp]
        self.scaler = torch.amp.GradScaler(dist.device.type, enabled=t.amp == "fp16")
        self.iteration, self.epoch, self.best_ap, self.skipped_batches = 0, 0, -1.0, 0
        self._stop_signal: Optional[int] = None
        if resume is not None:
            self.load(resume)

    # ------------------------------------------------------------------ state
    def state_dict(self, consumed_in_epoch: int, rng_per_rank: Optional[list] = None) -> dict:
        """The full resume state. ``rng_per_rank``: every rank's RNG states (gathered by
        :meth:`save`), so that each rank of a resumed DDP run continues its own streams."""
        return {"rng_per_rank": rng_per_rank or [rng_state()], "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "schedule": self.schedule.state_dict(),
                "iteration": self.iteration, "epoch": self.epoch, "best_ap": self.best_ap,
                "skipped_batches": self.skipped_batches,
                "sampler": self.loader.batch_sampler.state_dict(consumed=consumed_in_epoch),
                "rng": rng_state(), "config": config_to_dict(self.cfg),
                "meta": {"class_names": list(self.train_set.class_names),
                         "label_to_cat_id": [int(c) for c in self.train_set.label_to_cat_id]}}

    def load(self, path: Path) -> None:
        state = load_checkpoint_file(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration, self.epoch = int(state["iteration"]), int(state["epoch"])
        self.best_ap = float(state.get("best_ap", -1.0))
        self.skipped_batches = int(state.get("skipped_batches", 0))
        self.loader.batch_sampler.load_state_dict(state["sampler"])
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        if len(per_rank) == self.dist.world_size:
            set_rng_state(per_rank[self.dist.rank])
        else:  # another world size: every rank starts from rank 0's streams
            set_rng_state(per_rank[0])
            if self.dist.is_main:
                print(f"note: {path} was written by {len(per_rank)} process(es), this run has "
                      f"{self.dist.world_size}: the random streams are not continued exactly")
        if self.dist.is_main:
            print(f"resumed from {path} at iteration {self.iteration} (epoch {self.epoch})")

    def save(self, name: str, consumed_in_epoch: int) -> None:
        """Checkpoint (every rank calls it: the RNG states are gathered; rank 0 writes)."""
        rng_per_rank = all_gather_objects(rng_state())
        if self.dist.is_main:
            state = self.state_dict(consumed_in_epoch, rng_per_rank)
            save_checkpoint(state, self.work_dir / name)
            if name != "latest.pth":
                save_checkpoint(state, self.work_dir / "latest.pth")

    def _on_any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank (one one-element all-reduce under DDP)."""
        if not self.dist.distributed:
            return flag
        value = torch.tensor([float(flag)], device=self.dist.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())

    def _request_stop(self, signum, frame) -> None:
        if self._stop_signal is not None and signum == signal.SIGINT:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum
        if self.dist.is_main:
            print(f"\n{signal.Signals(signum).name}: saving a checkpoint after this iteration "
                  "(Ctrl-C again to stop at once)", file=sys.stderr)

    def _install_signal_handlers(self) -> dict:
        """SIGTERM and SIGINT set a flag that :meth:`train` checks after every iteration."""
        import threading
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)}

    # ------------------------------------------------------------------ step
    def train_step(self, batch) -> Dict[str, float]:
        """Forward, losses (Eq. 6), backward, clip, SGD step. Returns the logged values."""
        lr = self.schedule.apply(self.optimizer, self.iteration)
        images = batch["images"].to(self.dist.device, non_blocking=True)
        targets = [{k: (v.to(self.dist.device) if torch.is_tensor(v) else v) for k, v in t.items()}
                   for t in batch["targets"]]
        with torch.autocast(self.dist.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.net(images)
        losses = self.criterion(out, out["anchors"], targets)  # float32 inside
        terms = {k: v for k, v in losses.items() if k.startswith("loss_")}
        total = sum(terms.values())
        bad = [f"{name} = {value.item()}" for name, value in terms.items() if not torch.isfinite(value)]
        if self._on_any_rank(bool(bad)):  # every rank skips or stops together
            ids = [t["image_id"] for t in batch["targets"]]
            what = ", ".join(bad) if bad else "a loss term on another rank"
            message = (f"{what} at iteration {self.iteration} (lr {lr:.3g}) on images {ids} (rank {self.dist.rank})")
            if self.cfg.train.nonfinite == "skip":
                self.skipped_batches += 1
                print(f"warning: skipped batch {self.skipped_batches}: non-finite {message}", file=sys.stderr)
                self.optimizer.zero_grad(set_to_none=True)
                return {"lr": lr, "skipped_batches": float(self.skipped_batches)}
            raise NonFiniteLossError(f"{message}; the last good checkpoint is in {self.work_dir}. Lower train.lr, "
                                     "check these images' boxes, use train.grad_clip, or set "
                                     "train.nonfinite: skip to skip such batches.")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        grad_norm = None
        if self.cfg.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            grad_norm = float(nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        record = {k: float(v.detach()) for k, v in terms.items()}
        record.update(loss=float(total.detach()), lr=lr, num_pos=float(losses.get("num_pos", 0.0)),
                      skipped_batches=float(self.skipped_batches))
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        return record

    # ------------------------------------------------------------------ loops
    def train(self) -> Optional[Dict[str, float]]:
        """Train to ``max_iters``, save ``latest.pth``, evaluate (unless ``train.final_eval`` is
        false); returns the final metrics (None without the final evaluation)."""
        self.model.train()
        bar = tqdm(total=self.max_iters, initial=self.iteration, desc="train", unit="it",
                   disable=not self.progress, dynamic_ncols=True)
        start, start_iter = time.time(), self.iteration
        previous_handlers = self._install_signal_handlers()
        try:
            consumed = self._train_loop(bar, start, start_iter)
        finally:
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
        bar.close()
        self.save("latest.pth", consumed)
        metrics = self.evaluate(final=True) if self.cfg.train.final_eval else None
        self.logger.close()
        return metrics

    def _train_loop(self, bar, start: float, start_iter: int) -> int:
        """Iterate until ``max_iters``; returns the batches consumed in the current epoch.

        Raises TrainingInterrupted (after saving ``latest.pth``) once SIGTERM or Ctrl-C
        arrived on any rank."""
        t = self.cfg.train
        consumed = self.loader.batch_sampler.state_dict()["position"]
        while self.iteration < self.max_iters:
            sampler = self.loader.batch_sampler
            sampler.set_epoch(self.epoch)
            if self.loader.generator is not None:  # worker seeds depend on (seed, epoch) only
                self.loader.generator.manual_seed(t.seed * 1000 + self.epoch)
            consumed = sampler.state_dict()["position"]
            # A checkpoint taken at the epoch's last batch resumes at the epoch's end (the
            # sampler would start the finished epoch over).
            for batch in (self.loader if consumed < self.iters_per_epoch else ()):
                record = self.train_step(batch)
                self.iteration += 1
                consumed += 1
                if self.iteration % t.log_interval == 0 or self.iteration == self.max_iters:
                    record["epoch"] = self.epoch
                    record["time_per_iter"] = (time.time() - start) / (self.iteration - start_iter)
                    self.logger.log(record, self.iteration)
                bar.set_postfix({k: f"{record[k]:.3f}" for k in ("loss_cls", "loss_reg", "loss_iou") if k in record}
                                | {"lr": f"{record['lr']:.2e}"})
                bar.update(1)
                if t.checkpoint_interval and self.iteration % t.checkpoint_interval == 0:
                    self.save(f"iter_{self.iteration}.pth", consumed)
                if self._on_any_rank(self._stop_signal is not None):
                    bar.close()
                    self.save("latest.pth", consumed)
                    self.logger.close()
                    raise TrainingInterrupted(self._stop_signal or signal.SIGTERM, self.iteration,
                                              self.work_dir / "latest.pth")
                if self.iteration >= self.max_iters:
                    break
            if consumed >= self.iters_per_epoch:  # the epoch is complete (also when it ends the run)
                self.epoch += 1
                consumed = 0
                # Evaluate before the epoch's checkpoint: a run killed during the evaluation
                # resumes from an earlier checkpoint and evaluates again.
                if t.eval_interval and self.epoch % t.eval_interval == 0 and self.iteration < self.max_iters:
                    self.evaluate()
                self.save(f"epoch_{self.epoch}.pth", 0)
        return consumed

    def evaluate(self, final: bool = False) -> Optional[Dict[str, float]]:
        """COCO box AP on ``cfg.data.val`` (every rank runs its shard; rank 0 scores)."""
        if self.val_set is None:
            self.val_set = build_dataset(self.cfg, "val")
        dist = self.dist
        results = predict_dataset(self.net, self.val_set, batch_size=self.cfg.train.batch_size,
                                  num_workers=self.cfg.data.num_workers, device=dist.device,
                                  distributed=(dist.rank, dist.world_size) if dist.distributed else None,
                                  progress=self.progress, amp_dtype=self.amp_dtype)
        metrics = None
        if dist.is_main:
            metrics = evaluate_coco(coco_ground_truth(self.val_set), results, backend=self.cfg.train.eval_backend)
            self.logger.log({k: v for k, v in metrics.items() if k != "per_class"}, self.iteration, prefix="val")
            print(f"\nevaluation at iteration {self.iteration} (epoch {self.epoch}), {len(results)} detections:")
            print(format_metrics(metrics))
            if metrics["AP"] > self.best_ap:
                self.best_ap = metrics["AP"]
                save_checkpoint(self.state_dict(0), self.work_dir / "best.pth")
            if final:
                atomic_write_text(json.dumps(metrics, indent=2), self.work_dir / "metrics.json")
        self.model.train()
        return broadcast_object(metrics)
