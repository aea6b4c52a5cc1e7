package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand"
	"strconv"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// producer publishes on its own connection.
type producer struct {
	conn      *amqp.Connection
	bc        *batchConn // its socket, to cut it when the broker stops reading
	ch        *amqp.Channel
	slots     chan struct{} // one per unconfirmed publish
	confirmed atomic.Int64  // publishes the broker acked (with -confirms)
	closed    chan *amqp.Error
}

func openProducer(cfg Config) (*producer, error) {
	conn, ch, bc, err := dialChannel(cfg.URL)
	if err != nil {
		return nil, err
	}
	p := &producer{conn: conn, bc: bc, ch: ch, closed: conn.NotifyClose(make(chan *amqp.Error, 1))}
	if cfg.Confirms > 0 {
		if err := ch.Confirm(false); err != nil {
			conn.Close()
			return nil, err
		}
		p.slots = make(chan struct{}, cfg.Confirms)
		confirms := ch.NotifyPublish(make(chan amqp.Confirmation, cfg.Confirms))
		go func() {
			for c := range confirms {
				if c.Ack {
					p.confirmed.Add(1)
				}
				<-p.slots
			}
		}()
	}
	return p, nil
}

// Close closes the connection politely, or cuts the socket if the broker does
// not answer within 3 s (it may be busy with megabytes of publishes queued
// ahead of the close, or have stopped reading the socket altogether).
func (p *producer) Close() error {
	return closeWithin(p.conn, p.bc, 3*time.Second)
}

// abort cuts the socket: a publish blocked writing to a broker that stopped
// reading returns at once.
func (p *producer) abort() {
	p.bc.Close()
}

// publishPlan says how much and how fast one producer publishes.
type publishPlan struct {
	limit     int64   // stop after this many (0: until ctx ends)
	rate      float64 // msg/s for this producer (0: no pacing)
	maxQueued int64   // pause while stats.queued() exceeds it (0: never, the default)
}

func (p *producer) run(ctx context.Context, cfg Config, t *topology, plan publishPlan, st *stats) error {
	exchange, key := t.target()
	body := make([]byte, cfg.Size)
	msg := amqp.Publishing{Body: body}
	if cfg.Persistent {
		msg.DeliveryMode = amqp.Persistent
	}
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	// Unique across producers and runs: the producer's start time and a counter.
	idPrefix := strconv.FormatInt(time.Now().UnixNano(), 36) + "."
	delayMin, delaySpan := cfg.DelayMin.Milliseconds(), (cfg.DelayMax - cfg.DelayMin).Milliseconds()
	var interval time.Duration
	if plan.rate > 0 {
		interval = time.Duration(float64(time.Second) / plan.rate)
	}
	next := time.Now()
	for n := int64(0); plan.limit == 0 || n < plan.limit; n++ {
		if ctx.Err() != nil {
			return nil
		}
		if interval > 0 {
			if d := time.Until(next); d > 0 {
				time.Sleep(d)
			}
			next = next.Add(interval)
		}
		for plan.maxQueued > 0 && st.queued() > plan.maxQueued && ctx.Err() == nil {
			time.Sleep(100 * time.Microsecond)
		}
		if p.slots != nil {
			select {
			case p.slots <- struct{}{}:
			case <-ctx.Done():
				return nil
			}
		}
		if cfg.MaxPriority > 0 {
			msg.Priority = uint8(rng.Intn(cfg.MaxPriority + 1))
		}
		if cfg.DedupHeader || cfg.DelayMax > 0 {
			msg.Headers = amqp.Table{}
		}
		if cfg.DedupHeader {
			msg.Headers["x-deduplication-header"] = idPrefix + strconv.FormatInt(n, 10)
		}
		if cfg.DelayMax > 0 {
			delay := delayMin
			if delaySpan > 0 {
				delay += rng.Int63n(delaySpan + 1)
			}
			msg.Headers["x-delay"] = delay
			binary.BigEndian.PutUint64(body[8:], uint64(delay)*uint64(time.Millisecond))
		}
		// The body is copied into the write buffer before Publish returns,
		// so one buffer serves every message.
		binary.BigEndian.PutUint64(body, uint64(time.Now().UnixNano()))
		if err := p.ch.PublishWithContext(ctx, exchange, key, false, false, msg); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return p.why(err)
		}
		st.published.Add(1)
	}
	return nil
}

// why adds the broker's reason for closing the connection to a publish error
// (amqp091-go reports only that the connection is not open).
func (p *producer) why(err error) error {
	select {
	case reason, ok := <-p.closed:
		if ok && reason != nil {
			return fmt.Errorf("%v (connection closed: %v)", err, reason)
		}
	case <-time.After(100 * time.Millisecond):
	}
	return err
}
