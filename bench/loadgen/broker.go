package main

import (
	"fmt"
	"net"
	"os"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// dial opens a connection whose writes are coalesced (see batchConn).
func dial(url string) (*amqp.Connection, error) {
	return amqp.DialConfig(url, amqp.Config{
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
			return newBatchConn(c), nil
		},
	})
}

// topology is the queues (and fanout exchange) of one run, declared on an
// admin connection that also deletes them at the end.
type topology struct {
	conn     *amqp.Connection
	ch       *amqp.Channel
	exchange string
	queues   []string
}

// dialChannel opens a connection with one channel on it (the connection is closed again
// if the channel can't be had).
func dialChannel(url string) (*amqp.Connection, *amqp.Channel, error) {
	conn, err := dial(url)
	if err != nil {
		return nil, nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, ch, nil
}

func declare(cfg Config) (*topology, error) {
	conn, ch, err := dialChannel(cfg.URL)
	if err != nil {
		return nil, err
	}
	t := &topology{conn: conn, ch: ch}
	prefix := fmt.Sprintf("bench.%d.%d", os.Getpid(), time.Now().UnixNano())
	var args amqp.Table
	if cfg.MaxPriority > 0 {
		args = amqp.Table{"x-max-priority": int32(cfg.MaxPriority)}
	}
	nq := 1
	if cfg.Fanout > 0 {
		nq = cfg.Fanout
		t.exchange = prefix + ".fanout"
		if err := ch.ExchangeDeclare(t.exchange, "fanout", false, false, false, false, nil); err != nil {
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

// target is where producers publish: the fanout exchange, or the one queue
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

func (t *topology) cleanup() {
	for _, q := range t.queues {
		t.ch.QueueDelete(q, false, false, false)
	}
	if t.exchange != "" {
		t.ch.ExchangeDelete(t.exchange, false, false)
	}
	t.conn.Close()
}
