package main

import (
	"context"
	"encoding/binary"
	"fmt"
	"math/rand"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// producer publishes on its own connection.
type producer struct {
	conn   *amqp.Connection
	ch     *amqp.Channel
	slots  chan struct{} // one per unconfirmed publish
	closed chan *amqp.Error
}

func openProducer(cfg Config) (*producer, error) {
	conn, ch, err := dialChannel(cfg.URL)
	if err != nil {
		return nil, err
	}
	p := &producer{conn: conn, ch: ch, closed: conn.NotifyClose(make(chan *amqp.Error, 1))}
	if cfg.Confirms > 0 {
		if err := ch.Confirm(false); err != nil {
			conn.Close()
			return nil, err
		}
		p.slots = make(chan struct{}, cfg.Confirms)
		confirms := ch.NotifyPublish(make(chan amqp.Confirmation, cfg.Confirms))
		go func() {
			for range confirms {
				<-p.slots
			}
		}()
	}
	return p, nil
}

// publishPlan says how much and how fast one producer publishes.
type publishPlan struct {
	limit     int64   // stop after this many (0: until ctx ends)
	rate      float64 // msg/s for this producer (0: flat out)
	maxQueued int64   // pause while stats.queued() exceeds it (0: never)
}

func (p *producer) run(ctx context.Context, cfg Config, t *topology, plan publishPlan, st *stats) error {
	exchange, key := t.target()
	body := make([]byte, cfg.Size)
	msg := amqp.Publishing{Body: body}
	if cfg.Persistent {
		msg.DeliveryMode = amqp.Persistent
	}
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
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
