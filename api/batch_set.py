"""The batches an analysis runs on: each owned by the project, all shaped alike, so the merge compares like with like."""

from __future__ import annotations

import json

from gradhealth.store.keys import Principal
from gradhealth.store.models import Batch
from sqlalchemy.orm import Session

from .errors import ApiError
from .resources import get_owned


def _per_sample(shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """Tensor names and per-sample dims: batches may differ in size, never in what one sample is."""
    return {name: dims[1:] for name, dims in shapes.items()}


def owned_batches(session: Session, principal: Principal, batch_ids: list[str]) -> list[Batch]:
    """The batch rows in order; 404 naming the first unknown id, 422 naming a batch shaped unlike the first."""
    if len(set(batch_ids)) != len(batch_ids):
        dup = next(b for b in batch_ids if batch_ids.count(b) > 1)
        raise ApiError(
            422, f"batch {dup!r} is listed twice in batch_ids", code="duplicate_batch", detail={"batch_id": dup}
        )
    rows = [get_owned(session, Batch, batch_id, principal, "batch") for batch_id in batch_ids]
    first = _per_sample(json.loads(rows[0].shapes))
    for row in rows[1:]:
        shapes = _per_sample(json.loads(row.shapes))
        if shapes != first:
            raise ApiError(
                422,
                f"batch {row.id!r} does not fit: its tensors (per sample) are {shapes}, but batch "
                f"{rows[0].id!r} has {first}; every batch of an analysis must feed the model the same way",
                code="batch_shape_mismatch",
                detail={"batch_id": row.id, "shapes": shapes, "expected": first},
            )
    return rows
