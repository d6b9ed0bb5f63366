"""Settings of the dagster-celery workers in the images (`celery -A dagster_celery.app` imports
this module by name when it is on PYTHONPATH: the Dockerfiles set PYTHONPATH=/opt/bggen/deploy).
The same values as deploy/celery.yaml; the URLs from the environment, like the executor's
(bggen_assets/deployment.py)."""
import os

broker_url = os.environ.get("BGGEN_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
result_backend = os.environ.get("BGGEN_CELERY_BACKEND", "rpc://")
worker_prefetch_multiplier = 1   # a worker takes one step at a time (long GPU steps)
task_acks_late = True            # a step whose worker dies is redelivered
broker_connection_retry_on_startup = True
worker_redirect_stdouts = False  # steps' output reaches Dagster's compute logs (S3), not Celery's logger
