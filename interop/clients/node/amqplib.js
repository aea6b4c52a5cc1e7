// Driver for amqplib (npm), promise API.
'use strict';
const amqp = require('amqplib');
const c = require('./common');

const PROPS = {
  content_type: 'contentType', content_encoding: 'contentEncoding', delivery_mode: 'deliveryMode',
  priority: 'priority', correlation_id: 'correlationId', reply_to: 'replyTo', expiration: 'expiration',
  message_id: 'messageId', timestamp: 'timestamp', type: 'type', user_id: 'userId', app_id: 'appId',
};

// Typed script value -> what amqplib encodes as that field type ({'!': type} picks exotic ones).
function toNative({ type, value }) {
  switch (type) {
    case 'long': return { '!': 'long', value };
    case 'float': return { '!': 'double', value };
    case 'decimal': return { '!': 'decimal', value: c.parseDecimal(value) };
    case 'timestamp': return { '!': 'timestamp', value };
    case 'bytes': return Buffer.from(value, 'hex');
    case 'void': return null;
    case 'table': return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toNative(v)]));
    case 'array': return value.map(toNative);
    default: return value;
  }
}

// amqplib decodes timestamps and decimals as {'!': type, value}.
function special(v) {
  if (v && typeof v === 'object' && !Buffer.isBuffer(v) && '!' in v) {
    if (v['!'] === 'timestamp') return c.typed('timestamp', v.value);
    if (v['!'] === 'decimal') return c.typed('decimal', c.decimalString(v.value.digits, v.value.places));
  }
  return null;
}

function received(msg) {
  const props = {};
  for (const [ours, theirs] of Object.entries(PROPS)) props[ours] = msg.properties[theirs];
  return c.message(msg.content, props, msg.properties.headers, msg.fields, special);
}

class Driver {
  constructor(url) {
    this.url = url;
    this.conns = {};
    this.chans = {};       // name -> {ch, closed}
    this.consumers = {};   // tag -> {entry, msgs, next, cancelled}
    this.returned = [];
  }

  ch(step) {
    const entry = this.chans[step.ch || 'ch'];
    if (entry.closed) throw entry.closed; // the broker's channel.close, as the 'error' event gave it
    return entry.ch;
  }

  async op_connect(step) {
    let url = step.url || this.url;
    if ('heartbeat' in step) url = c.withQuery(url, 'heartbeat', step.heartbeat);
    const until = Date.now() + (step.retry_for || 0) * 1000;
    for (;;) {
      try {
        const conn = await amqp.connect(url, { timeout: 15000 });
        conn.on('error', () => {});
        this.conns[step.conn || 'c'] = conn;
        return;
      } catch (err) {
        if (Date.now() > until) throw err;
        await c.sleep(500);
      }
    }
  }

  async op_close(step) { await this.conns[step.conn || 'c'].close(); }

  async openChannel(step, confirm) {
    const conn = this.conns[step.conn || 'c'];
    const ch = confirm ? await conn.createConfirmChannel() : await conn.createChannel();
    const entry = { ch, closed: null, conn: step.conn || 'c' };
    ch.on('error', (err) => { entry.closed = err; });
    ch.on('return', (msg) => this.returned.push({
      reply_code: msg.fields.replyCode, exchange: msg.fields.exchange,
      routing_key: msg.fields.routingKey, body: c.describeBody(msg.content),
    }));
    this.chans[step.ch || 'ch'] = entry;
  }

  async op_channel(step) { await this.openChannel(step, false); }

  // amqplib chooses confirm mode when a channel is created: replace the channel by a confirm one.
  async op_confirm(step) {
    const old = this.chans[step.ch || 'ch'];
    await old.ch.close();
    await this.openChannel({ ...step, conn: old.conn }, true);
  }

  async op_exchange_declare(step) {
    const ch = this.ch(step);
    if (step.passive) return void await ch.checkExchange(step.exchange);
    await ch.assertExchange(step.exchange, step.type || 'direct',
      { durable: !!step.durable, autoDelete: !!step.auto_delete });
  }

  async op_exchange_delete(step) { await this.ch(step).deleteExchange(step.exchange); }

  async op_queue_declare(step) {
    const ch = this.ch(step);
    const ok = step.passive ? await ch.checkQueue(step.queue) : await ch.assertQueue(step.queue, {
      durable: !!step.durable, exclusive: !!step.exclusive, autoDelete: !!step.auto_delete,
      arguments: step.args || {},
    });
    return { messages: ok.messageCount, consumers: ok.consumerCount };
  }

  async op_queue_bind(step) {
    await this.ch(step).bindQueue(step.queue, step.exchange, step.routing_key || '', step.args || {});
  }

  async op_queue_delete(step) { await this.ch(step).deleteQueue(step.queue); }

  async op_qos(step) { await this.ch(step).prefetch(step.prefetch); }

  async op_publish(step) {
    const ch = this.ch(step);
    const options = { mandatory: !!step.mandatory };
    for (const [k, v] of Object.entries(step.props || {})) {
      if (k === 'headers') {
        options.headers = Object.fromEntries(Object.entries(v).map(([h, x]) => [h, toNative(x)]));
      } else {
        options[PROPS[k]] = v;
      }
    }
    ch.publish(step.exchange, step.routing_key, c.makeBody(step.body), options, () => {});
    return 'ok';
  }

  async op_wait_confirms(step) {
    await this.ch(step).waitForConfirms();
    return 'ok';
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
    while (!(msg = await ch.get(step.queue, { noAck: ack === 'noack' }))) {
      if (Date.now() > until) return 'empty';
      await c.sleep(50);
    }
    if (ack === 'ack') ch.ack(msg);
    else if (ack === 'reject') ch.reject(msg, false);
    else if (ack === 'nack') ch.nack(msg, false, false);
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
    const ch = this.ch(step);
    const log = { ch, msgs: [], next: 0, cancelled: false };
    this.consumers[step.tag] = log;
    await ch.consume(step.queue, (msg) => {
      if (msg === null) log.cancelled = true; // amqplib's way of saying basic.cancel from the broker
      else log.msgs.push(msg);
    }, { noAck: !!step.no_ack, consumerTag: step.tag });
  }

  async op_deliveries(step) {
    const log = this.consumers[step.tag];
    await c.waitFor(() => log.msgs.length >= step.count, step.timeout || 5);
    await c.sleep((step.settle || 0) * 1000);
    return log.msgs.map((m) => c.describeBody(m.content));
  }

  async op_ack(step) {
    const log = this.consumers[step.tag];
    log.ch.ack(log.msgs[log.next++]);
  }

  async op_cancel(step) { await this.consumers[step.tag].ch.cancel(step.tag); }

  async op_cancelled(step) {
    const log = this.consumers[step.tag];
    await c.waitFor(() => log.cancelled, step.timeout || 5);
    return log.cancelled;
  }

  async op_sleep(step) { await c.sleep(step.seconds * 1000); }

  async op_sync(step) {
    try {
      await this.ch(step).checkExchange('amq.direct');
    } catch (err) {
      await c.sleep(50); // the 'error' event with the reason may follow the rejection
      this.ch(step);
      throw err;
    }
  }
}

c.main((url) => new Driver(url));
