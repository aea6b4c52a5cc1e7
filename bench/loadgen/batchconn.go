package main

import (
	"net"
	"sync"
)

// batchConn coalesces writes. amqp091-go flushes every frame, so a publish
// costs three write syscalls; here frames written while the previous write is
// in flight go out together in one syscall. Under load that is many messages
// per syscall; when idle a frame waits only for the flusher goroutine to wake.
type batchConn struct {
	net.Conn
	mu    sync.Mutex
	room  *sync.Cond
	buf   []byte
	spare []byte
	err   error
	kick  chan struct{}
	done  chan struct{}
	once  sync.Once
}

// maxPending bounds what a writer may queue before it blocks, so a slow
// broker pushes back on the producer as a plain socket would.
const maxPending = 1 << 20

func newBatchConn(c net.Conn) *batchConn {
	b := &batchConn{Conn: c, kick: make(chan struct{}, 1), done: make(chan struct{})}
	b.room = sync.NewCond(&b.mu)
	go b.flusher()
	return b
}

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	for len(b.buf) > maxPending && b.err == nil {
		b.room.Wait()
	}
	if b.err != nil {
		b.mu.Unlock()
		return 0, b.err
	}
	b.buf = append(b.buf, p...)
	b.mu.Unlock()
	select {
	case b.kick <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (b *batchConn) flusher() {
	for {
		select {
		case <-b.done:
			return
		case <-b.kick:
		}
		b.mu.Lock()
		out := b.buf
		if len(out) == 0 {
			b.mu.Unlock()
			continue
		}
		// Swap buffers: writers fill the spare while this one is sent.
		b.buf, b.spare = b.spare[:0], nil
		b.mu.Unlock()
		_, err := b.Conn.Write(out)
		b.mu.Lock()
		b.spare = out
		if err != nil {
			b.err = err
		}
		b.room.Broadcast()
		b.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (b *batchConn) Close() error {
	b.once.Do(func() { close(b.done) })
	b.mu.Lock()
	if b.err == nil {
		b.err = net.ErrClosed
	}
	b.room.Broadcast()
	b.mu.Unlock()
	return b.Conn.Close()
}
