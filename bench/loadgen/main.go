// Command loadgen drives one benchmark scenario against an AMQP 0-9-1 broker
// and prints its result as one JSON object on stdout. The Python `bench`
// package builds it and maps scenarios S1..S9 and R1 onto its modes and flags.
//
// While it runs it writes a line "mark NAME" on stderr at each phase boundary
// (throughput and delayed: measure, end; backlog and stream: fill, full, drain,
// drained, or with -hold fill, full, held;
// fill: fill, full; recover: listening, ready), so that the runner can read the broker's
// CPU time and RSS, or the time, at that very moment.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"syscall"
	"time"
)

// Config is one run's parameters; every field maps to a flag.
type Config struct {
	URL         string
	Mode        string // throughput | backlog | stream | delayed | idle | fill | recover | delete
	Duration    time.Duration
	Warmup      time.Duration
	Timeout     time.Duration
	Producers   int
	Consumers   int
	Size        int
	ManualAck   bool
	Prefetch    int
	AckEvery    int
	Persistent  bool
	Confirms    int
	MaxPriority int
	QueueType   string
	Offset      string
	Fanout      int
	ExType      string
	ExArgs      tableArgs
	QueueArgs   tableArgs
	DedupHeader bool
	DelayMin    time.Duration
	DelayMax    time.Duration
	Hold        bool
	Rate        int
	Backlog     int
	Conns       int
	Burst       int
	MaxQueued   int
	Queue       string
	PID         int
	Procs       int
	CPUProfile  string
}

// Result is what the run measured; zero fields are left out.
type Result struct {
	Mode    string  `json:"mode"`
	Seconds float64 `json:"seconds,omitempty"`
	// Published is what the publishers wrote; Confirmed what the broker
	// confirmed (with -confirms); Accepted is Confirmed with -confirms, else
	// Published: what the broker took from the publishers.
	Published   int64   `json:"published"`
	Confirmed   *int64  `json:"confirmed,omitempty"`
	Accepted    int64   `json:"accepted"`
	Delivered   int64   `json:"delivered"`
	AcceptRate  float64 `json:"accept_rate,omitempty"`
	DeliverRate float64 `json:"deliver_rate,omitempty"`
	// Backlog is the messages ready in the run's queues when publishing
	// stopped at the end of the window (nil: the broker did not say in time).
	Backlog     *int64  `json:"backlog,omitempty"`
	PublishRate float64 `json:"publish_rate,omitempty"`
	P50Ms       float64 `json:"p50_ms,omitempty"`
	P99Ms       float64 `json:"p99_ms,omitempty"`
	// delayed: the largest and smallest lateness (arrival - send time - x-delay).
	MaxMs *float64 `json:"max_ms,omitempty"`
	MinMs *float64 `json:"min_ms,omitempty"`
	// delayed: the p99 lateness of the deliveries that arrived in each second of the run.
	LatenessP99ByS []float64 `json:"lateness_p99_by_s,omitempty"`
	DrainRate      float64   `json:"drain_rate,omitempty"`
	// stream: each consumer's replay rate (its messages / its own time).
	ConsumerRates   []float64 `json:"consumer_rates,omitempty"`
	ConsumerRateMin float64   `json:"consumer_rate_min,omitempty"`
	ConsumerRateMax float64   `json:"consumer_rate_max,omitempty"`
	// stream: deliveries whose x-stream-offset skipped some (all consumers).
	OffsetGaps  int64    `json:"offset_gaps,omitempty"`
	RSSBeforeKB int64    `json:"rss_before_kb,omitempty"`
	RSSKB       int64    `json:"rss_kb,omitempty"`
	PerConnKB   *float64 `json:"per_conn_kb,omitempty"` // 0 is a result here
	ConnectSec  float64  `json:"connect_seconds,omitempty"`
	BurstMs     float64  `json:"burst_ms,omitempty"`
	Queue       string   `json:"queue,omitempty"`     // fill: the queue left full
	Recovered   int64    `json:"recovered,omitempty"` // recover: messages the queue reported
	Held        int64    `json:"held,omitempty"`      // backlog -hold: messages in and held
	Error       string   `json:"error,omitempty"`
}

func parseFlags() Config {
	var c Config
	flag.StringVar(&c.URL, "url", "amqp://guest:guest@127.0.0.1:5672/", "broker URL")
	flag.StringVar(&c.Mode, "mode", "throughput", "throughput | backlog | stream | delayed | idle | fill | recover | delete (the last three: restart scenario)")
	flag.DurationVar(&c.Duration, "duration", 5*time.Second, "measured time (throughput), idle time (idle)")
	flag.DurationVar(&c.Warmup, "warmup", time.Second, "load before measuring starts")
	flag.DurationVar(&c.Timeout, "timeout", 120*time.Second, "hard bound on the whole run")
	flag.IntVar(&c.Producers, "producers", 1, "producer connections")
	flag.IntVar(&c.Consumers, "consumers", 1, "consumer connections")
	flag.IntVar(&c.Size, "size", 1024, "message body bytes (at least 8: a send timestamp)")
	flag.BoolVar(&c.ManualAck, "ack", false, "consumers ack each message (else no-ack)")
	flag.IntVar(&c.Prefetch, "prefetch", 100, "consumer prefetch with -ack")
	flag.IntVar(&c.AckEvery, "ack-every", 1, "with -ack: one basic.ack with multiple=true every this many deliveries (1: each delivery acked on its own)")
	flag.BoolVar(&c.Persistent, "persistent", false, "durable queue, persistent messages")
	flag.IntVar(&c.Confirms, "confirms", 0, "publisher confirms with this many in flight (0: off)")
	flag.IntVar(&c.MaxPriority, "max-priority", 0, "x-max-priority; messages get random priorities")
	flag.StringVar(&c.QueueType, "queue-type", "", "x-queue-type of the queues (quorum: needs -persistent; stream mode sets stream)")
	flag.StringVar(&c.Offset, "stream-offset", "", "consume with x-stream-offset (first, last, next, or a number); stream mode: first unless given")
	flag.IntVar(&c.Fanout, "fanout", 0, "publish to a fanout exchange (or one of -exchange-type) bound to this many queues")
	flag.StringVar(&c.ExType, "exchange-type", "", "publish to an exchange of this type (e.g. x-message-deduplication, x-delayed-message) bound with key \"\" to the queue (to the -fanout queues); durable with -persistent")
	flag.Var(&c.ExArgs, "exchange-arg", "an argument of that exchange, key=value (an integer value is sent as a long, true/false as a boolean); repeatable")
	flag.Var(&c.QueueArgs, "queue-arg", "an argument of the queues, key=value as -exchange-arg; repeatable")
	flag.BoolVar(&c.DedupHeader, "dedup-header", false, "each message carries a unique x-deduplication-header")
	flag.DurationVar(&c.DelayMin, "delay-min", 0, "with -delay-max: each message gets an x-delay header, uniform in [delay-min, delay-max] (whole ms)")
	flag.DurationVar(&c.DelayMax, "delay-max", 0, "see -delay-min (0: no x-delay); the delay also goes into body bytes 8..15, and consumers record lateness (latency minus the delay)")
	flag.BoolVar(&c.Hold, "hold", false, "backlog mode: stop once every message is in (confirmed with -confirms), without draining: delayed messages held by the exchange")
	flag.IntVar(&c.Rate, "rate", 0, "total publish rate in msg/s (0: as fast as possible)")
	flag.IntVar(&c.Backlog, "backlog", 1000000, "messages in the backlog (backlog mode), in the stream (stream mode)")
	flag.IntVar(&c.Conns, "conns", 1000, "idle consumer connections (idle mode)")
	flag.IntVar(&c.Burst, "burst", 10000, "messages in the burst (idle mode)")
	flag.IntVar(&c.MaxQueued, "max-queued", 0, "producers pause while this many deliveries are queued (0: never, the default: publishers go flat out)")
	flag.StringVar(&c.Queue, "queue", "", "the queue to wait for (recover) or delete (delete)")
	flag.IntVar(&c.PID, "pid", 0, "broker pid: to read its RSS (idle mode), to stop waiting when it exits (recover)")
	flag.IntVar(&c.Procs, "procs", 1, "GOMAXPROCS: one thread keeps goroutine hand-offs cheap and leaves the other core to the broker")
	flag.StringVar(&c.CPUProfile, "cpuprofile", "", "write a Go CPU profile here (to tune the load generator)")
	flag.Parse()
	if c.Size < 8 {
		c.Size = 8
	}
	if c.DelayMax > 0 && c.Size < 16 {
		c.Size = 16
	}
	return c
}

// mark tells the runner (on stderr, unbuffered) that a phase begins now.
func mark(name string) {
	fmt.Fprintf(os.Stderr, "mark %s\n", name)
}

func main() {
	cfg := parseFlags()
	runtime.GOMAXPROCS(cfg.Procs)
	// amqp091-go allocates for every publish; collecting less often costs memory we can spare.
	debug.SetGCPercent(400)
	// The run stops cleanly (queues deleted) on a signal or at the hard bound.
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	ctx, cancelT := context.WithTimeout(ctx, cfg.Timeout)
	defer cancelT()

	if cfg.CPUProfile != "" {
		if f, err := os.Create(cfg.CPUProfile); err == nil {
			pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	var res Result
	var err error
	switch cfg.Mode {
	case "throughput":
		res, err = runThroughput(ctx, cfg)
	case "backlog":
		res, err = runBacklog(ctx, cfg)
	case "stream":
		res, err = runStream(ctx, cfg)
	case "delayed":
		res, err = runDelayed(ctx, cfg)
	case "idle":
		res, err = runIdle(ctx, cfg)
	case "fill":
		res, err = runFill(ctx, cfg)
	case "recover":
		res, err = runRecover(ctx, cfg)
	case "delete":
		res, err = runDelete(ctx, cfg)
	default:
		err = fmt.Errorf("unknown mode %q", cfg.Mode)
	}
	res.Mode = cfg.Mode
	if err != nil {
		res.Error = err.Error()
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
	if err != nil {
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}
