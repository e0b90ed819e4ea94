"""The log-batch decoder on its own: gzip caps, encodings and the shapes it accepts (no server needed)."""

from __future__ import annotations

import gzip
import json

import msgpack
import numpy as np
import pytest

pytest.importorskip("fastapi", reason="server extra not installed")

from gradhealth.api.errors import ApiError  # noqa: E402
from gradhealth.api.run_codec import parse_body, to_log_batch  # noqa: E402

METRICS = ["grad_norm", "weight_norm"]


def test_gzip_bomb_is_refused_before_it_inflates() -> None:
    bomb = gzip.compress(b" " * 5_000_000)
    assert len(bomb) < 10_000
    with pytest.raises(ApiError) as caught:
        parse_body(bomb, "application/json", "gzip", max_bytes=1_000_000)
    assert caught.value.status == 413 and "inflates beyond" in caught.value.message


def test_json_nulls_nan_and_msgpack_bins_decode_to_the_same_batch() -> None:
    values = np.array([[1.5, np.nan], [np.inf, 2.0]], dtype=np.float32)
    as_json = {
        "seq": 0,
        "steps": [10, 11],
        "loss": [1.0, None],
        "metrics": {"grad_norm": [[1.5, None], [float("inf"), 2.0]]},
    }
    as_msgpack = {**as_json, "metrics": {"grad_norm": values.astype("<f4").tobytes()}}
    from_json = to_log_batch(parse_body(json.dumps(as_json).encode(), "application/json", None, 10**6), METRICS, 2)
    from_msgpack = to_log_batch(
        parse_body(gzip.compress(msgpack.packb(as_msgpack)), "application/msgpack", "gzip", 10**6), METRICS, 2
    )
    for batch in (from_json, from_msgpack):
        np.testing.assert_array_equal(batch.values[0], values)
        assert np.isnan(batch.values[1]).all()  # weight_norm not sent: not measured
        np.testing.assert_array_equal(batch.loss_logged, [True, False])
        assert batch.steps.tolist() == [10, 11]


def test_bin_of_the_wrong_length_says_what_was_expected() -> None:
    body = {"seq": 0, "steps": [0, 1], "metrics": {"grad_norm": b"\x00" * 12}}
    with pytest.raises(ApiError) as caught:
        to_log_batch(body, METRICS, 2)
    assert caught.value.status == 422 and "expected 16" in caught.value.message
