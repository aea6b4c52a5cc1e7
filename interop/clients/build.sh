#!/usr/bin/env bash
# Builds the drivers that need compiling (Go, Java). Offline: uses only Debian-packaged sources.
set -u
here="$(cd "$(dirname "$0")" && pwd)"
status=0
if command -v go >/dev/null && [ -d /usr/share/gocode/src/github.com/rabbitmq/amqp091-go ]; then
    echo "building go driver"
    (cd "$here/go" && GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS= GOPROXY=off GOCACHE=/tmp/interop-gocache \
        go build -o driver driver.go) || status=1
fi
jar=/usr/share/java/amqp-client.jar
if command -v javac >/dev/null && [ -f "$jar" ]; then
    echo "building java driver"
    (cd "$here/java" && mkdir -p classes && javac -nowarn -d classes -cp "$jar" *.java) || status=1
fi
exit $status
