package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// dial opens a connection whose writes are coalesced (see batchConn); the
// batchConn is returned too, so that a connection stuck writing to a broker
// that stopped reading can be cut (batchConn.Close) to end a run in time.
func dial(url string) (*amqp.Connection, *batchConn, error) {
	var bc *batchConn
	conn, err := amqp.DialConfig(url, amqp.Config{
		// amqp091-go drops a connection that reads nothing for 1.5 heartbeat
		// intervals; a broker busy paging a backlog to disk (RabbitMQ in S8)
		// can stay silent that long. Runs are bounded anyway, so ask for a long one.
		Heartbeat: 10 * time.Minute,
		Locale:    "en_US",
		Dial: func(network, addr string) (net.Conn, error) {
			c, err := net.DialTimeout(network, addr, 10*time.Second)
			if err != nil {
				return nil, err
			}
			// amqp091-go clears this deadline once the handshake is done.
			if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
				return nil, err
			}
			bc = newBatchConn(c)
			return bc, nil
		},
	})
	return conn, bc, err
}

// within runs f and waits for it at most d; it reports whether f returned.
// (amqp091-go's calls take no deadline; a broker far behind may answer late.)
func within(d time.Duration, f func()) bool {
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}

// closeWithin closes an amqp091-go connection politely, or cuts its socket
// when the broker does not answer the close within d.
func closeWithin(conn *amqp.Connection, bc *batchConn, d time.Duration) error {
	var err error
	if !within(d, func() { err = conn.Close() }) && bc != nil {
		return bc.Close()
	}
	return err
}

// tableArgs is a repeatable key=value flag, the arguments of a declare.
type tableArgs []string

func (a *tableArgs) String() string { return strings.Join(*a, ",") }

func (a *tableArgs) Set(v string) error {
	if !strings.Contains(v, "=") {
		return fmt.Errorf("%q: want key=value", v)
	}
	*a = append(*a, v)
	return nil
}

// table adds the arguments to t: an integer value as a long, true/false as a
// boolean, anything else as a string.
func (a tableArgs) table(t amqp.Table) amqp.Table {
	for _, kv := range a {
		k, v, _ := strings.Cut(kv, "=")
		if n, err := strconv.ParseInt(v, 10, 64); err == nil {
			t[k] = n
		} else if b, err := strconv.ParseBool(v); err == nil && (v == "true" || v == "false") {
			t[k] = b
		} else {
			t[k] = v
		}
	}
	return t
}

// topology is the queues (and exchange) of one run, declared on an
// admin connection that also deletes them at the end.
type topology struct {
	conn     *amqp.Connection
	bc       *batchConn
	ch       *amqp.Channel
	exchange string
	queues   []string
}

// dialChannel opens a connection with one channel on it (the connection is closed again
// if the channel can't be had).
func dialChannel(url string) (*amqp.Connection, *amqp.Channel, *batchConn, error) {
	conn, bc, err := dial(url)
	if err != nil {
		return nil, nil, nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, nil, nil, err
	}
	return conn, ch, bc, nil
}

func declare(cfg Config) (*topology, error) {
	conn, ch, bc, err := dialChannel(cfg.URL)
	if err != nil {
		return nil, err
	}
	t := &topology{conn: conn, bc: bc, ch: ch}
	prefix := fmt.Sprintf("bench.%d.%d", os.Getpid(), time.Now().UnixNano())
	args := amqp.Table{}
	if cfg.MaxPriority > 0 {
		args["x-max-priority"] = int32(cfg.MaxPriority)
	}
	if cfg.QueueType != "" {
		args["x-queue-type"] = cfg.QueueType
	}
	cfg.QueueArgs.table(args)
	nq := 1
	if cfg.Fanout > 0 {
		nq = cfg.Fanout
	}
	if cfg.Fanout > 0 || cfg.ExType != "" {
		kind := cfg.ExType
		if kind == "" {
			kind = "fanout"
		}
		t.exchange = prefix + ".x"
		exArgs := cfg.ExArgs.table(amqp.Table{})
		if err := ch.ExchangeDeclare(t.exchange, kind, cfg.Persistent, false, false, false, exArgs); err != nil {
			t.cleanup()
			return nil, err
		}
	}
	for i := 0; i < nq; i++ {
		q, err := ch.QueueDeclare(fmt.Sprintf("%s.q%d", prefix, i), cfg.Persistent, false, false, false, args)
		if err != nil {
			t.cleanup()
			return nil, err
		}
		t.queues = append(t.queues, q.Name)
		if t.exchange != "" {
			if err := ch.QueueBind(q.Name, "", t.exchange, false, nil); err != nil {
				t.cleanup()
				return nil, err
			}
		}
	}
	return t, nil
}

// target is where producers publish: the exchange (key ""), or the one queue
// through the default exchange.
func (t *topology) target() (exchange, key string) {
	if t.exchange != "" {
		return t.exchange, ""
	}
	return "", t.queues[0]
}

// depth is the number of ready messages in the first queue.
func (t *topology) depth() (int, error) {
	q, err := t.ch.QueueDeclarePassive(t.queues[0], false, false, false, false, nil)
	return q.Messages, err
}

// backlog is the number of ready messages in all the run's queues (a passive
// queue.declare returns it: no management API needed); nil when the broker
// does not answer within d.
func (t *topology) backlog(d time.Duration) (*int64, error) {
	var total int64
	var err error
	answered := within(d, func() {
		for _, name := range t.queues {
			q, qerr := t.ch.QueueDeclarePassive(name, false, false, false, false, nil)
			if qerr != nil {
				err = qerr
				return
			}
			total += int64(q.Messages)
		}
	})
	if !answered || err != nil {
		return nil, err
	}
	return &total, nil
}

// cleanup deletes the run's queues and exchange. A broker holding a large
// backlog may take a while; after a bound the connection is cut instead (the
// queues are not durable except in S3/S8, whose names are unique per run).
func (t *topology) cleanup() {
	done := within(30*time.Second, func() {
		for _, q := range t.queues {
			t.ch.QueueDelete(q, false, false, false)
		}
		if t.exchange != "" {
			t.ch.ExchangeDelete(t.exchange, false, false)
		}
	})
	if !done {
		fmt.Fprintln(os.Stderr, "loadgen: the broker did not delete the queues within 30 s")
	}
	closeWithin(t.conn, t.bc, 5*time.Second)
}
