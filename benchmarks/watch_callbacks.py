"""Step-time overhead of gradhealth's framework callbacks: a Lightning fit and a Hugging Face `Trainer.train()`.

For each model of benchmarks/watch_overhead.py and each framework, fits with and without
`GradHealthCallback` (default settings: every=1 under the 3% budget, shipping to a real local
`gradhealth serve`) alternate in rounds; each fit runs `--warmup` steps (the budget settles its stride
within ~25) and then `--steps` timed steps. A step's time is the wall time between two consecutive
batch starts (the framework's own work, the callbacks and the data loader included); the table
shows the median over the timed steps of all rounds, and the callback's added time against the
plain fit measured in the same run. "stride" is the callback's recording interval at the end of its
last fit. The same fixed batch is fed at every step.

Budget (DESIGN.md §6): watch() through each callback adds <= 3% step time at default settings.

    python benchmarks/watch_callbacks.py [--rounds 3] [--steps 20] [--warmup 40] [--models cnn,mlp,transformer]
                                         [--frameworks lightning,hf]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from gradhealth.sdk.watching import WatchWarning
from torch import nn

import gradhealth

sys.path.insert(0, str(Path(__file__).parent))
from service import embedded  # noqa: E402
from watch_overhead import BUDGET, CASES, Case  # noqa: E402


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


def _timer_times() -> tuple[list[float], Any]:
    times: list[float] = []
    last: list[float] = []

    def tick() -> None:
        now = time.perf_counter()
        if last:
            times.append(now - last[0])
        last[:] = [now]

    return times, tick


def fit_lightning(case: Case, steps: int, callback: Any) -> tuple[list[float], Any]:
    """Per-step wall times of one Lightning fit of `steps` steps."""
    import lightning.pytorch as pl

    times, tick = _timer_times()

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.model = case.build()

        def training_step(self, batch: dict[str, torch.Tensor], idx: int) -> torch.Tensor:
            return F.cross_entropy(self.model(batch["x"]), batch["labels"].flatten())

        def on_train_batch_start(self, batch: Any, idx: int) -> None:
            tick()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return case.optimizer(self.model)

    x, y = _case_data(case)
    loader = torch.utils.data.DataLoader(_Repeat(x, y, steps + 1), batch_size=len(x))
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[callback] if callback is not None else [],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Module(), loader)
    return times, callback


def fit_hf(case: Case, steps: int, callback: Any, root: Path) -> tuple[list[float], Any]:
    """Per-step wall times of one Trainer.train() of `steps` steps."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    times, tick = _timer_times()

    class Tick(TrainerCallback):  # type: ignore[misc]
        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            tick()

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
    callbacks = [Tick(), *([callback] if callback is not None else [])]
    optimizer = case.optimizer(model)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_Repeat(x, y, steps + 1),
        optimizers=(optimizer, None),
        callbacks=callbacks,
    )
    trainer.train()
    return times, callback


def measure(
    framework: str, case: Case, client: gradhealth.Client, rounds: int, steps: int, warmup: int, root: Path
) -> dict[str, float]:
    """Median step time of the plain fit, the callback's added fraction and its final stride."""
    plain: list[float] = []
    watched: list[float] = []
    stride = 0
    for r in range(rounds):
        for variant in ("plain", "callback") if r % 2 == 0 else ("callback", "plain"):
            callback = None
            if variant == "callback":
                if framework == "lightning":
                    from gradhealth.integrations.lightning import GradHealthCallback
                else:
                    from gradhealth.integrations.transformers import GradHealthCallback  # type: ignore[assignment]
                callback = GradHealthCallback(f"bench-{framework}-{case.name}-{r}", client)
            if framework == "lightning":
                times, callback = fit_lightning(case, warmup + steps, callback)
            else:
                times, callback = fit_hf(case, warmup + steps, callback, root)
            (watched if variant == "callback" else plain).extend(times[warmup - 1 :])
            if callback is not None and callback.watch is not None:
                stride = callback.watch.stride
    base = statistics.median(plain)
    return {"plain": base, "overhead": statistics.median(watched) / base - 1, "stride": stride}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=40, help="steps per fit before the timed ones")
    parser.add_argument("--models", default="cnn,mlp,transformer")
    parser.add_argument("--frameworks", default="lightning,hf")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # the frameworks' notes and the throttle's: the stride column shows it
    for name in ("lightning", "lightning.pytorch", "transformers", "gradhealth"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=WatchWarning)
    with tempfile.TemporaryDirectory(prefix="gradhealth-callback-bench-") as tmp:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        with embedded(Path(tmp)) as (url, key):
            client = gradhealth.Client(base_url=url, api_key=key)
            print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; sink: gradhealth serve at {url}")
            print(
                f"{args.rounds} rounds x ({args.warmup} warm-up + {args.steps} timed steps) per fit; median step time"
            )
            print(f"{'framework':10s} {'model':38s} {'plain':>9s} {'callback':>9s} {'stride':>7s}")
            worst = 0.0
            for framework in args.frameworks.split(","):
                for name in args.models.split(","):
                    got = measure(framework, CASES[name], client, args.rounds, args.steps, args.warmup, Path(tmp))
                    worst = max(worst, got["overhead"])
                    print(
                        f"{framework:10s} {CASES[name].name:38s} {got['plain'] * 1e3:6.1f} ms "
                        f"{got['overhead']:>+9.1%} {got['stride']:>7.0f}"
                    )
            verdict = "within" if worst <= BUDGET else "OVER"
            print(f"\nworst callback overhead at default settings {worst:+.1%}: {verdict} the {BUDGET:.0%} budget")


if __name__ == "__main__":
    main()
