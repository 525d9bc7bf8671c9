#!/usr/bin/env bash
# Makes sure the servers the tests talk to are installed and running:
# RabbitMQ (5672), Redis (6379) and PostgreSQL (5432) on 127.0.0.1.
# Kafka (tansu) and the SQS/EventBridge endpoint (moto) are started by the tests.
set -euo pipefail

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {  # port, seconds
  for _ in $(seq 1 $(( $2 * 10 ))); do listening "$1" && return 0; sleep 0.1; done
  echo "services: nothing listens on 127.0.0.1:$1 after $2 s" >&2
  return 1
}

apt_updated=
install() {  # debian packages...
  if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! listening 6379; then
  command -v redis-server >/dev/null || install redis-server
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port 6379 30
fi

if ! listening 5432; then
  command -v pg_ctlcluster >/dev/null || install postgresql
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
  wait_port 5432 60
fi

if ! listening 5672; then
  command -v rabbitmq-server >/dev/null || install rabbitmq-server
  rabbitmq-server -detached
  # rabbitmq-diagnostics answers before the AMQP listener is up: wait for the port itself.
  wait_port 5672 120
fi
# Headless Chromium renders the status page in tests/e2e/test_status_page.py.
[ -x /usr/bin/chromium ] || install chromium

echo "services: redis 6379, postgresql 5432, rabbitmq 5672 are up"
