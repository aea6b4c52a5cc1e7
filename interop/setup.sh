#!/usr/bin/env bash
# Installs every client library the interop suite drives (PyPI, npm, Debian).
# Safe to re-run; each part is independent so one failing registry does not stop the rest.
#   setup.sh [--rabbitmq]   --rabbitmq also installs Debian's rabbitmq-server, for comparing
#                           with a private node (tools/rabbitmq-local.sh)
set -u
with_rabbitmq=0
[ "${1:-}" = "--rabbitmq" ] && with_rabbitmq=1
here="$(cd "$(dirname "$0")" && pwd)"
status=0
step() { echo "== $*"; }

step "Python clients (PyPI)"
python3 -m pip install --quiet --disable-pip-version-check \
    pika aio-pika aiormq amqp kombu celery || status=1

step "Node clients (npm) into $here/clients/node"
if command -v npm >/dev/null; then
    (cd "$here/clients/node" && npm install --no-audit --no-fund --loglevel=error) || status=1
else
    echo "npm not found: node clients will be reported as not installed"
fi

step "Debian packages (Go, Java, Ruby, PHP, rabbitmq-c tools)"
if command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq || status=1
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
        golang-go golang-github-rabbitmq-amqp091-go-dev \
        default-jdk-headless librabbitmq-client-java \
        ruby ruby-bunny php-cli php-amqplib amqp-tools >/dev/null || status=1
    if [ "$with_rabbitmq" = 1 ]; then
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends rabbitmq-server >/dev/null \
            || status=1
    fi
fi

step "Building compiled drivers"
bash "$here/clients/build.sh" || status=1
exit $status
