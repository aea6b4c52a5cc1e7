package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"time"
)

// sleep waits d unless ctx ends first; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// closer is a connection of either client: amqp091-go's or the fast consumer.
type closer interface{ Close() error }

func closeAll(conns []closer) {
	forEach(len(conns), 50, func(i int) error { return conns[i].Close() })
}

// openConsumers opens n consumers spread round-robin over the queues; the
// returned connections are to be closed even when err is set.
// openClients opens the consumers of the topology's queues and the producers; conns
// holds every connection opened, also on an error (for closeAll).
func openClients(cfg Config, t *topology) ([]*consumer, []*producer, []closer, error) {
	consumers, conns, err := openConsumers(cfg, t.queues, cfg.Consumers)
	if err != nil {
		return nil, nil, conns, err
	}
	producers := make([]*producer, cfg.Producers)
	err = forEach(cfg.Producers, 50, func(i int) (err error) {
		producers[i], err = openProducer(cfg)
		return err
	})
	for _, p := range producers {
		if p != nil {
			conns = append(conns, p)
		}
	}
	return consumers, producers, conns, err
}

func openConsumers(cfg Config, queues []string, n int) ([]*consumer, []closer, error) {
	cs := make([]*consumer, n)
	err := forEach(n, 50, func(i int) error {
		c, err := openConsumer(cfg, queues[i%len(queues)])
		cs[i] = c
		return err
	})
	conns := make([]closer, 0, n)
	for _, c := range cs {
		if c != nil {
			conns = append(conns, c)
		}
	}
	return cs, conns, err
}

// waitDelivered waits until st.target deliveries were consumed.
func waitDelivered(g *group, st *stats) error {
	select {
	case <-st.reached:
		return nil
	case <-g.ctx.Done():
		if err := g.Err(); err != nil {
			return err
		}
		return fmt.Errorf("timed out with %d of %d delivered", st.consumed.Load(), st.target)
	}
}

// runThroughput: producers publish flat out (unless -rate or -max-queued say
// otherwise) while consumers take what the broker delivers; accepted and
// delivered are counted over Duration after Warmup. Publishing stops when the
// window ends, whatever the broker still holds: that is reported as the
// backlog, not waited for, and the queues are deleted with it.
func runThroughput(ctx context.Context, cfg Config) (Result, error) {
	var res Result
	t, err := declare(cfg)
	if err != nil {
		return res, err
	}
	defer t.cleanup()
	consumers, producers, conns, err := openClients(cfg, t)
	defer func() { closeAll(conns) }()
	if err != nil {
		return res, err
	}

	st := newStats(len(t.queues), 0)
	cg := newGroup(ctx)
	for _, c := range consumers {
		c := c
		cg.Go(func(ctx context.Context) error { return c.run(ctx, cfg, st) })
	}
	pg := newGroup(cg.ctx)
	plan := publishPlan{rate: float64(cfg.Rate) / float64(cfg.Producers), maxQueued: int64(cfg.MaxQueued)}
	for _, p := range producers {
		p := p
		pg.Go(func(ctx context.Context) error { return p.run(ctx, cfg, t, plan, st) })
	}
	// accepted is what the broker took so far: confirmed with confirms, else written.
	accepted := func() (published, confirmed int64) {
		for _, p := range producers {
			confirmed += p.confirmed.Load()
		}
		return st.published.Load(), confirmed
	}

	complete := sleep(pg.ctx, cfg.Warmup)
	p0, f0 := accepted()
	c0, t0 := st.consumed.Load(), time.Now()
	mark("measure")
	st.measuring.Store(true)
	complete = complete && sleep(pg.ctx, cfg.Duration)
	p1, f1 := accepted()
	c1, t1 := st.consumed.Load(), time.Now()
	mark("end")
	st.measuring.Store(false)
	perr := stopPublishers(pg, producers)
	backlog, berr := t.backlog(10 * time.Second)
	if berr != nil {
		fmt.Fprintf(os.Stderr, "loadgen: reading the backlog: %v\n", berr)
	}
	res.Backlog = backlog
	cerr := cg.Stop()

	secs := t1.Sub(t0).Seconds()
	res.Seconds = secs
	res.Published, res.Delivered = p1-p0, c1-c0
	res.Accepted = res.Published
	if cfg.Confirms > 0 {
		confirmed := f1 - f0
		res.Confirmed, res.Accepted = &confirmed, confirmed
	}
	res.AcceptRate = float64(res.Accepted) / secs
	res.DeliverRate = float64(res.Delivered) / secs
	var all []int64
	for _, c := range consumers {
		all = append(all, c.latencies...)
	}
	res.P50Ms, res.P99Ms = percentiles(all)
	switch {
	case perr != nil:
		return res, perr
	case cerr != nil:
		return res, cerr
	case !complete:
		return res, fmt.Errorf("interrupted: %v", ctx.Err())
	}
	return res, nil
}

// stopPublishers ends publishing: each producer returns before its next
// publish. One blocked writing to a broker that stopped reading its socket
// (flow control, a memory alarm) has the socket cut after 2 s.
func stopPublishers(pg *group, producers []*producer) error {
	pg.cancel()
	var err error
	if within(2*time.Second, func() { err = pg.Stop() }) {
		return err
	}
	for _, p := range producers {
		p.abort()
	}
	return pg.Stop()
}

// runBacklog: publish Backlog messages flat out with no consumer, until the
// queue reports them all; then drain them with -consumers consumers (one in
// S8). The runner samples the broker's RSS and CPU between the marks.
func runBacklog(ctx context.Context, cfg Config) (Result, error) {
	return fillThenDrain(ctx, cfg)
}

// runStream: the same on a stream (x-queue-type stream, durable): publish
// Backlog messages (with -confirms: until the last is confirmed), then
// -consumers consumers each replay the whole stream from -stream-offset
// (first unless given), with manual acks as the broker requires.
func runStream(ctx context.Context, cfg Config) (Result, error) {
	cfg.QueueType, cfg.Persistent, cfg.ManualAck = "stream", true, true
	if cfg.Offset == "" {
		cfg.Offset = "first"
	}
	return fillThenDrain(ctx, cfg)
}

func fillThenDrain(ctx context.Context, cfg Config) (Result, error) {
	var res Result
	t, err := declare(cfg)
	if err != nil {
		return res, err
	}
	defer t.cleanup()
	p, err := openProducer(cfg)
	if err != nil {
		return res, err
	}
	defer p.Close()
	if err := fill(ctx, cfg, t, p, newStats(1, 0), &res); err != nil {
		return res, err
	}
	if cfg.Hold {
		return res, hold(ctx, t, &res)
	}
	return res, drain(ctx, cfg, t, &res)
}

// hold ends a backlog run with -hold: the messages stay where they are (in a
// delayed exchange, waiting for their x-delay) for 1 s more, when mark held
// lets the runner read the broker's RSS once it has settled. The queue's depth
// then goes into the backlog: anything there was delivered before its time.
func hold(ctx context.Context, t *topology, res *Result) error {
	if !sleep(ctx, time.Second) {
		return fmt.Errorf("interrupted while holding: %v", ctx.Err())
	}
	mark("held")
	backlog, err := t.backlog(10 * time.Second)
	res.Backlog = backlog
	if err == nil {
		res.Held = res.Accepted
		if backlog != nil {
			res.Held -= *backlog
		}
	}
	return err
}

// drain opens the consumers (marks drain, drained) and waits until they have
// the backlog: together on a queue; each of them all of it on a stream
// (-stream-offset), where each consumer's own rate goes into res too.
func drain(ctx context.Context, cfg Config, t *topology, res *Result) error {
	n := cfg.Consumers
	if n < 1 {
		n = 1
	}
	consumers, conns, err := openConsumers(cfg, t.queues, n)
	defer func() { closeAll(conns) }()
	if err != nil {
		return err
	}
	replay := cfg.Offset != ""
	each := []*stats{newStats(1, int64(cfg.Backlog))} // shared by the consumers of a queue
	for replay && len(each) < n {
		each = append(each, newStats(1, int64(cfg.Backlog)))
	}
	mark("drain")
	start := time.Now()
	g := newGroup(ctx)
	for i, c := range consumers {
		c, st := c, each[i%len(each)]
		g.Go(func(ctx context.Context) error { return c.run(ctx, cfg, st) })
	}
	for _, st := range each {
		if err = waitDelivered(g, st); err != nil {
			break
		}
	}
	res.Seconds = time.Since(start).Seconds()
	mark("drained")
	g.Stop()
	for _, st := range each {
		res.Delivered += st.consumed.Load()
	}
	res.DrainRate = float64(res.Delivered) / res.Seconds
	if replay {
		for i, c := range consumers {
			res.OffsetGaps += c.offsetGaps
			if c.offsetBad > 0 && err == nil {
				err = fmt.Errorf("consumer %d: %d deliveries out of sequence, the first: %s",
					i+1, c.offsetBad, c.offsetWhy)
			}
		}
	}
	if replay && err == nil {
		for i, st := range each {
			r := float64(st.consumed.Load()) / st.reachedAt.Sub(start).Seconds()
			res.ConsumerRates = append(res.ConsumerRates, r)
			if i == 0 || r < res.ConsumerRateMin {
				res.ConsumerRateMin = r
			}
			if r > res.ConsumerRateMax {
				res.ConsumerRateMax = r
			}
		}
	}
	return err
}

// fill publishes Backlog messages flat out (marks fill, full) and waits until
// they are in: with -confirms until the broker confirmed the last (every
// publish acked, or it fails), else until the queue reports them all (a
// stream's message count is not a queue's). The publish rate goes into res.
func fill(ctx context.Context, cfg Config, t *topology, p *producer, st *stats, res *Result) error {
	mark("fill")
	start := time.Now()
	if err := p.run(ctx, cfg, t, publishPlan{limit: int64(cfg.Backlog)}, st); err != nil {
		return err
	}
	// Publishing is asynchronous: the backlog is in when the broker says so.
	for {
		n, poll := 0, 20*time.Millisecond
		if cfg.Confirms > 0 {
			poll = time.Millisecond
			// A slot is taken per publish and given back by its ack or nack.
			if len(p.slots) == 0 {
				if c := p.confirmed.Load(); c < int64(cfg.Backlog) {
					return fmt.Errorf("the broker confirmed %d of %d publishes (the rest nacked)", c, cfg.Backlog)
				}
			}
			n = int(p.confirmed.Load())
		} else {
			d, err := t.depth()
			if err != nil {
				return err
			}
			n = d
		}
		if n >= cfg.Backlog {
			break
		}
		if !sleep(ctx, poll) {
			return fmt.Errorf("timed out with %d of %d messages in", n, cfg.Backlog)
		}
	}
	res.Published = st.published.Load()
	res.Accepted = res.Published
	if cfg.Confirms > 0 {
		confirmed := p.confirmed.Load()
		res.Confirmed, res.Accepted = &confirmed, confirmed
	}
	res.PublishRate = float64(res.Accepted) / time.Since(start).Seconds()
	mark("full")
	return nil
}

// runDelayed: producers publish at -rate (in total) for -duration, each message
// with an x-delay between -delay-min and -delay-max, while consumers take them
// as they come due; then it waits until every published message is delivered
// (at most -delay-max + 30 s after the last publish). Every delivery's lateness
// (arrival - send time - its x-delay) is recorded: p50, p99, max and min go
// into the result. Marks: measure when publishing starts, end when the last
// message arrived (or the wait gave up).
func runDelayed(ctx context.Context, cfg Config) (Result, error) {
	var res Result
	t, err := declare(cfg)
	if err != nil {
		return res, err
	}
	defer t.cleanup()
	consumers, producers, conns, err := openClients(cfg, t)
	defer func() { closeAll(conns) }()
	if err != nil {
		return res, err
	}
	st := newStats(len(t.queues), 0)
	st.measuring.Store(true)
	cg := newGroup(ctx)
	for _, c := range consumers {
		c := c
		cg.Go(func(ctx context.Context) error { return c.run(ctx, cfg, st) })
	}
	mark("measure")
	start := time.Now()
	pctx, stop := context.WithTimeout(cg.ctx, cfg.Duration)
	pg := newGroup(pctx)
	plan := publishPlan{rate: float64(cfg.Rate) / float64(cfg.Producers)}
	for _, p := range producers {
		p := p
		pg.Go(func(ctx context.Context) error { return p.run(ctx, cfg, t, plan, st) })
	}
	<-pg.ctx.Done() // the duration is over, or a producer failed
	perr := stopPublishers(pg, producers)
	stop()
	published := st.published.Load() * int64(len(t.queues))
	res.Seconds = time.Since(start).Seconds()
	deadline := time.Now().Add(cfg.DelayMax + 30*time.Second)
	for st.consumed.Load() < published && time.Now().Before(deadline) && sleep(cg.ctx, 10*time.Millisecond) {
	}
	mark("end")
	cerr := cg.Stop()
	res.Published, res.Delivered = st.published.Load(), st.consumed.Load()
	res.Accepted = res.Published
	res.AcceptRate = float64(res.Published) / res.Seconds
	var all []int64
	var bySecond [][]int64
	for _, c := range consumers {
		all = append(all, c.latencies...)
		for i, at := range c.arrivals {
			sec := int(time.Duration(at - start.UnixNano()).Seconds())
			for len(bySecond) <= sec {
				bySecond = append(bySecond, nil)
			}
			bySecond[sec] = append(bySecond[sec], c.latencies[i])
		}
	}
	for _, lat := range bySecond {
		_, p99 := percentiles(lat)
		res.LatenessP99ByS = append(res.LatenessP99ByS, math.Round(p99*10)/10)
	}
	p50, p99, max, min := spread(all)
	res.P50Ms, res.P99Ms = p50, p99
	if len(all) > 0 {
		res.MaxMs, res.MinMs = &max, &min
	}
	switch {
	case perr != nil:
		return res, perr
	case cerr != nil:
		return res, cerr
	case res.Delivered < published:
		return res, fmt.Errorf("%d of %d published messages delivered %v after the last publish",
			res.Delivered, published, cfg.DelayMax+30*time.Second)
	}
	return res, nil
}

// runIdle: Conns connections each with a consumer sit idle for Duration
// (RSS per connection), then a burst of Burst messages is delivered to them.
func runIdle(ctx context.Context, cfg Config) (Result, error) {
	res := Result{}
	t, err := declare(cfg)
	if err != nil {
		return res, err
	}
	defer t.cleanup()
	res.RSSBeforeKB = settledRSS(ctx, cfg.PID)
	start := time.Now()
	consumers, conns, err := openConsumers(cfg, t.queues, cfg.Conns)
	defer func() { closeAll(conns) }()
	res.ConnectSec = time.Since(start).Seconds()
	if err != nil {
		return res, err
	}
	st := newStats(1, int64(cfg.Burst))
	g := newGroup(ctx)
	for _, c := range consumers {
		c := c
		g.Go(func(ctx context.Context) error { return c.run(ctx, cfg, st) })
	}
	defer g.Stop()
	if !sleep(g.ctx, cfg.Duration) {
		return res, fmt.Errorf("interrupted while idle: %v", g.Err())
	}
	res.RSSKB = rssKB(cfg.PID)
	if res.RSSBeforeKB > 0 {
		perConn := float64(res.RSSKB-res.RSSBeforeKB) / float64(cfg.Conns)
		res.PerConnKB = &perConn
	}

	p, err := openProducer(cfg)
	if err != nil {
		return res, err
	}
	conns = append(conns, p)
	start = time.Now()
	if err := p.run(g.ctx, cfg, t, publishPlan{limit: int64(cfg.Burst)}, st); err != nil {
		return res, err
	}
	err = waitDelivered(g, st)
	res.BurstMs = float64(time.Since(start).Microseconds()) / 1000
	res.Published, res.Delivered = st.published.Load(), st.consumed.Load()
	res.Accepted = res.Published
	return res, err
}
