"""Hugging Face `Trainer` callback: gradhealth.watch() on `Trainer.train()`, with no change to the training code.

watch() hooks the torch optimizer inside accelerate's AcceleratedOptimizer, so it records once per
optimizer step (gradient accumulation: the summed gradients, after clipping, as the optimizer sees them)
and, under fp16 AMP, after GradScaler's unscale; a step the scaler skips on overflow is counted as
skipped (a gap in the run's steps), not recorded as non-finite gradients. The loss is read from the
model's outputs (`.loss`, averaged over the micro-batches of a step). Needs the `hf` extra.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

from ._settings import WatchCallbackSettings

if TYPE_CHECKING:
    from gradhealth.report import Finding
    from gradhealth.sdk import Watch

logger = logging.get_logger(__name__)


class GradHealthCallback(WatchCallbackSettings, TrainerCallback):  # type: ignore[misc]
    """Watch a Trainer run: `Trainer(..., callbacks=[GradHealthCallback("my-run")])`.

    Args:
        run: the run's name on the service (default: TrainingArguments.run_name, else the model's class).
        client: a gradhealth.Client (default: from $GRADHEALTH_URL / $GRADHEALTH_API_KEY).
        on_finding: called as on_finding(finding, watch) after an optimizer step for each new finding at or
            above `on_finding_severity`; gradhealth.actions.stop_training sets control.should_training_stop,
            lower_lr scales the Trainer's lr scheduler too.
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
        self._stop: Finding | None = None

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        import gradhealth

        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        if model is None or optimizer is None or self.watch is not None:
            return
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one
        scaler = getattr(optimizer, "scaler", None)
        run = self.run or (args.run_name if args.run_name and args.run_name != args.output_dir else None)
        self.watch = gradhealth.watch(model, inner, run=run, client=self.client, scaler=scaler, **self.watch_options)
        self.watch.stop_hook = self._request_stop
        scheduler = kwargs.get("lr_scheduler")
        self.watch.lr_schedulers = [scheduler] if scheduler is not None else []
        self.watch.on_finding(self._found, self.on_finding_severity)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._stop is not None:
            control.should_training_stop = True

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs is not None and self.watch is not None and self.watch.active:
            logs["gradhealth_findings"] = len(self.findings)  # numbers only: every reporter takes them

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        watch = self.watch
        if watch is None or self.report is not None:
            return
        watch.close()  # on every rank: the others' hooks go too
        if not watch.active:
            return
        try:
            self.report = watch.report()
        except Exception as exc:  # the service is away: training is done, say so and carry on
            logger.warning(f"gradhealth: no run report ({exc})")
            return
        logger.warning(f"gradhealth run {watch.run_id}: {self.report.health} ({len(self.report.findings)} findings)")

    def _found(self, finding: Finding, watch: Watch) -> None:
        self.findings.append(finding)
        if self.on_finding is not None:
            self.on_finding(finding, watch)

    def _request_stop(self, finding: Finding) -> None:
        logger.warning(f"gradhealth: stopping training on {finding.severity} {finding.rule} at step {finding.step}")
        self._stop = finding
