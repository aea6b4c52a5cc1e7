#!/usr/bin/env bash
# A private RabbitMQ node (Debian's rabbitmq-server) for comparing with mq and for the restart
# scenario: its own node name, port and data dir, so it never touches a system RabbitMQ.
#   rabbitmq-local.sh start|stop|restart [PORT] [DIR]     (defaults 5673, /tmp/interop-rabbitmq)
set -eu
cmd=${1:?start|stop|restart}
port=${2:-5673}
dir=${3:-/tmp/interop-rabbitmq}
bin=/usr/lib/rabbitmq/bin
export HOME="$dir" RABBITMQ_NODENAME="interop$port@localhost" RABBITMQ_NODE_PORT="$port" \
    RABBITMQ_DIST_PORT=$((port + 20000)) RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" RABBITMQ_CONFIG_FILE="$dir/rabbitmq" \
    RABBITMQ_PID_FILE="$dir/pid"
mkdir -p "$dir/mnesia" "$dir/log"
[ -f "$dir/enabled_plugins" ] || echo "[]." > "$dir/enabled_plugins"
[ -f "$dir/rabbitmq.conf" ] || echo "loopback_users = none" > "$dir/rabbitmq.conf"

start() {
    "$bin/rabbitmq-server" > "$dir/log/console.log" 2>&1 &
    "$bin/rabbitmqctl" -n "$RABBITMQ_NODENAME" -q wait --timeout 60 "$RABBITMQ_PID_FILE" >/dev/null
}
stop() {
    "$bin/rabbitmqctl" -n "$RABBITMQ_NODENAME" -q stop >/dev/null 2>&1 || true
}
case "$cmd" in
    start) start ;;
    stop) stop ;;
    restart) stop; start ;;
    *) echo "unknown command $cmd" >&2; exit 2 ;;
esac
