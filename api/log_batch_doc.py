"""The JSON log batch as a schema for the OpenAPI document (and so for clients and the fuzzer).

run_codec decodes bodies itself, JSON or msgpack, for speed; this model states the same bounds.
"""

from __future__ import annotations

from typing import Annotated

from gradhealth.diagnostics.run_rules.metrics import GradientMetric
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from .paging import INT64_MAX
from .run_codec import MAX_STEPS_PER_BATCH, MAX_STRIDE

Count = Annotated[StrictInt, Field(ge=0, le=INT64_MAX)]
Stride = Annotated[StrictInt, Field(ge=1, le=MAX_STRIDE)]
Column = list[float | None]


class LogBatchBody(BaseModel):
    """One log batch (docs/runs.md); steps strictly increase, each metric has a row per step."""

    model_config = ConfigDict(extra="forbid")

    seq: Count = Field(description="batch number; a repeated seq is acknowledged, not stored twice")
    steps: list[Count] = Field(min_length=1, max_length=MAX_STEPS_PER_BATCH, description="strictly increasing")
    loss: Column | None = None
    lr: Column | None = None
    metrics: dict[GradientMetric, list[Column]] = Field(
        default_factory=dict, description="metric -> one row per step, one value per layer of the run"
    )
    dropped: Count = Field(default=0, description="steps the client dropped since the previous batch")
    stride: Stride | list[Stride] | None = Field(
        default=None,
        description="optimizer steps each record stands for (the recording interval): one for the batch, or one "
        "per step; absent: 1",
    )
