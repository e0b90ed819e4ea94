"""PyTorch Lightning callback: gradhealth.watch() on a `Trainer.fit`, with no code in the LightningModule.

Lightning runs forward and backward inside optimizer.step(closure), so the optimizer's pre-step hook
fires before the gradients exist: the callback reads them in `on_before_optimizer_step` (after backward,
after GradScaler's unscale, after gradient accumulation) and lets watch()'s post-step hook finish the
record. Needs the `lightning` extra: pip install "gradhealth[lightning]".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from gradhealth.report.schema import SEVERITY_ORDER

from ._settings import WatchCallbackSettings

if TYPE_CHECKING:
    from gradhealth.report import Finding
    from gradhealth.sdk import Watch


class GradHealthCallback(WatchCallbackSettings, pl.Callback):
    """Watch a Lightning fit: one record per optimizer step; the run id and findings go to the trainer's loggers.

    Args:
        run: the run's name on the service (default: the LightningModule's class and the start time).
        client: a gradhealth.Client (default: from $GRADHEALTH_URL / $GRADHEALTH_API_KEY).
        on_finding: called as on_finding(finding, watch) after an optimizer step for each new finding at or
            above `on_finding_severity`; gradhealth.actions.stop_training sets `trainer.should_stop`,
            checkpoint_and_continue uses `trainer.save_checkpoint`, lower_lr scales the schedulers too.
        on_finding_severity: the least severity that calls on_finding.
        **watch_options: passed to gradhealth.watch() (every, budget, param_every, flush_interval, ...).
    """

    def __init__(
        self,
        run: str | None = None,
        client: Any = None,
        *,
        on_finding: Callable[[Finding, Watch], None] | None = None,
        on_finding_severity: str = "error",
        **watch_options: Any,
    ) -> None:
        WatchCallbackSettings.__init__(self, run, client, on_finding, on_finding_severity, watch_options)
        self._trainer: pl.Trainer | None = None
        self._stepped = False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import gradhealth

        optimizers = trainer.optimizers
        if not optimizers:
            return
        if len(optimizers) > 1:
            rank_zero_warn("GradHealthCallback watches the first optimizer only")
        self._trainer = trainer
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self.watch = gradhealth.watch(
            pl_module, optimizers[0], run=self.run, client=self.client, scaler=scaler, **self.watch_options
        )
        self.watch.stop_hook = self._stop
        self.watch.checkpoint_hook = trainer.save_checkpoint
        self.watch.lr_schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        self.watch.on_finding(self._found, self.on_finding_severity)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        self._stepped = False

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:  # after backward (and unscale), before the update
        if self.watch is not None:
            self._stepped = True
            self.watch.before_step()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if self.watch is None or not isinstance(loss, Tensor):
            return
        # Lightning divides the loss by accumulate_grad_batches; a micro-batch logged before its optimizer step
        # belongs to the coming step, the last one (after the step) to the step just taken
        step = self.watch.steps_taken - (1 if self._stepped else 0)
        self.watch.log(loss.detach() * trainer.accumulate_grad_batches, step=step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._finish(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.watch is not None:
            self.watch.close()

    def _finish(self, trainer: pl.Trainer) -> None:
        """Deliver the rest, read the report, and hand the run id and findings to the loggers."""
        watch = self.watch
        if watch is None or self.report is not None:
            return
        watch.close()  # on every rank: the others' hooks go too
        if not watch.active:
            return
        try:
            self.report = watch.report()
        except Exception as exc:  # the service is away: training is done, say so and carry on
            rank_zero_warn(f"gradhealth: no run report ({exc})")
            return
        rank_zero_info(f"gradhealth run {watch.run_id}: {self.report.health} ({len(self.report.findings)} findings)")
        for logger in trainer.loggers:
            logger.log_hyperparams({"gradhealth_run_id": watch.run_id, "gradhealth_health": self.report.health})
            for finding in self.report.findings:
                metric = {f"gradhealth/{finding.rule}": float(SEVERITY_ORDER[finding.severity])}
                logger.log_metrics(metric, step=finding.step or 0)
            logger.save()

    def _found(self, finding: Finding, watch: Watch) -> None:
        self.findings.append(finding)
        if self._trainer is not None:
            for logger in self._trainer.loggers:
                logger.log_metrics(
                    {f"gradhealth/{finding.rule}": float(SEVERITY_ORDER[finding.severity])}, step=watch.steps_taken
                )
        if self.on_finding is not None:
            self.on_finding(finding, watch)

    def _stop(self, finding: Finding) -> None:
        if self._trainer is not None:
            rank_zero_info(f"gradhealth: stopping the fit on {finding.severity} {finding.rule} at step {finding.step}")
            self._trainer.should_stop = True
