#!/usr/bin/env bash
# The test suite, twice: on embedded defaults (SQLite, local object store), then on the real
# services (MariaDB, SeaweedFS S3, Redis, RabbitMQ), which scripts/ci_services.sh starts if needed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export HF_HUB_OFFLINE=1 YOLO_OFFLINE=1 TRANSFORMERS_OFFLINE=1

bash scripts/install_chromium.sh || { echo "run_tests: chromium could not be installed (needed by the preview test)" >&2; exit 1; }
bash scripts/ci_services.sh || { echo "run_tests: a service could not be started (see above)" >&2; exit 1; }

run_pass() {  # name, then pytest args
  local name="$1"; shift
  echo "=== test pass: $name ==="
  "$PY" -m pytest -p no:cacheprovider "$@"
  local rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "run_tests: pass '$name' collected no tests" >&2
    return 1  # an empty pass is a broken suite, not a success
  fi
  return "$rc"
}

rc=0
BGGEN_TEST_BACKEND=embedded run_pass embedded -q || rc=1
BGGEN_TEST_BACKEND=services run_pass services -q || rc=1
if [ "$rc" -ne 0 ]; then echo "run_tests: FAILED" >&2; fi
exit "$rc"
