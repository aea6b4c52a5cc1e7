// Driver for amqp091-go (Debian golang-github-rabbitmq-amqp091-go-dev), built offline in GOPATH mode.
// Usage: driver SCENARIO URL < script.json   (see ../PROTOCOL.md)
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	amqp "github.com/rabbitmq/amqp091-go"
)

type Step map[string]interface{}

func (s Step) str(k, def string) string {
	if v, ok := s[k].(string); ok {
		return v
	}
	return def
}
func (s Step) num(k string, def float64) float64 {
	if v, ok := s[k].(float64); ok {
		return v
	}
	return def
}
func (s Step) flag(k string) bool { v, _ := s[k].(bool); return v }
func (s Step) table(k string) map[string]interface{} {
	v, _ := s[k].(map[string]interface{})
	return v
}

type unsupported struct{ op string }

func (u unsupported) Error() string { return u.op + " not supported by this client" }

// --- bodies and typed header values (same rules as interop/bodies.py) ---

func makeBody(spec interface{}) []byte {
	if m, ok := spec.(map[string]interface{}); ok {
		n := int(m["size"].(float64))
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(i % 251)
		}
		return b
	}
	if spec == nil {
		return []byte{}
	}
	return []byte(spec.(string))
}

func describeBody(b []byte) interface{} {
	if len(b) <= 200 && utf8.Valid(b) {
		return string(b)
	}
	sum := sha256.Sum256(b)
	return map[string]interface{}{"len": len(b), "sha256": hex.EncodeToString(sum[:])}
}

func typed(t string, v interface{}) map[string]interface{} {
	return map[string]interface{}{"type": t, "value": v}
}

func toNative(v map[string]interface{}) interface{} {
	value := v["value"]
	switch v["type"] {
	case "int":
		return int32(value.(float64))
	case "long":
		return int64(value.(float64))
	case "float":
		return value.(float64)
	case "decimal":
		parts := strings.SplitN(value.(string), ".", 2)
		frac := ""
		if len(parts) == 2 {
			frac = parts[1]
		}
		n, _ := strconv.ParseInt(parts[0]+frac, 10, 32)
		return amqp.Decimal{Scale: uint8(len(frac)), Value: int32(n)}
	case "timestamp":
		return time.Unix(int64(value.(float64)), 0).UTC()
	case "bytes":
		b, _ := hex.DecodeString(value.(string))
		return b
	case "void":
		return nil
	case "table":
		t := amqp.Table{}
		for k, x := range value.(map[string]interface{}) {
			t[k] = toNative(x.(map[string]interface{}))
		}
		return t
	case "array":
		var out []interface{}
		for _, x := range value.([]interface{}) {
			out = append(out, toNative(x.(map[string]interface{})))
		}
		return out
	}
	return value
}

func fromNative(v interface{}) map[string]interface{} {
	switch x := v.(type) {
	case nil:
		return typed("void", nil)
	case bool:
		return typed("bool", x)
	case int8, int16, int32, int64, uint8, uint16, uint32, int:
		n, _ := strconv.ParseInt(fmt.Sprint(x), 10, 64)
		return typed("int", n)
	case float32:
		return typed("float", float64(x))
	case float64:
		return typed("float", x)
	case string:
		return typed("str", x)
	case []byte:
		return typed("bytes", hex.EncodeToString(x))
	case time.Time:
		return typed("timestamp", x.Unix())
	case amqp.Decimal:
		r := new(big.Rat).SetFrac64(int64(x.Value), new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(x.Scale)), nil).Int64())
		return typed("decimal", r.FloatString(int(x.Scale)))
	case amqp.Table:
		out := map[string]interface{}{}
		for k, y := range x {
			out[k] = fromNative(y)
		}
		return typed("table", out)
	case []interface{}:
		out := []interface{}{}
		for _, y := range x {
			out = append(out, fromNative(y))
		}
		return typed("array", out)
	}
	return typed("str", fmt.Sprint(v))
}

func received(d amqp.Delivery) map[string]interface{} {
	props := map[string]interface{}{}
	set := func(k, v string) {
		if v != "" {
			props[k] = v
		}
	}
	set("content_type", d.ContentType)
	set("content_encoding", d.ContentEncoding)
	set("correlation_id", d.CorrelationId)
	set("reply_to", d.ReplyTo)
	set("expiration", d.Expiration)
	set("message_id", d.MessageId)
	set("type", d.Type)
	set("user_id", d.UserId)
	set("app_id", d.AppId)
	if d.DeliveryMode != 0 {
		props["delivery_mode"] = d.DeliveryMode
	}
	if d.Priority != 0 {
		props["priority"] = d.Priority
	}
	if !d.Timestamp.IsZero() {
		props["timestamp"] = d.Timestamp.Unix()
	}
	headers := map[string]interface{}{}
	for k, v := range d.Headers {
		headers[k] = fromNative(v)
	}
	return map[string]interface{}{"body": describeBody(d.Body), "props": props, "headers": headers,
		"redelivered": d.Redelivered, "exchange": d.Exchange, "routing_key": d.RoutingKey}
}

func errorCode(err error) interface{} {
	var ae *amqp.Error
	if errors.As(err, &ae) {
		if ae.Code == 403 && !ae.Server {
			return "auth"
		}
		return ae.Code
	}
	text := err.Error()
	if strings.Contains(text, "username or password") || strings.Contains(text, "ACCESS_REFUSED") {
		return 403
	}
	if strings.Contains(text, "timeout") {
		return "timeout"
	}
	return "closed"
}

// --- the driver ---

type consumer struct {
	mu        sync.Mutex
	ch        *amqp.Channel
	msgs      []amqp.Delivery
	next      int
	cancelled bool
}

type channel struct {
	ch        *amqp.Channel
	mu        sync.Mutex
	closed    *amqp.Error
	confirms  chan amqp.Confirmation
	published int
}

type driver struct {
	url       string
	conns     map[string]*amqp.Connection
	chans     map[string]*channel
	consumers map[string]*consumer
	mu        sync.Mutex
	returned  []map[string]interface{}
}

func (d *driver) chanOf(s Step) (*channel, error) {
	c := d.chans[s.str("ch", "ch")]
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed != nil {
		return nil, c.closed // the broker's channel.close, as NotifyClose gave it
	}
	return c, nil
}

func waitFor(pred func() bool, seconds float64) {
	until := time.Now().Add(time.Duration(seconds * float64(time.Second)))
	for !pred() && time.Now().Before(until) {
		time.Sleep(20 * time.Millisecond)
	}
}

func pause(seconds float64) { time.Sleep(time.Duration(seconds * float64(time.Second))) }

func (d *driver) run(s Step) (interface{}, error) {
	op := s["op"].(string)
	switch op {
	case "connect":
		u := s.str("url", d.url)
		cfg := amqp.Config{Dial: amqp.DefaultDial(15 * time.Second)}
		if hb, ok := s["heartbeat"].(float64); ok {
			cfg.Heartbeat = time.Duration(hb) * time.Second
		}
		until := time.Now().Add(time.Duration(s.num("retry_for", 0)) * time.Second)
		for {
			conn, err := amqp.DialConfig(u, cfg)
			if err == nil {
				d.conns[s.str("conn", "c")] = conn
				return nil, nil
			}
			if time.Now().After(until) {
				return nil, err
			}
			time.Sleep(500 * time.Millisecond)
		}
	case "close":
		return nil, d.conns[s.str("conn", "c")].Close()
	case "channel":
		ch, err := d.conns[s.str("conn", "c")].Channel()
		if err != nil {
			return nil, err
		}
		c := &channel{ch: ch}
		closes := ch.NotifyClose(make(chan *amqp.Error, 1))
		returns := ch.NotifyReturn(make(chan amqp.Return, 16))
		cancels := ch.NotifyCancel(make(chan string, 16))
		go func() {
			if e, ok := <-closes; ok {
				c.mu.Lock()
				c.closed = e
				c.mu.Unlock()
			}
		}()
		go func() {
			for r := range returns {
				d.mu.Lock()
				d.returned = append(d.returned, map[string]interface{}{"reply_code": r.ReplyCode,
					"exchange": r.Exchange, "routing_key": r.RoutingKey, "body": describeBody(r.Body)})
				d.mu.Unlock()
			}
		}()
		go func() {
			for tag := range cancels {
				d.mu.Lock()
				if cons, ok := d.consumers[tag]; ok {
					cons.mu.Lock()
					cons.cancelled = true
					cons.mu.Unlock()
				}
				d.mu.Unlock()
			}
		}()
		d.chans[s.str("ch", "ch")] = c
		return nil, nil
	case "sleep":
		pause(s.num("seconds", 0)) // the library's reader goroutine answers heartbeats
		return nil, nil
	case "returns":
		waitFor(func() bool { d.mu.Lock(); defer d.mu.Unlock(); return len(d.returned) >= int(s.num("count", 1)) },
			s.num("timeout", 5))
		pause(s.num("settle", 0))
		d.mu.Lock()
		defer d.mu.Unlock()
		return append([]map[string]interface{}{}, d.returned...), nil
	case "deliveries", "ack", "cancel", "cancelled":
		return d.consumerOp(op, s)
	}
	c, err := d.chanOf(s)
	if err != nil {
		return nil, err
	}
	result, err := d.channelOp(op, c, s)
	if errors.Is(err, amqp.ErrClosed) {
		// The broker's channel.close reaches NotifyClose on another goroutine; give it a moment
		// so the report carries the broker's code (404), not the library's generic 504.
		time.Sleep(100 * time.Millisecond)
		if _, closed := d.chanOf(s); closed != nil {
			return nil, closed
		}
	}
	return result, err
}

func (d *driver) channelOp(op string, c *channel, s Step) (interface{}, error) {
	ch := c.ch
	switch op {
	case "exchange_declare":
		if s.flag("passive") {
			return nil, ch.ExchangeDeclarePassive(s.str("exchange", ""), s.str("type", "direct"), s.flag("durable"), s.flag("auto_delete"), false, false, nil)
		}
		return nil, ch.ExchangeDeclare(s.str("exchange", ""), s.str("type", "direct"), s.flag("durable"), s.flag("auto_delete"), false, false, nil)
	case "exchange_delete":
		return nil, ch.ExchangeDelete(s.str("exchange", ""), false, false)
	case "queue_declare":
		declare := ch.QueueDeclare
		if s.flag("passive") {
			declare = ch.QueueDeclarePassive
		}
		q, err := declare(s.str("queue", ""), s.flag("durable"), s.flag("auto_delete"), s.flag("exclusive"), false, argTable(s.table("args")))
		if err != nil {
			return nil, err
		}
		return map[string]interface{}{"messages": q.Messages, "consumers": q.Consumers}, nil
	case "queue_bind":
		return nil, ch.QueueBind(s.str("queue", ""), s.str("routing_key", ""), s.str("exchange", ""), false, argTable(s.table("args")))
	case "queue_delete":
		_, err := ch.QueueDelete(s.str("queue", ""), false, false, false)
		return nil, err
	case "qos":
		return nil, ch.Qos(int(s.num("prefetch", 0)), 0, false)
	case "confirm":
		c.confirms = ch.NotifyPublish(make(chan amqp.Confirmation, 1024))
		return nil, ch.Confirm(false)
	case "publish":
		// amqp091-go can send every field type, so nothing is ever "unsent".
		if err := ch.Publish(s.str("exchange", ""), s.str("routing_key", ""), s.flag("mandatory"), false, publishing(s)); err != nil {
			return nil, err
		}
		c.published++
		return "ok", nil
	case "wait_confirms":
		nacked := 0
		timeout := time.After(10 * time.Second)
		for i := 0; i < c.published; i++ {
			select {
			case conf := <-c.confirms:
				if !conf.Ack {
					nacked++
				}
			case <-timeout:
				return fmt.Sprintf("%d unconfirmed", c.published-i), nil
			}
		}
		c.published = 0
		if nacked > 0 {
			return fmt.Sprintf("%d nacked", nacked), nil
		}
		return "ok", nil
	case "get":
		return d.get(ch, s)
	case "get_all":
		out := []interface{}{}
		for {
			m, err := d.get(ch, Step{"queue": s["queue"], "ack": "ack"})
			if err != nil {
				return nil, err
			}
			if m == "empty" {
				return out, nil
			}
			out = append(out, m.(map[string]interface{})["body"])
		}
	case "consume":
		deliveries, err := ch.Consume(s.str("queue", ""), s.str("tag", ""), s.flag("no_ack"), false, false, false, nil)
		if err != nil {
			return nil, err
		}
		cons := &consumer{ch: ch}
		d.mu.Lock()
		d.consumers[s.str("tag", "")] = cons
		d.mu.Unlock()
		go func() {
			for m := range deliveries {
				cons.mu.Lock()
				cons.msgs = append(cons.msgs, m)
				cons.mu.Unlock()
			}
		}()
		return nil, nil
	case "sync":
		return nil, ch.ExchangeDeclarePassive("amq.direct", "direct", true, false, false, false, nil)
	}
	return nil, unsupported{op}
}

// safeRun turns a panic (e.g. a step on a connection that never opened) into a step error.
func (d *driver) safeRun(s Step) (result interface{}, err error) {
	defer func() {
		if r := recover(); r != nil {
			result, err = nil, fmt.Errorf("driver panic: %v", r)
		}
	}()
	return d.run(s)
}

func (d *driver) consumerOp(op string, s Step) (interface{}, error) {
	d.mu.Lock()
	cons := d.consumers[s.str("tag", "")]
	d.mu.Unlock()
	switch op {
	case "deliveries":
		waitFor(func() bool { cons.mu.Lock(); defer cons.mu.Unlock(); return len(cons.msgs) >= int(s.num("count", 1)) },
			s.num("timeout", 5))
		pause(s.num("settle", 0))
		cons.mu.Lock()
		defer cons.mu.Unlock()
		out := []interface{}{}
		for _, m := range cons.msgs {
			out = append(out, describeBody(m.Body))
		}
		return out, nil
	case "ack":
		cons.mu.Lock()
		m := cons.msgs[cons.next]
		cons.next++
		cons.mu.Unlock()
		return nil, m.Ack(false)
	case "cancel":
		return nil, cons.ch.Cancel(s.str("tag", ""), false)
	case "cancelled":
		waitFor(func() bool { cons.mu.Lock(); defer cons.mu.Unlock(); return cons.cancelled }, s.num("timeout", 5))
		cons.mu.Lock()
		defer cons.mu.Unlock()
		return cons.cancelled, nil
	}
	return nil, unsupported{op}
}

func (d *driver) get(ch *amqp.Channel, s Step) (interface{}, error) {
	ack := s.str("ack", "ack")
	until := time.Now().Add(time.Duration(s.num("wait", 0) * float64(time.Second)))
	for {
		m, ok, err := ch.Get(s.str("queue", ""), ack == "noack")
		if err != nil {
			return nil, err
		}
		if ok {
			switch ack {
			case "ack":
				err = m.Ack(false)
			case "reject":
				err = m.Reject(false)
			case "nack":
				err = m.Nack(false, false)
			}
			return received(m), err
		}
		if time.Now().After(until) {
			return "empty", nil
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func argTable(m map[string]interface{}) amqp.Table {
	if m == nil {
		return nil
	}
	t := amqp.Table{}
	for k, v := range m {
		if f, ok := v.(float64); ok && f == float64(int64(f)) {
			t[k] = int64(f) // JSON numbers are floats; arguments are integers
		} else {
			t[k] = v
		}
	}
	return t
}

func publishing(s Step) amqp.Publishing {
	msg := amqp.Publishing{Body: makeBody(s["body"])}
	for k, v := range s.table("props") {
		switch k {
		case "headers":
			msg.Headers = amqp.Table{}
			for h, x := range v.(map[string]interface{}) {
				msg.Headers[h] = toNative(x.(map[string]interface{}))
			}
		case "content_type":
			msg.ContentType = v.(string)
		case "content_encoding":
			msg.ContentEncoding = v.(string)
		case "delivery_mode":
			msg.DeliveryMode = uint8(v.(float64))
		case "priority":
			msg.Priority = uint8(v.(float64))
		case "correlation_id":
			msg.CorrelationId = v.(string)
		case "reply_to":
			msg.ReplyTo = v.(string)
		case "expiration":
			msg.Expiration = v.(string)
		case "message_id":
			msg.MessageId = v.(string)
		case "timestamp":
			msg.Timestamp = time.Unix(int64(v.(float64)), 0)
		case "type":
			msg.Type = v.(string)
		case "user_id":
			msg.UserId = v.(string)
		case "app_id":
			msg.AppId = v.(string)
		}
	}
	return msg
}

func main() {
	scenario, u := os.Args[1], os.Args[2]
	if _, err := url.Parse(u); err != nil {
		panic(err)
	}
	var input struct{ Steps []Step }
	observed := map[string]interface{}{}
	if err := json.NewDecoder(os.Stdin).Decode(&input); err != nil {
		observed["_crash"] = err.Error()
	}
	d := &driver{url: u, conns: map[string]*amqp.Connection{}, chans: map[string]*channel{},
		consumers: map[string]*consumer{}}
	for i, s := range input.Steps {
		fmt.Fprintf(os.Stderr, "interop-step %d %v\n", i, s["op"]) // names the step if we time out
		result, err := d.safeRun(s)
		if err != nil {
			var u unsupported
			if errors.As(err, &u) {
				observed["_unsupported"] = u.Error()
				break
			}
			e := map[string]interface{}{"error": errorCode(err), "detail": err.Error()}
			if save, ok := s["save"].(string); ok {
				observed[save] = e
				continue
			}
			e["step"], e["op"] = i, s["op"]
			observed["_abort"] = e
			break
		}
		if save, ok := s["save"].(string); ok {
			if result == nil {
				result = "ok"
			}
			observed[save] = result
		}
	}
	out, _ := json.Marshal(map[string]interface{}{"scenario": scenario, "observed": observed})
	fmt.Println(string(out))
	os.Exit(0)
}
