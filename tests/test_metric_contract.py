"""The gradient-log metric list has one home (gradhealth.diagnostics.run_rules.metrics); every user reads it there."""

from __future__ import annotations

import subprocess
import sys
from typing import get_args

from gradhealth.diagnostics.run_rules import METRICS, GradientMetric


def test_one_definition_shared_by_sdk_api_and_store() -> None:
    from gradhealth.api import run_codec, run_schemas
    from gradhealth.api.log_batch_doc import LogBatchBody
    from gradhealth.diagnostics.run_rules import chunk
    from gradhealth.sdk import watching

    assert (
        METRICS == get_args(GradientMetric) == ("grad_norm", "grad_max_abs", "nonfinite", "weight_norm", "update_norm")
    )
    assert watching.METRICS is METRICS and chunk.METRICS is METRICS
    assert run_codec.METRICS is METRICS and run_schemas.METRICS is METRICS
    names = LogBatchBody.model_json_schema()["properties"]["metrics"]["propertyNames"]["enum"]
    assert names == list(METRICS)


def test_history_route_lists_the_allowed_metrics_in_openapi() -> None:
    from gradhealth.api.main import create_app

    paths = create_app().openapi()["paths"]
    (history,) = [item["get"] for path, item in paths.items() if path.startswith("/v1/runs/") and "history" in path]
    (metric,) = [p for p in history["parameters"] if p["name"] == "metric"]
    assert metric["schema"]["enum"] == list(METRICS) and metric["schema"]["default"] == "grad_norm"


def test_the_metric_list_is_a_light_import() -> None:
    code = (
        "import sys; import gradhealth.diagnostics.run_rules.metrics; "
        "print('gradhealth.diagnostics.run_rules.evaluator' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
