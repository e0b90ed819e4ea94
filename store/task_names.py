"""Every Celery task name, in one place: the API and workers send them, workers/tasks.py registers them."""

from __future__ import annotations

RUN_ANALYSIS = "gradhealth.run_analysis"  # the one task on the GPU queue (store/celery_app.TASK_QUEUES)
SWEEP = "gradhealth.sweep"
DELIVER_WEBHOOK = "gradhealth.deliver_webhook"
DELIVER_RUN_WEBHOOK = "gradhealth.deliver_run_webhook"
