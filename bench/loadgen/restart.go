package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// The restart scenario (R1) is three runs around a broker the runner stops
// and starts again: fill leaves a full durable queue behind, recover waits
// for the restarted broker to report it whole, delete removes it.

// runFill: the fill half of runBacklog, but the queue and its messages stay
// (the broker is restarted on them); its name is in the result.
func runFill(ctx context.Context, cfg Config) (Result, error) {
	var res Result
	t, err := declare(cfg)
	if err != nil {
		return res, err
	}
	p, err := openProducer(cfg)
	if err == nil {
		defer p.Close()
		err = fill(ctx, cfg, t, p, newStats(1, 0), &res)
	}
	if err != nil {
		t.cleanup()
		return res, err
	}
	res.Queue = t.queues[0]
	closeWithin(t.conn, t.bc, 5*time.Second)
	return res, nil
}

// runRecover: started with the broker, it polls the broker's port until a TCP
// connection is accepted (mark listening), then a passive queue.declare of
// -queue until it reports -backlog messages (mark ready). Until the broker
// has recovered, connecting or the declare may fail: it just tries again,
// unless the process -pid (the one the runner started) has exited.
func runRecover(ctx context.Context, cfg Config) (Result, error) {
	var res Result
	addr, err := hostPort(cfg.URL)
	if err != nil {
		return res, err
	}
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if gone(cfg.PID) {
			return res, fmt.Errorf("the broker exited before listening")
		}
		if !sleep(ctx, 5*time.Millisecond) {
			return res, fmt.Errorf("the port never accepted a connection: %v", err)
		}
	}
	mark("listening")
	var conn *amqp.Connection
	var ch *amqp.Channel
	var bc *batchConn
	defer func() {
		if conn != nil {
			closeWithin(conn, bc, 5*time.Second)
		}
	}()
	seen, last := -1, error(nil)
	for {
		if ch == nil {
			conn, ch, bc, last = dialChannel(cfg.URL)
		}
		if ch != nil {
			q, err := ch.QueueDeclarePassive(cfg.Queue, false, false, false, false, nil)
			if err == nil {
				seen = q.Messages
			} else { // a failed declare (404 while recovering) closes the channel: start over
				last = err
				closeWithin(conn, bc, 5*time.Second)
				conn, ch = nil, nil
			}
		}
		if seen >= cfg.Backlog {
			break
		}
		if gone(cfg.PID) {
			return res, fmt.Errorf("the broker exited with %d of %d messages reported", seen, cfg.Backlog)
		}
		if !sleep(ctx, 10*time.Millisecond) {
			return res, fmt.Errorf("timed out: the queue reported %d of %d messages (last error: %v)",
				seen, cfg.Backlog, last)
		}
	}
	mark("ready")
	res.Recovered = int64(seen)
	return res, nil
}

// runDelete deletes -queue (bounded in time like every run's cleanup).
func runDelete(ctx context.Context, cfg Config) (Result, error) {
	conn, ch, bc, err := dialChannel(cfg.URL)
	if err != nil {
		return Result{}, err
	}
	(&topology{conn: conn, bc: bc, ch: ch, queues: []string{cfg.Queue}}).cleanup()
	return Result{}, nil
}

// gone reports whether process pid (0: unknown) has ended; a zombie not yet
// reaped by the runner has.
func gone(pid int) bool {
	if pid <= 0 {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	// The state follows the command name, which may hold spaces and parentheses.
	i := bytes.LastIndexByte(stat, ')')
	return i < 0 || i+2 >= len(stat) || stat[i+2] == 'Z'
}

// hostPort is the TCP address of an amqp:// URL (port 5672 when none is given).
func hostPort(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", err
	}
	if u.Port() == "" {
		return net.JoinHostPort(u.Hostname(), "5672"), nil
	}
	return u.Host, nil
}
