"""Celery tasks and schedules: thin adapters over the engine."""
