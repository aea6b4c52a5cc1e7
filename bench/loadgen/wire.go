package main

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
)

// Just enough of the AMQP 0-9-1 wire format for the fast consumer (fastconsumer.go).

const (
	frameMethod    = 1
	frameHeader    = 2
	frameBody      = 3
	frameHeartbeat = 8
	frameEnd       = 0xCE
)

// frame is one frame read; payload aliases the reader's buffer until the next read.
type frame struct {
	typ     byte
	channel uint16
	payload []byte
}

type frameReader struct {
	r   *bufio.Reader
	buf []byte
}

func (fr *frameReader) read() (frame, error) {
	var hdr [7]byte
	if _, err := io.ReadFull(fr.r, hdr[:]); err != nil {
		return frame{}, err
	}
	size := int(binary.BigEndian.Uint32(hdr[3:]))
	if cap(fr.buf) < size+1 {
		fr.buf = make([]byte, size+1)
	}
	buf := fr.buf[:size+1]
	if _, err := io.ReadFull(fr.r, buf); err != nil {
		return frame{}, err
	}
	if buf[size] != frameEnd {
		return frame{}, fmt.Errorf("bad frame end byte %#x", buf[size])
	}
	return frame{typ: hdr[0], channel: binary.BigEndian.Uint16(hdr[1:]), payload: buf[:size]}, nil
}

// methodID returns class and method of a method frame's payload.
func methodID(p []byte) (uint16, uint16) {
	return binary.BigEndian.Uint16(p), binary.BigEndian.Uint16(p[2:])
}

// enc builds method frames into a byte slice.
type enc struct{ b []byte }

func (e *enc) u8(v byte)      { e.b = append(e.b, v) }
func (e *enc) u16(v uint16)   { e.b = binary.BigEndian.AppendUint16(e.b, v) }
func (e *enc) u32(v uint32)   { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *enc) u64(v uint64)   { e.b = binary.BigEndian.AppendUint64(e.b, v) }
func (e *enc) short(s string) { e.u8(byte(len(s))); e.b = append(e.b, s...) }
func (e *enc) long(s string)  { e.u32(uint32(len(s))); e.b = append(e.b, s...) }

// method appends one method frame; args encodes the arguments after class and method.
func (e *enc) method(channel, class, id uint16, args func(e *enc)) {
	e.u8(frameMethod)
	e.u16(channel)
	sizeAt := len(e.b)
	e.u32(0)
	e.u16(class)
	e.u16(id)
	if args != nil {
		args(e)
	}
	binary.BigEndian.PutUint32(e.b[sizeAt:], uint32(len(e.b)-sizeAt-4))
	e.u8(frameEnd)
}

// skipShort returns p after a short string.
func skipShort(p []byte) []byte { return p[1+int(p[0]):] }
