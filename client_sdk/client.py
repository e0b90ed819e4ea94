"""`gradhealth.Client` and `gradhealth.AsyncClient`: the REST API as typed resources, plus analyze()."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, overload

import httpx

from ._base import AsyncAPIClient, SyncAPIClient, TimeoutArg
from ._constants import DEFAULT_MAX_RETRIES, DEFAULT_WAIT_TIMEOUT
from ._prepare import DataArg, LossArg, ModelArg, OptimizerArg, optimizer_spec, prepare, split_data
from ._progress import ProgressBar
from .analyses import Analyses, AsyncAnalyses, CheckSettings
from .audits import AsyncAudits, Audits
from .errors import NotFoundError
from .handles import AnalysisHandle, AsyncAnalysisHandle, follow, follow_async
from .report import Report
from .run_compare import RunComparison
from .runs import AsyncRuns, Runs
from .types import Analysis, Run
from .uploads import AsyncBatches, AsyncModels, Batches, Models


class Client(SyncAPIClient):
    """A gradhealth service: `client.models`, `client.batches`, `client.analyses`, and `analyze()`.

    Args:
        api_key: defaults to $GRADHEALTH_API_KEY, then (for a server on this machine) the key
            `gradhealth serve` keeps in its data folder.
        base_url: defaults to $GRADHEALTH_URL, then http://127.0.0.1:8000.
        timeout: per request (seconds or httpx.Timeout); default 600 s, 5 s to connect.
        max_retries: retries of connection errors and 408/409/429/5xx answers (default 2).
        http_client: an httpx.Client to use (proxies, transports, tests); closed by its owner.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: TimeoutArg = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
    ) -> None:
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
            http_client=http_client,
        )
        self.models = Models(self)
        self.batches = Batches(self)
        self.analyses = Analyses(self)
        self.audits = Audits(self)
        self.runs = Runs(self)

    def __enter__(self) -> Client:
        return self

    def compare_runs(self, run_ids: Sequence[str | Run], *, points: int | None = None) -> RunComparison:
        """2 to 8 runs of this project side by side: aligned by step, findings per run, when each rule fired.

        Args:
            run_ids: the runs' ids (or Run objects), in the order to show them.
            points: the most points per series (10 to 1000; the server's default is 400); longer spans are
                downsampled into equal-width step buckets (loss and lr averaged, gradient norms maximum).

        Returns:
            A RunComparison; `.to_html()` overlays the runs' charts, `.to_markdown()` summarises.
        """
        return self.runs.compare(run_ids, points=points)

    @overload
    def analyze(
        self,
        model: ModelArg,
        data: DataArg | None = None,
        *,
        batches: Sequence[DataArg] | None = None,
        loss: LossArg = None,
        optimizer: OptimizerArg = None,
        lr: float | None = None,
        momentum: float | None = None,
        weight_decay: float | None = None,
        betas: tuple[float, float] | None = None,
        precision: str = "fp32",
        checks: Sequence[str] = ("standard",),
        check_settings: CheckSettings | None = None,
        wait: Literal[True] = True,
        progress: bool = True,
        timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> Report: ...
    @overload
    def analyze(
        self,
        model: ModelArg,
        data: DataArg | None = None,
        *,
        batches: Sequence[DataArg] | None = None,
        loss: LossArg = None,
        optimizer: OptimizerArg = None,
        lr: float | None = None,
        momentum: float | None = None,
        weight_decay: float | None = None,
        betas: tuple[float, float] | None = None,
        precision: str = "fp32",
        checks: Sequence[str] = ("standard",),
        check_settings: CheckSettings | None = None,
        wait: Literal[False],
        progress: bool = True,
        timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> AnalysisHandle: ...
    def analyze(
        self,
        model: ModelArg,
        data: DataArg | None = None,
        *,
        batches: Sequence[DataArg] | None = None,
        loss: LossArg = None,
        optimizer: OptimizerArg = None,
        lr: float | None = None,
        momentum: float | None = None,
        weight_decay: float | None = None,
        betas: tuple[float, float] | None = None,
        precision: str = "fp32",
        checks: Sequence[str] = ("standard",),
        check_settings: CheckSettings | None = None,
        wait: bool = True,
        progress: bool = True,
        timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> Report | AnalysisHandle:
        """Package, upload what the server lacks, analyse, and (by default) wait for the Report.

        Args:
            model: an nn.Module (packaged with `loss` via gradhealth.package) or a package file.
            data: (inputs, targets) tensors, or a batch file from gradhealth.save_batch.
            batches: instead of data, 1 to 16 such batches: each is analysed and the report merged
                (estimates across_batches.<name> with a 95% interval over batches; majority findings).
            loss: a loss name or a callable (outputs, targets) -> per-sample losses.
            optimizer: 'sgd'|'adam'|'adamw' with lr (momentum, weight_decay, betas), an OptimizerSpec,
                or a torch.optim SGD/Adam/AdamW instance; enables the lr and update-size rules.
            precision: fp32, fp16 or bf16 (the precision you train in).
            checks: 'standard' and optionally 'curvature' (Hessian eigenvalue for lr_too_high), 'noise', and
                'verify' (short training trials with each remediation applied; docs/verify.md).
            check_settings: per-check settings, e.g. {"trace_probes": 0, "top_eigenvalues": 5, "verify_steps": 20}
                (names in CHECK_SETTINGS; unset ones keep the server's defaults).
            wait: False returns an AnalysisHandle at once.
            progress: show a progress bar (only on a terminal or in Jupyter).
            timeout: seconds to wait for the report.

        Returns:
            The Report, or an AnalysisHandle when wait=False.
        """
        spec = optimizer_spec(optimizer, lr, momentum, weight_decay, betas)
        with (
            tempfile.TemporaryDirectory(prefix="gradhealth-") as tmp,
            ProgressBar(progress and wait, "gradhealth") as bar,
        ):
            bar.show("packaging")
            prepared = prepare(model, *_first_and_rest(data, batches, Path(tmp), loss))
            bar.show("uploading")
            ids = (self.models.ensure(prepared.model_path), [self.batches.ensure(p) for p in prepared.batch_paths])

            def create(model_id: str, batch_ids: list[str]) -> Analysis:
                return self.analyses.create(
                    model_id=model_id,
                    batch_ids=batch_ids,
                    loss=prepared.loss,
                    optimizer=spec,
                    precision=precision,
                    checks=checks,
                    check_settings=check_settings,
                )

            try:
                analysis = create(*ids)
            except NotFoundError:  # the server lost an upload this client remembered: send the bytes again
                self._known_uploads.clear()
                analysis = create(
                    self.models.upload(prepared.model_path).id,
                    [self.batches.upload(p).id for p in prepared.batch_paths],
                )
            handle = AnalysisHandle(self, analysis)
            if not wait:
                return handle
            return follow(handle, timeout, bar)


def _first_and_rest(
    data: DataArg | None, batches: Sequence[DataArg] | None, workdir: Path, loss: LossArg
) -> tuple[DataArg, LossArg, Path, list[DataArg]]:
    """prepare()'s arguments after the model, from data= or batches=."""
    first, rest = split_data(data, batches)
    return first, loss, workdir, rest


class AsyncClient(AsyncAPIClient):
    """The async twin of Client: the same resources and methods, awaited."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: TimeoutArg = None,
        max_retries: int = DEFAULT_MAX_RETRIES,
        default_headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retries=max_retries,
            default_headers=default_headers,
            http_client=http_client,
        )
        self.models = AsyncModels(self)
        self.batches = AsyncBatches(self)
        self.analyses = AsyncAnalyses(self)
        self.audits = AsyncAudits(self)
        self.runs = AsyncRuns(self)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def compare_runs(self, run_ids: Sequence[str | Run], *, points: int | None = None) -> RunComparison:
        """As Client.compare_runs, awaited."""
        return await self.runs.compare(run_ids, points=points)

    @overload
    async def analyze(
        self,
        model: ModelArg,
        data: DataArg | None = None,
        *,
        batches: Sequence[DataArg] | None = None,
        loss: LossArg = None,
        optimizer: OptimizerArg = None,
        lr: float | None = None,
        momentum: float | None = None,
        weight_decay: float | None = None,
        betas: tuple[float, float] | None = None,
        precision: str = "fp32",
        checks: Sequence[str] = ("standard",),
        check_settings: CheckSettings | None = None,
        wait: Literal[True] = True,
        progress: bool = True,
        timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> Report: ...
    @overload
    async def analyze(
        self,
        model: ModelArg,
        data: DataArg | None = None,
        *,
        batches: Sequence[DataArg] | None = None,
        loss: LossArg = None,
        optimizer: OptimizerArg = None,
        lr: float | None = None,
        momentum: float | None = None,
        weight_decay: float | None = None,
        betas: tuple[float, float] | None = None,
        precision: str = "fp32",
        checks: Sequence[str] = ("standard",),
        check_settings: CheckSettings | None = None,
        wait: Literal[False],
        progress: bool = True,
        timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> AsyncAnalysisHandle: ...
    async def analyze(
        self,
        model: ModelArg,
        data: DataArg | None = None,
        *,
        batches: Sequence[DataArg] | None = None,
        loss: LossArg = None,
        optimizer: OptimizerArg = None,
        lr: float | None = None,
        momentum: float | None = None,
        weight_decay: float | None = None,
        betas: tuple[float, float] | None = None,
        precision: str = "fp32",
        checks: Sequence[str] = ("standard",),
        check_settings: CheckSettings | None = None,
        wait: bool = True,
        progress: bool = True,
        timeout: float = DEFAULT_WAIT_TIMEOUT,
    ) -> Report | AsyncAnalysisHandle:
        """As Client.analyze; packaging runs in a worker thread so the event loop keeps going."""
        spec = optimizer_spec(optimizer, lr, momentum, weight_decay, betas)
        with (
            tempfile.TemporaryDirectory(prefix="gradhealth-") as tmp,
            ProgressBar(progress and wait, "gradhealth") as bar,
        ):
            bar.show("packaging")
            prepared = await asyncio.to_thread(prepare, model, *_first_and_rest(data, batches, Path(tmp), loss))
            bar.show("uploading")
            batch_ids = [await self.batches.ensure(p) for p in prepared.batch_paths]
            ids = (await self.models.ensure(prepared.model_path), batch_ids)

            async def create(model_id: str, batch_ids: list[str]) -> Analysis:
                return await self.analyses.create(
                    model_id=model_id,
                    batch_ids=batch_ids,
                    loss=prepared.loss,
                    optimizer=spec,
                    precision=precision,
                    checks=checks,
                    check_settings=check_settings,
                )

            try:
                analysis = await create(*ids)
            except NotFoundError:  # the server lost an upload this client remembered: send the bytes again
                self._known_uploads.clear()
                model_id = (await self.models.upload(prepared.model_path)).id
                analysis = await create(model_id, [(await self.batches.upload(p)).id for p in prepared.batch_paths])
            handle = AsyncAnalysisHandle(self, analysis)
            if not wait:
                return handle
            return await follow_async(handle, timeout, bar)
