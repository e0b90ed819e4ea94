"""What both framework callbacks keep: their watch() settings, the handle, the report and the findings acted on."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gradhealth.report.schema import SEVERITY_ORDER

if TYPE_CHECKING:
    from gradhealth.report import Finding
    from gradhealth.sdk import Report, Watch


class WatchCallbackSettings:
    """Checked once here, so the Lightning and Hugging Face callbacks refuse the same arguments alike."""

    def __init__(
        self,
        run: str | None,
        client: Any,
        on_finding: Callable[[Finding, Watch], None] | None,
        on_finding_severity: str,
        watch_options: dict[str, Any],
    ) -> None:
        if on_finding_severity not in SEVERITY_ORDER:
            raise ValueError(f"on_finding_severity is one of {list(SEVERITY_ORDER)}; got {on_finding_severity!r}")
        self.run, self.client = run, client
        self.on_finding, self.on_finding_severity = on_finding, on_finding_severity
        self.watch_options = watch_options
        self.watch: Watch | None = None  # the handle (kept after training: run_id, skipped_steps, steps_recorded)
        self.report: Report | None = None  # the run's report, read when training ends
        self.findings: list[Finding] = []  # findings handed to on_finding during training
