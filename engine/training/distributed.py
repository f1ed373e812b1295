"""One run trained on N devices at once (RunConfig.devices): distributed data-parallel on one machine.

N processes join a torch.distributed group on loopback, gloo on the CPU and nccl on CUDA (rank r uses GPU r).
Rank 0 is the process that executes the run (a worker's child, `engine train`, a Ray task's child: all go through
engine.runs.execute); it starts ranks 1..N-1 itself with torch.multiprocessing ('spawn'). Not torchrun, not Ray
Train: the run's process already exists and owns the run's store row, heartbeat and handlers, so starting its
peers from it keeps one code path for all three, and the tests run without Ray. On a Ray cluster the executor asks
for N GPUs for such a run (engine.runs.ray_executor.run_resources), so its ranks start on one node.

What the ranks do (DistributedTrainer):
- the same order of the training images, drawn from (seed, epoch); rank r trains on its share of every batch of
  `batch_size` images, through DistributedDataParallel, which averages the gradients in backward: N ranks take the
  steps one process takes with the same batch size. BatchNorm statistics stay per rank (SyncBatchNorm needs
  CUDA/NCCL and does not run on gloo), so a BatchNorm model differs a little from one process; a model without
  BatchNorm matches it to rounding (tests/unit/test_ddp.py).
- rank 0 alone validates, talks to the store and writes files: the handlers attach to its events only. After each
  step and each epoch rank 0 tells the others to go on, to stop (early stopping, time limit) or to leave (cancel,
  prune, failure), so every rank leaves the loop at the same point and none waits for a peer that left.
- checkpoints hold the unwrapped model (no 'module.' prefix): a checkpoint of a run on N devices loads in a run on
  one and vice versa, and prediction and export read it unchanged. Every rank resumes from the same last.pt.
- a rank that fails leaves its message in the group's store and exits; rank 0 reports it as the run's failure.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from engine.config import RunConfig
from engine.device import pick_device
from engine.errors import UserError, one_line
from engine.preflight import check_config
from engine.training.events import Events
from engine.training.stops import RunCancelled, RunPruned, TrainingStopped
from engine.training.trainer import Trainer, TrainState, seed_everything

HOST = "127.0.0.1"
READY_SECONDS = 900           # ranks 1..N-1 load the data and build the model while rank 0 does the same
COLLECTIVE_MINUTES = 30       # the others wait at most this long while rank 0 validates, saves and draws previews
JOIN_SECONDS = 30             # ranks leave on their own once told; after this they are ended
GO, STOP, LEAVE = 0, 1, 2     # what rank 0 tells the others after each step and each epoch


class _Released(Exception):
    """Raised on ranks 1..N-1 when rank 0 ended the run early with an exception (cancel, prune, failure)."""


def check_devices(config: RunConfig) -> torch.device:
    """The device type the ranks use; refuses more GPUs than this machine has (checked where the run starts: the
    machine that queued it may not be the one that trains it)."""
    device = pick_device(config.device)
    if device.type == "cuda" and config.devices > torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise UserError(f"This run asks for {config.devices} GPUs and {n} {'is' if n == 1 else 'are'} available to "
                        f"it here; set Devices to at most {n}.")
    return device


def new_trainer(config: RunConfig, run_dir: Path, events: Events, resume: bool = False) -> Trainer:
    """The Trainer of a run: one process, or rank 0 of a run on `config.devices` devices (its peers start here)."""
    if config.devices <= 1:
        return Trainer(config, run_dir, events)
    return DistributedTrainer(config, run_dir, events, resume=resume)


def release(trainer: Trainer | None) -> None:
    """A distributed run's other processes end with it, whatever happened (idempotent)."""
    if isinstance(trainer, DistributedTrainer):
        trainer.close()


class DistributedTrainer(Trainer):
    """One rank of a run on `config.devices` devices. Rank 0 is built by new_trainer and starts the others."""

    def __init__(self, config: RunConfig, run_dir: Path, events: Events | None = None, *, rank: int = 0,
                 resume: bool = False, group_store: dist.Store | None = None) -> None:
        self.rank, self.world = rank, config.devices
        self.helpers: list = []
        self.ddp: DistributedDataParallel | None = None
        self.threads = torch.get_num_threads()
        if rank == 0:
            check_config(config)            # a refused run starts no process
        kind = check_devices(config).type
        self.backend = "nccl" if kind == "cuda" else "gloo"
        self.group_store = group_store
        try:
            if kind == "cuda":
                torch.cuda.set_device(rank)
            else:
                torch.set_num_threads(max(1, self.threads // self.world))      # N processes share the cores
                if sys.platform == "linux":
                    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")           # all ranks are on this machine
            if rank == 0:
                self.group_store = dist.TCPStore(HOST, 0, self.world, is_master=True, wait_for_workers=False,
                                                 timeout=timedelta(seconds=READY_SECONDS))
                self._start_helpers(config, Path(run_dir), resume)
            super().__init__(config, run_dir, events)
            if rank == 0:
                self._wait_until_ready()
            else:
                self.group_store.set(f"ready/{rank}", "1")
            dist.init_process_group(self.backend, store=self.group_store, rank=rank, world_size=self.world,
                                    timeout=timedelta(minutes=COLLECTIVE_MINUTES))
        except BaseException:
            self.close(wait=0)
            raise
        if kind == "cuda":
            self.device = torch.device("cuda", rank)

    # ---- processes ------------------------------------------------------------------------------------
    def _start_helpers(self, config: RunConfig, run_dir: Path, resume: bool) -> None:
        context = mp.get_context("spawn")
        for rank in range(1, self.world):
            proc = context.Process(target=_rank_main, name=f"lightbox-rank-{rank}", daemon=True,
                                   args=(config.to_dict(), str(run_dir), rank, resume, self.group_store.port,
                                         os.getpid()))
            proc.start()
            self.helpers.append(proc)

    def _wait_until_ready(self) -> None:
        """Wait for ranks 1..N-1 to load their data, watching that each is still alive."""
        deadline = time.monotonic() + READY_SECONDS
        for rank, proc in enumerate(self.helpers, start=1):
            while not self.group_store.check([f"ready/{rank}"]):
                if not proc.is_alive() or self.error_of(rank):
                    proc.join(5)
                    raise TrainingStopped(self.error_of(rank) or self._lost(rank, proc))
                if time.monotonic() > deadline:
                    raise TrainingStopped(f"Process {rank + 1} of {self.world} of this run did not start within "
                                          f"{READY_SECONDS // 60} minutes; train on one device or retry when the "
                                          "machine is less busy.")
                time.sleep(0.2)

    def _lost(self, rank: int, proc) -> str:
        return (f"Process {rank + 1} of {self.world} of this run ended (exit code {proc.exitcode}) without saying "
                "why; its log (train.log) may tell, or train on one device.")

    def error_of(self, rank: int) -> str:
        """The message rank `rank` left before it failed; '' if none."""
        try:
            key = f"error/{rank}"
            return self.group_store.get(key).decode() if self.group_store.check([key]) else ""
        except Exception:  # noqa: BLE001 - the store went with rank 0: nothing to read
            return ""

    def close(self, wait: float = JOIN_SECONDS) -> None:
        """Rank 0: wait for the others to leave (told to, or done), end those that do not; every rank leaves the
        group and gets its threads back. Safe to call twice."""
        for proc in self.helpers:
            proc.join(wait)
        for proc in self.helpers:
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        if dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(self.threads)

    # ---- agreement between ranks ----------------------------------------------------------------------
    def _word(self, value: int) -> int:
        """Rank 0's `value`, on every rank."""
        word = torch.tensor([value], dtype=torch.int64, device=self.device if self.backend == "nccl" else "cpu")
        dist.broadcast(word, src=0)
        return int(word.item())

    def _agree(self) -> None:
        """After rank 0 alone did something (handlers, validation): all ranks go on or stop at the same point."""
        word = self._word(STOP if self.state.should_stop else GO)
        if word == LEAVE:
            raise _Released()
        self.state.should_stop = word == STOP

    def _tell_leave(self) -> None:
        """Rank 0 failed or was stopped by an exception: the others leave at their next point of agreement.
        Best effort: a rank that already failed, or waits inside a step, is ended by close()."""
        with contextlib.suppress(Exception):      # close() ends whoever did not hear it
            word = torch.tensor([LEAVE], dtype=torch.int64, device=self.device if self.backend == "nccl" else "cpu")
            dist.broadcast(word, src=0, async_op=True).wait(timedelta(seconds=10))

    # ---- loop -----------------------------------------------------------------------------------------
    def fit(self, start_epoch: int = 0) -> TrainState:
        try:
            self._begin(start_epoch)
            return super().fit(start_epoch)
        except _Released:
            return self.state
        except BaseException as exc:
            if self.rank:
                raise
            self._tell_leave()
            self.close(wait=5)
            failure = self._first_failure(exc)
            if failure is exc:
                raise
            raise failure from exc
        finally:
            if self.rank == 0:
                self.close()

    def _begin(self, start_epoch: int) -> None:
        if self._word(start_epoch) != start_epoch:
            raise UserError(f"Process {self.rank + 1} of {self.world} resumed from epoch {start_epoch}, not from "
                            "rank 0's; resume the run again.")
        if self.rank:   # rank 0's random stream, restored or seeded: the others draw their own augmentations
            seed_everything(self.config.seed + 7919 * self.rank + 104_729 * start_epoch)
        options = {"device_ids": [self.device.index]} if self.backend == "nccl" else {}
        self.ddp = DistributedDataParallel(self.model, find_unused_parameters=self._has_unused_parameters(),
                                           **options)

    def _has_unused_parameters(self) -> bool:
        """Whether a trainable parameter takes no part in the forward pass (then DDP must look for such parameters
        every step, an extra walk of the graph). One pass over two validation images, the same on every rank."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.model.eval()           # BatchNorm statistics untouched
        try:
            images = self.val_images[:2].to(self.device).contiguous(memory_format=torch.channels_last)
            grads = torch.autograd.grad(self.model(images).float().sum(), params, allow_unused=True)
        finally:
            self.model.train()
        return any(grad is None for grad in grads)

    def _first_failure(self, exc: BaseException) -> BaseException:
        """Rank 0's own stop or refusal stands; a collective that broke because another rank failed becomes that
        rank's message."""
        if isinstance(exc, (UserError, TrainingStopped, RunCancelled, RunPruned)):
            return exc
        for rank in range(1, self.world):
            if message := self.error_of(rank):
                return TrainingStopped(message)
        return exc

    def epoch_batches(self, epoch: int):
        """Rank r's share of every batch of the epoch's order (the same order on every rank). Train metrics other
        than the loss are therefore measured on rank 0's share (a 1/N sample of the epoch); the loss is the mean
        over all ranks (_batch_loss), the same value on every rank, so a NaN stops them all at once."""
        order = self.epoch_order(epoch)
        bs = self.config.batch_size
        for first in range(0, len(order), bs):
            index = order[first:first + bs]
            if len(index) < 2 * self.world:
                continue    # every rank needs 2 images (BatchNorm); skipping loses < 2N samples per epoch
            mine = index.tensor_split(self.world)[self.rank]
            yield mine, len(mine) / len(index)

    def _batch_loss(self, loss: torch.Tensor, share: float) -> torch.Tensor:
        """The loss over the whole batch: each rank's mean weighted by its share of the images."""
        total = (loss.float() * share).reshape(1)
        dist.all_reduce(total)
        return total[0]

    def step(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Trainer.step through the DDP wrapper, whose backward averages the gradients over the ranks."""
        module, self.model = self.model, self.ddp
        try:
            return super().step(images, targets)
        finally:
            self.model = module

    def end_epoch(self, epoch: int, train_metrics: dict[str, float], started: float) -> None:
        """Rank 0 validates, records and saves (the others wait); then all agree whether to go on."""
        if self.rank == 0:
            super().end_epoch(epoch, train_metrics, started)
        else:
            self.state.epoch = epoch
        self._agree()

    def _record_weights(self) -> str:
        if self.rank == 0:
            return super()._record_weights()
        report = getattr(self.model.net, "weights_report", None)     # rank 0 wrote weights.json already
        return report.summary() if report is not None else ""


def _rank_main(config: dict, run_dir: str, rank: int, resume: bool, port: int, parent: int) -> None:
    """Rank 1..N-1 of a run, in its own process: no handlers, no files, no store rows; the same steps as rank 0."""
    _die_with_parent(parent)
    group_store = None
    try:
        run_config = RunConfig.from_dict(config)
        group_store = dist.TCPStore(HOST, port, run_config.devices, is_master=False,
                                    timeout=timedelta(seconds=READY_SECONDS))
        trainer = DistributedTrainer(run_config, Path(run_dir), rank=rank, group_store=group_store)
        last = Path(run_dir) / "last.pt"
        trainer.fit(start_epoch=trainer.restore(last) if resume and last.exists() else 0)
    except BaseException as exc:  # noqa: BLE001 - rank 0 reports the message as the run's failure
        if not isinstance(exc, (UserError, TrainingStopped)):
            traceback.print_exc(file=sys.stderr)
        if group_store is not None:
            with contextlib.suppress(Exception):      # rank 0 is gone: nobody to tell
                group_store.set(f"error/{rank}", _message(exc))
        os._exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _message(exc: BaseException) -> str:
    if isinstance(exc, (UserError, TrainingStopped)):
        return one_line(exc, 1000)
    return f"Unexpected error: {type(exc).__name__}: {one_line(exc, 300)}"


def _die_with_parent(parent: int) -> None:
    """A rank must not outlive rank 0's process (killed by a worker or a cancelled Ray task)."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)       # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os._exit(1)
