"""The one Celery app object (JSON only, acks late, prefetch 1) and enqueue() by task name."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from .settings import Settings, get_settings
from .task_names import RUN_ANALYSIS

log = logging.getLogger(__name__)

GPU_QUEUE, CPU_QUEUE = "gpu", "cpu"
TASK_QUEUES = {RUN_ANALYSIS: GPU_QUEUE}  # everything else is light work on "cpu"
_apps: dict[tuple[str, str], Celery] = {}
Send = Callable[[str, str], object]  # (task name, object id) -> False when it could not be sent


def queue_for(task_name: str) -> str:
    """Analyses need the model runner (GPU when there is one); the rest is light."""
    return TASK_QUEUES.get(task_name, CPU_QUEUE)


def broker_config(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The broker URL and transport options for this deployment."""
    if settings.embedded_broker:
        folder = settings.broker_dir
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return "filesystem://", {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
            "polling_interval": settings.embedded_poll_interval,
        }
    options: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout}
    if settings.broker_key_prefix:
        options["global_keyprefix"] = settings.broker_key_prefix
    return settings.broker_url, options


def make_celery(settings: Settings) -> Celery:
    """Build the app from settings: the API only sends with it, workers consume with it."""
    url, transport_options = broker_config(settings)
    app = Celery("gradhealth", set_as_current=False)
    app.conf.update(
        broker_url=url,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        # A worker outlives any broker outage: it reconnects forever instead of exiting (issue 10, finding 8).
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        broker_pool_limit=10,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.analysis_time_limit + 60.0,
        task_time_limit=settings.hard_time_limit,
        # Each queue on its own direct exchange: the worker banner then says what really happens.
        task_queues=tuple(
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in (GPU_QUEUE, CPU_QUEUE)
        ),
        task_default_queue=CPU_QUEUE,
        task_routes={name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0},
        worker_hijack_root_logger=False,
        worker_send_task_events=not settings.embedded_broker,
        worker_enable_remote_control=not settings.embedded_broker,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


def get_celery(settings: Settings | None = None) -> Celery:
    """The process's app for these settings (created once)."""
    settings = settings or get_settings()
    url, options = broker_config(settings)
    key = (url, repr(sorted(options.items())))
    if key not in _apps:
        _apps[key] = make_celery(settings)
    return _apps[key]


def enqueue(task_name: str, object_id: str, settings: Settings | None = None) -> bool:
    """Send a task by name with only an id; False (logged) when the broker is unreachable.

    Callers commit the database row first: the row, not the message, is the truth, and the
    recovery sweep re-sends anything whose message never arrived. There is no countdown: a task
    that should run later is a due time in the database (store/outbox.py), because a worker holding
    an ETA message dies with kombu's restore_unacked error when the broker goes away.
    """
    try:
        get_celery(settings).send_task(task_name, args=[object_id], queue=queue_for(task_name))
    except Exception as exc:  # broker down: the sweep re-enqueues from the database
        log.warning("could not enqueue %s(%s): %s: %s", task_name, object_id, type(exc).__name__, exc)
        return False
    return True


def sender(settings: Settings) -> Send:
    """enqueue() bound to these settings: the default way API and workers hand a task on."""
    return partial(enqueue, settings=settings)


def ping_broker(settings: Settings | None = None, timeout: float = 2.0) -> None:
    """Raise if the broker cannot be reached within the timeout."""
    app = get_celery(settings)
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=timeout)
        connection.default_channel  # noqa: B018  (opens a channel: proves the broker answers)
