package main

import (
	"bufio"
	"context"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// stats are the counters shared by a run's producers and consumers.
type stats struct {
	published atomic.Int64
	consumed  atomic.Int64
	measuring atomic.Bool
	fanout    int64 // deliveries per publish
	target    int64 // close reached when consumed gets here (0: never)
	reached   chan struct{}
	reachedAt time.Time // when consumed got to target (read after reached is closed)
	once      sync.Once
}

func newStats(fanout int, target int64) *stats {
	if fanout < 1 {
		fanout = 1
	}
	return &stats{fanout: int64(fanout), target: target, reached: make(chan struct{})}
}

func (s *stats) delivered() {
	n := s.consumed.Add(1)
	if s.target > 0 && n >= s.target {
		s.once.Do(func() {
			s.reachedAt = time.Now()
			close(s.reached)
		})
	}
}

// queued is how many deliveries are published but not yet consumed.
func (s *stats) queued() int64 {
	return s.published.Load()*s.fanout - s.consumed.Load()
}

// percentiles returns the p50 and p99 of nanosecond samples, in ms.
func percentiles(samples []int64) (p50, p99 float64) {
	p50, p99, _, _ = spread(samples)
	return p50, p99
}

// spread returns the p50, p99, max and min of nanosecond samples, in ms.
func spread(samples []int64) (p50, p99, max, min float64) {
	if len(samples) == 0 {
		return 0, 0, 0, 0
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	at := func(q float64) float64 {
		return float64(samples[int(q*float64(len(samples)-1))]) / 1e6
	}
	return at(0.50), at(0.99), at(1), at(0)
}

// settledRSS waits (up to 3 s) until the broker's RSS stops moving, so memory
// still being freed after an earlier scenario does not blur a baseline.
func settledRSS(ctx context.Context, pid int) int64 {
	last := rssKB(pid)
	for i := 0; i < 15 && last > 0; i++ {
		if !sleep(ctx, 200*time.Millisecond) {
			break
		}
		now := rssKB(pid)
		if d := now - last; d < last/200 && -d < last/200 {
			return now
		}
		last = now
	}
	return last
}

// rssKB reads VmRSS of a process from /proc (0 when unknown).
func rssKB(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "VmRSS:") {
			rest := strings.TrimSpace(strings.TrimPrefix(line, "VmRSS:"))
			kb, _ := strconv.ParseInt(strings.TrimSuffix(rest, " kB"), 10, 64)
			return kb
		}
	}
	return 0
}
