package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// consumer reads deliveries straight off its socket. amqp091-go hands every
// delivery through two goroutines and several allocations, which made the
// load generator cost as much CPU as the broker it measures; this loop parses
// frames in place and writes the acks of one read batch with one syscall.
type consumer struct {
	conn      net.Conn
	fr        frameReader
	out       enc // acks not yet written
	manualAck bool
	ackEvery  int     // acks with multiple=true every this many deliveries (<= 1: each)
	unacked   int     // deliveries since the last ack
	latencies []int64 // nanoseconds, recorded while stats.measuring (with -delay-max: minus the delay)
	arrivals  []int64 // with -delay-max: when each of those arrived (unix ns)
	// With -stream-offset: the x-stream-offset header of each delivery must
	// be above the one before (a repeat or a step back fails the run). Gaps
	// are allowed but counted: RabbitMQ's offsets skip one now and then
	// (osiris's tracking chunks take an offset too).
	offsets    bool
	offsetNext int64 // the offset expected next (-1: any)
	offsetBad  int64 // deliveries without the header or not above the one before
	offsetWhy  string
	offsetGaps int64 // deliveries whose offset skipped some
}

func openConsumer(cfg Config, queue string) (*consumer, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, err
	}
	host, err := hostPort(cfg.URL)
	if err != nil {
		return nil, err
	}
	conn, err := net.DialTimeout("tcp", host, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c := &consumer{conn: conn, fr: frameReader{r: bufio.NewReaderSize(conn, 256<<10)}, manualAck: cfg.ManualAck, ackEvery: cfg.AckEvery,
		offsets: cfg.Offset != "", offsetNext: -1}
	if cfg.Offset == "first" {
		c.offsetNext = 0
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if err := c.handshake(u, cfg, queue); err != nil {
		conn.Close()
		return nil, fmt.Errorf("consumer setup: %w", err)
	}
	conn.SetDeadline(time.Time{})
	return c, nil
}

func (c *consumer) handshake(u *url.URL, cfg Config, queue string) error {
	if _, err := c.conn.Write([]byte("AMQP\x00\x00\x09\x01")); err != nil {
		return err
	}
	if _, err := c.expect(10, 10); err != nil { // connection.start
		return err
	}
	pass, _ := u.User.Password()
	c.out.method(0, 10, 11, func(e *enc) { // start-ok
		e.u32(0) // no client properties
		e.short("PLAIN")
		e.long("\x00" + u.User.Username() + "\x00" + pass)
		e.short("en_US")
	})
	if err := c.flush(); err != nil {
		return err
	}
	tune, err := c.expect(10, 30)
	if err != nil {
		return err
	}
	frameMax := binary.BigEndian.Uint32(tune[2:])
	if frameMax == 0 {
		frameMax = 131072
	}
	vhost := strings.TrimPrefix(u.Path, "/")
	if vhost == "" {
		vhost = "/"
	}
	c.out.method(0, 10, 31, func(e *enc) { e.u16(1); e.u32(frameMax); e.u16(0) })  // tune-ok, no heartbeats
	c.out.method(0, 10, 40, func(e *enc) { e.short(vhost); e.short(""); e.u8(0) }) // connection.open
	c.out.method(1, 20, 10, func(e *enc) { e.short("") })                          // channel.open
	steps := [][2]uint16{{10, 41}, {20, 11}}
	if c.manualAck {
		c.out.method(1, 60, 10, func(e *enc) { e.u32(0); e.u16(uint16(cfg.Prefetch)); e.u8(0) }) // basic.qos
		steps = append(steps, [2]uint16{60, 11})
	}
	flags := byte(0)
	if !c.manualAck {
		flags = 2 // no-ack
	}
	c.out.method(1, 60, 20, func(e *enc) { e.u16(0); e.short(queue); e.short(""); e.u8(flags); consumeArgs(e, cfg) })
	steps = append(steps, [2]uint16{60, 21})
	if err := c.flush(); err != nil {
		return err
	}
	for _, s := range steps {
		if _, err := c.expect(s[0], s[1]); err != nil {
			return err
		}
	}
	return nil
}

// consumeArgs encodes basic.consume's arguments table: x-stream-offset with
// -stream-offset (a number as a long, anything else as a string), else empty.
func consumeArgs(e *enc, cfg Config) {
	sizeAt := len(e.b)
	e.u32(0)
	if cfg.Offset == "" {
		return
	}
	e.short("x-stream-offset")
	if n, err := strconv.ParseInt(cfg.Offset, 10, 64); err == nil {
		e.u8('l')
		e.u64(uint64(n))
	} else {
		e.u8('S')
		e.long(cfg.Offset)
	}
	binary.BigEndian.PutUint32(e.b[sizeAt:], uint32(len(e.b)-sizeAt-4))
}

// expect reads until the next method and returns its arguments if it is
// class.id; a close from the broker becomes an error carrying its reason.
func (c *consumer) expect(class, id uint16) ([]byte, error) {
	for {
		f, err := c.fr.read()
		if err != nil {
			return nil, err
		}
		if f.typ != frameMethod {
			continue
		}
		gotClass, gotID := methodID(f.payload)
		if gotClass == class && gotID == id {
			return f.payload[4:], nil
		}
		if err := closeError(f.payload); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("expected method %d.%d, got %d.%d", class, id, gotClass, gotID)
	}
}

// closeError turns connection.close or channel.close into an error.
func closeError(p []byte) error {
	class, id := methodID(p)
	if (class == 10 && id == 50) || (class == 20 && id == 40) {
		code := binary.BigEndian.Uint16(p[4:])
		text := p[7 : 7+int(p[6])]
		return fmt.Errorf("closed by the broker: %d %s", code, text)
	}
	return nil
}

func (c *consumer) flush() error {
	if len(c.out.b) == 0 {
		return nil
	}
	_, err := c.conn.Write(c.out.b)
	c.out.b = c.out.b[:0]
	return err
}

// ack appends basic.ack for one delivery tag (and all before it with
// multiple) without building a closure.
func (c *consumer) ack(tag uint64, multiple bool) {
	e := &c.out
	e.u8(frameMethod)
	e.u16(1)
	e.u32(13)
	e.u16(60)
	e.u16(80)
	e.u64(tag)
	if multiple {
		e.u8(1)
	} else {
		e.u8(0)
	}
	e.u8(frameEnd)
}

func (c *consumer) run(ctx context.Context, cfg Config, st *stats) error {
	// A read deadline in the past is how a blocked read learns the run is over.
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
			c.conn.SetReadDeadline(time.Now())
		case <-done:
		}
	}()
	var tag, remaining uint64
	first, delayed := false, cfg.DelayMax > 0
	for {
		// Acks go out when everything read so far is handled: one write per batch.
		if c.fr.r.Buffered() == 0 {
			if err := c.flush(); err != nil {
				return err
			}
		}
		f, err := c.fr.read()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		switch f.typ {
		case frameMethod:
			if class, id := methodID(f.payload); class == 60 && id == 60 { // basic.deliver
				tag = binary.BigEndian.Uint64(skipShort(f.payload[4:]))
				continue
			}
			if err := closeError(f.payload); err != nil {
				return err
			}
		case frameHeader:
			remaining = binary.BigEndian.Uint64(f.payload[4:])
			first = true
			if c.offsets {
				c.checkOffset(f.payload)
			}
		case frameBody:
			if first && st.measuring.Load() && len(f.payload) >= 8 {
				sent := int64(binary.BigEndian.Uint64(f.payload))
				if delayed && len(f.payload) >= 16 { // lateness: the x-delay is not latency
					sent += int64(binary.BigEndian.Uint64(f.payload[8:]))
				}
				now := time.Now().UnixNano()
				c.latencies = append(c.latencies, now-sent)
				if delayed {
					c.arrivals = append(c.arrivals, now)
				}
			}
			first = false
			remaining -= uint64(len(f.payload))
		default:
			continue // heartbeats
		}
		if f.typ != frameMethod && remaining == 0 {
			if c.manualAck {
				if c.ackEvery <= 1 {
					c.ack(tag, false)
				} else if c.unacked++; c.unacked >= c.ackEvery {
					c.ack(tag, true)
					c.unacked = 0
				}
			}
			st.delivered()
		}
	}
}

// checkOffset compares a delivery's x-stream-offset header with the offset
// after the previous delivery's (0 for the first, with "first").
func (c *consumer) checkOffset(header []byte) {
	got, ok := streamOffset(header)
	switch {
	case !ok:
		c.offsetBad++
		c.offsetWhy = "a delivery without an x-stream-offset header (long)"
	case c.offsetNext >= 0 && got < c.offsetNext:
		if c.offsetBad == 0 {
			c.offsetWhy = fmt.Sprintf("offset %d after %d", got, c.offsetNext-1)
		}
		c.offsetBad++
	case c.offsetNext >= 0 && got > c.offsetNext:
		c.offsetGaps++
	}
	if ok {
		c.offsetNext = got + 1
	}
}

// streamOffset finds the x-stream-offset header (a long, or a signed 32-bit
// integer) in a content header frame's payload.
func streamOffset(p []byte) (int64, bool) {
	if len(p) < 14 {
		return 0, false
	}
	flags := binary.BigEndian.Uint16(p[12:])
	p = p[14:]
	for _, bit := range []uint16{0x8000, 0x4000} { // content-type, content-encoding
		if flags&bit != 0 {
			if len(p) < 1 || len(p) < 1+int(p[0]) {
				return 0, false
			}
			p = skipShort(p)
		}
	}
	if flags&0x2000 == 0 || len(p) < 4 {
		return 0, false
	}
	n := int(binary.BigEndian.Uint32(p))
	if len(p) < 4+n {
		return 0, false
	}
	t := p[4 : 4+n]
	for len(t) > 0 {
		if len(t) < 1+int(t[0])+1 {
			return 0, false
		}
		name := string(t[1 : 1+int(t[0])])
		t = t[1+int(t[0]):]
		typ, v := t[0], t[1:]
		var size int
		switch typ {
		case 'l', 'd', 'T':
			size = 8
		case 'I', 'i', 'f':
			size = 4
		case 's', 'u':
			size = 2
		case 'b', 'B', 't':
			size = 1
		case 'V':
			size = 0
		case 'D':
			size = 5
		case 'S', 'F', 'A', 'x':
			if len(v) < 4 {
				return 0, false
			}
			size = 4 + int(binary.BigEndian.Uint32(v))
		default:
			return 0, false
		}
		if len(v) < size {
			return 0, false
		}
		if name == "x-stream-offset" {
			switch typ {
			case 'l':
				return int64(binary.BigEndian.Uint64(v)), true
			case 'I':
				return int64(int32(binary.BigEndian.Uint32(v))), true
			}
			return 0, false
		}
		t = v[size:]
	}
	return 0, false
}

// Close says goodbye properly (brokers log a dropped socket as an error).
func (c *consumer) Close() error {
	c.conn.SetDeadline(time.Now().Add(2 * time.Second))
	c.out.b = c.out.b[:0]
	c.out.method(0, 10, 50, func(e *enc) { e.u16(200); e.short(""); e.u16(0); e.u16(0) })
	if c.flush() == nil {
		// Deliveries already on their way come first; skip them until close-ok.
		for {
			f, err := c.fr.read()
			if err != nil {
				break
			}
			if f.typ == frameMethod {
				if class, id := methodID(f.payload); class == 10 && id == 51 {
					break
				}
			}
		}
	}
	return c.conn.Close()
}
