#!/bin/sh
# The roles of the bggen image (deploy/Dockerfile, deploy/Dockerfile.cuda); anything else is run as
# given (the Dagster Helm chart passes `dagster api grpc ...` itself).
#   code-server            dagster api grpc on 0.0.0.0:${PORT:-4266} (BGGEN_EXECUTOR picks the executor)
#   webserver              dagster-webserver on 0.0.0.0:${PORT:-3000}, workspace ${BGGEN_WORKSPACE}
#   daemon                 dagster-daemon run, same workspace
#   celery-worker [QUEUE]  a dagster-celery worker on QUEUE (default `dagster`; `gpu` for generation),
#                          broker/backend from BGGEN_CELERY_BROKER / BGGEN_CELERY_BACKEND
#                          (deploy/dagster_celery_config.py reads them)
#   serve                  bggen-serve on 0.0.0.0:${PORT:-8080}
# DAGSTER_HOME (/opt/dagster/home) holds deploy/dagster.yaml: set BGGEN_DAGSTER_MYSQL_URL,
# BGGEN_COMPUTE_LOG_BUCKET, BGGEN_S3_ENDPOINT_URL and the AWS_* variables (docs/production.md).
set -e
WORKSPACE="${BGGEN_WORKSPACE:-/opt/bggen/deploy/workspace-stack.yaml}"
role="${1:-serve}"
[ $# -gt 0 ] && shift
case "$role" in
  code-server)
    exec dagster api grpc -m bggen_assets.definitions -h 0.0.0.0 -p "${PORT:-4266}" --location-name bggen "$@" ;;
  webserver)
    exec dagster-webserver -h 0.0.0.0 -p "${PORT:-3000}" -w "$WORKSPACE" "$@" ;;
  daemon)
    exec dagster-daemon run -w "$WORKSPACE" "$@" ;;
  celery-worker)
    queue="${1:-dagster}"
    [ $# -gt 0 ] && shift
    exec celery -A dagster_celery.app worker -Q "$queue" -n "${queue}@%h" --concurrency "${CELERY_CONCURRENCY:-1}" \
      --prefetch-multiplier 1 -l INFO "$@" ;;
  serve)
    exec bggen-serve --host 0.0.0.0 --port "${PORT:-8080}" "$@" ;;
  *)
    exec "$role" "$@" ;;
esac
