"""A progress bar for wait(): tqdm when installed, a plain line otherwise; silent off a terminal."""

from __future__ import annotations

import sys
from typing import Any, TextIO

from .types import Analysis


def _interactive(stream: TextIO) -> bool:
    """A terminal, or a Jupyter kernel (whose stderr is not a TTY but is shown to a person)."""
    try:
        if stream.isatty():
            return True
    except (AttributeError, ValueError):
        return False
    shell = sys.modules.get("IPython")
    get_ipython = getattr(shell, "get_ipython", None) if shell else None
    return bool(get_ipython and get_ipython() is not None and "ipykernel" in sys.modules)


class ProgressBar:
    """Shows phase and fraction of one analysis; a no-op when disabled."""

    def __init__(self, enabled: bool, description: str, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled and _interactive(self.stream)
        self.description = description
        self._bar: Any = None
        self._plain_shown = False
        if self.enabled:
            try:
                from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]
            except ImportError:
                return
            self._bar = tqdm(
                total=100,
                desc=description,
                unit="%",
                file=self.stream,
                leave=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| [{elapsed}]{postfix}",
            )

    def update(self, analysis: Analysis) -> None:
        """Move to the analysis's current fraction and show its phase."""
        phase = analysis.progress.phase if analysis.status != "failed" else "failed"
        self.show(phase, analysis.progress.fraction)

    def show(self, phase: str, fraction: float = 0.0) -> None:
        """Show a phase (local ones too: packaging, uploading) at a fraction 0..1."""
        if not self.enabled:
            return
        percent = round(100 * min(max(fraction, 0.0), 1.0))
        if self._bar is not None:
            self._bar.n = percent
            self._bar.set_postfix_str(phase, refresh=False)
            self._bar.refresh()
        else:
            self._plain_shown = True
            print(f"\r{self.description}: {percent:3d}% {phase:<24}", end="", file=self.stream, flush=True)

    def close(self) -> None:
        """End the line so later output starts cleanly."""
        if self._bar is not None:
            self._bar.close()
        elif self._plain_shown:
            print("", file=self.stream, flush=True)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
