"""What the API and the workers share: settings, database, blobs, the Celery app and enqueue()."""
