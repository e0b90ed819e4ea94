"""The callbacks benchmark's fits (benchmarks/watch_callbacks.py): a Lightning fit or a Trainer.train() of one
benchmarks/watch_overhead.py case, fed one fixed batch, calling back at each batch start."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from watch_overhead import Case


class _Repeat(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """One fixed batch, sample by sample, `n` times over."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, n: int) -> None:
        self.x, self.y, self.n = x, y, n

    def __len__(self) -> int:
        return self.n * len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i % len(self.x)], "labels": self.y[i % len(self.x)]}


def _case_data(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = case.batch(torch.Generator().manual_seed(1))
    if y.shape[0] != x.shape[0]:  # the language model: targets are per token
        y = y.view(x.shape[0], -1)
    return x, y


class _Wrapped(nn.Module):
    """The case's model with the Trainer's convention: forward(x, labels) -> {"loss"}."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": F.cross_entropy(self.model(x), labels.flatten())}


# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
STEADY_MMAP_THRESHOLD = 32 << 20  # glibc's ceiling for it on 64-bit
STEADY_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: about 2 GiB, more than any fit here frees at the top


def configure_malloc(steady: bool) -> None:
    """All threads allocate from one glibc arena, as a one-thread training loop does (see watch_callbacks.py).

    `steady`: fixed thresholds, so neither rises nor trims as blocks come and go: glibc's dynamic mmap threshold and
    heap trimming otherwise make a fit's speed depend on what was freed before (a watch's buffers, say).
    """
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name is not None else None
    if libc is None or not hasattr(libc, "mallopt"):
        print("note: not glibc; the two fits keep their own allocator state")
        return
    if libc.mallopt(M_ARENA_MAX, 1) != 1:
        print("note: mallopt(M_ARENA_MAX, 1) refused; the two fits may allocate from separate arenas")
    if steady and (
        libc.mallopt(M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD) != 1
        or libc.mallopt(M_TRIM_THRESHOLD, STEADY_TRIM_THRESHOLD) != 1
    ):
        print("note: mallopt refused the steady thresholds; glibc's dynamic ones stay")


def fit_lightning(case: Case, steps: int, callbacks: list[Any], tick: Callable[[], bool | None]) -> None:
    """One Lightning fit of at most `steps` steps; `tick` at each batch start (True: stop after this step)."""
    import lightning.pytorch as pl

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.model = case.build()

        def training_step(self, batch: dict[str, torch.Tensor], idx: int) -> torch.Tensor:
            return F.cross_entropy(self.model(batch["x"]), batch["labels"].flatten())

        def on_train_batch_start(self, batch: Any, idx: int) -> None:
            if tick():
                self.trainer.should_stop = True

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return case.optimizer(self.model)

    x, y = _case_data(case)
    loader = torch.utils.data.DataLoader(_Repeat(x, y, steps + 1), batch_size=len(x))
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Module(), loader)


def fit_hf(case: Case, steps: int, callbacks: list[Any], root: Path, tick: Callable[[], bool | None]) -> None:
    """One Trainer.train() of at most `steps` steps; `tick` at each step start (True: stop after this step)."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Tick(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if tick():
                control.should_training_stop = True

    torch.manual_seed(0)
    model = _Wrapped(case.build())
    x, y = _case_data(case)
    args = TrainingArguments(
        output_dir=str(root),
        max_steps=steps,
        per_device_train_batch_size=len(x),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        max_grad_norm=0.0,
        lr_scheduler_type="constant",
    )
    callbacks = [Tick(), *callbacks]
    optimizer = case.optimizer(model)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Repeat(x, y, steps + 1),
        optimizers=(optimizer, None),
        callbacks=callbacks,
    )
    trainer.train()


def run_fit(
    framework: str, case: Case, steps: int, callbacks: list[Any], root: Path, tick: Callable[[], bool | None]
) -> None:
    """A Lightning fit or a Trainer.train() (its output under `root`) of at most `steps` steps, with `callbacks`."""
    if framework == "lightning":
        fit_lightning(case, steps, callbacks, tick)
    else:
        fit_hf(case, steps, callbacks, root, tick)


def callback_class(framework: str) -> Any:
    """The framework's GradHealthCallback."""
    if framework == "lightning":
        from gradhealth.integrations.lightning import GradHealthCallback

        return GradHealthCallback
    from gradhealth.integrations.transformers import GradHealthCallback as HFCallback

    return HFCallback
