// Driver for @cloudamqp/amqp-client (npm).
'use strict';
const { AMQPClient } = require('@cloudamqp/amqp-client');
const c = require('./common');

const PROPS = {
  content_type: 'contentType', content_encoding: 'contentEncoding', delivery_mode: 'deliveryMode',
  priority: 'priority', correlation_id: 'correlationId', reply_to: 'replyTo', expiration: 'expiration',
  message_id: 'messageId', timestamp: 'timestamp', type: 'type', user_id: 'userId', app_id: 'appId',
};

// The library picks field types from JS types: it has no way to send a decimal, and writes a
// non-integer number as a 32-bit float.
const UNSUPPORTED = new Set(['decimal']);

function toNative({ type, value }) {
  switch (type) {
    case 'long': return BigInt(value);
    case 'timestamp': return new Date(value * 1000);
    case 'bytes': return Buffer.from(value, 'hex');
    case 'void': return null;
    case 'table': return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toNative(v)]));
    case 'array': return value.map(toNative);
    default: return value;
  }
}

function received(msg) {
  const props = {};
  for (const [ours, theirs] of Object.entries(PROPS)) props[ours] = msg.properties[theirs];
  if (props.timestamp instanceof Date) props.timestamp = Math.floor(props.timestamp.getTime() / 1000);
  return c.message(msg.body || Buffer.alloc(0), props, msg.properties.headers,
    { redelivered: msg.redelivered, exchange: msg.exchange, routingKey: msg.routingKey });
}

class Driver {
  constructor(url) {
    this.url = url;
    this.conns = {};
    this.chans = {};
    this.consumers = {};
    this.returned = [];
    this.confirms = {}; // channel name -> publish promises
  }

  ch(step) { return this.chans[step.ch || 'ch']; }

  async op_connect(step) {
    let url = step.url || this.url;
    if ('heartbeat' in step) url = c.withQuery(url, 'heartbeat', step.heartbeat);
    const until = Date.now() + (step.retry_for || 0) * 1000;
    for (;;) {
      try {
        const conn = await new AMQPClient(url).connect();
        this.conns[step.conn || 'c'] = conn;
        return;
      } catch (err) {
        if (Date.now() > until) throw err;
        await c.sleep(500);
      }
    }
  }

  async op_close(step) { await this.conns[step.conn || 'c'].close(); }

  async op_channel(step) {
    const ch = await this.conns[step.conn || 'c'].channel();
    ch.onReturn = (msg) => this.returned.push({
      reply_code: msg.replyCode, exchange: msg.exchange, routing_key: msg.routingKey,
      body: c.describeBody(msg.body || Buffer.alloc(0)),
    });
    this.chans[step.ch || 'ch'] = ch;
  }

  async op_exchange_declare(step) {
    await this.ch(step).exchangeDeclare(step.exchange, step.type || 'direct',
      { passive: !!step.passive, durable: !!step.durable, autoDelete: !!step.auto_delete });
  }

  async op_exchange_delete(step) { await this.ch(step).exchangeDelete(step.exchange); }

  async op_queue_declare(step) {
    const ok = await this.ch(step).queueDeclare(step.queue, {
      passive: !!step.passive, durable: !!step.durable, exclusive: !!step.exclusive,
      autoDelete: !!step.auto_delete,
    }, step.args || {});
    return { messages: ok.messageCount, consumers: ok.consumerCount };
  }

  async op_queue_bind(step) {
    await this.ch(step).queueBind(step.queue, step.exchange, step.routing_key || '', step.args || {});
  }

  async op_queue_delete(step) { await this.ch(step).queueDelete(step.queue); }

  async op_qos(step) { await this.ch(step).basicQos(step.prefetch); }

  async op_confirm(step) {
    await this.ch(step).confirmSelect();
    this.confirms[step.ch || 'ch'] = [];
  }

  async op_publish(step) {
    const props = {};
    const unsent = [];
    for (const [k, v] of Object.entries(step.props || {})) {
      if (k === 'headers') {
        props.headers = {};
        for (const [h, x] of Object.entries(v)) {
          if (UNSUPPORTED.has(x.type)) unsent.push(h);
          else props.headers[h] = toNative(x);
        }
      } else {
        props[PROPS[k]] = k === 'timestamp' ? new Date(v * 1000) : v;
      }
    }
    // In confirm mode the promise settles with the broker's ack; otherwise once written.
    const done = this.ch(step).basicPublish(step.exchange, step.routing_key, c.makeBody(step.body), props,
      !!step.mandatory);
    const pending = this.confirms[step.ch || 'ch'];
    if (pending) pending.push(done.catch((e) => e));
    else await done;
    return unsent.length ? { unsent: unsent.sort() } : 'ok';
  }

  async op_wait_confirms(step) {
    const results = await Promise.all(this.confirms[step.ch || 'ch'] || []);
    const failed = results.filter((r) => r instanceof Error);
    return failed.length ? `${failed.length} failed: ${failed[0].message}` : 'ok';
  }

  async op_returns(step) {
    await c.waitFor(() => this.returned.length >= step.count, step.timeout || 5);
    await c.sleep((step.settle || 0) * 1000);
    return [...this.returned];
  }

  async op_get(step) {
    const ch = this.ch(step);
    const ack = step.ack || 'ack';
    const until = Date.now() + (step.wait || 0) * 1000;
    let msg;
    while (!(msg = await ch.basicGet(step.queue, { noAck: ack === 'noack' }))) {
      if (Date.now() > until) return 'empty';
      await c.sleep(50);
    }
    if (ack === 'ack') await msg.ack();
    else if (ack === 'reject') await msg.reject(false);
    else if (ack === 'nack') await msg.nack(false);
    return received(msg);
  }

  async op_get_all(step) {
    const out = [];
    for (;;) {
      const msg = await this.op_get({ ...step, wait: 0 });
      if (msg === 'empty') return out;
      out.push(msg.body);
    }
  }

  async op_consume(step) {
    const log = { msgs: [], next: 0, cancelled: false };
    this.consumers[step.tag] = log;
    log.consumer = await this.ch(step).basicConsume(step.queue, { tag: step.tag, noAck: !!step.no_ack },
      (msg) => { log.msgs.push(msg); });
    // wait() rejects when the broker cancels the consumer, resolves on our own cancel.
    log.consumer.wait().catch(() => { log.cancelled = true; });
  }

  async op_deliveries(step) {
    const log = this.consumers[step.tag];
    await c.waitFor(() => log.msgs.length >= step.count, step.timeout || 5);
    await c.sleep((step.settle || 0) * 1000);
    return log.msgs.map((m) => c.describeBody(m.body || Buffer.alloc(0)));
  }

  async op_ack(step) {
    const log = this.consumers[step.tag];
    await log.msgs[log.next++].ack();
  }

  async op_cancel(step) { await this.consumers[step.tag].consumer.cancel(); }

  async op_cancelled(step) {
    const log = this.consumers[step.tag];
    await c.waitFor(() => log.cancelled, step.timeout || 5);
    return log.cancelled;
  }

  async op_sleep(step) { await c.sleep(step.seconds * 1000); }

  async op_sync(step) { await this.ch(step).exchangeDeclare('amq.direct', 'direct', { passive: true }); }
}

c.main((url) => new Driver(url));
