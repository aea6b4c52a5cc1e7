// Driver for amqplib (npm), promise API.
'use strict';
const amqp = require('amqplib');
const c = require('./common');

// What amqplib encodes as these field types: {'!': type} picks the exotic ones.
const SPECIAL = {
  long: (value) => ({ '!': 'long', value }),
  float: (value) => ({ '!': 'double', value }),
  decimal: (value) => ({ '!': 'decimal', value: c.parseDecimal(value) }),
  timestamp: (value) => ({ '!': 'timestamp', value }),
};

// amqplib decodes timestamps and decimals as {'!': type, value}.
function special(v) {
  if (v && typeof v === 'object' && !Buffer.isBuffer(v) && '!' in v) {
    if (v['!'] === 'timestamp') return c.typed('timestamp', v.value);
    if (v['!'] === 'decimal') return c.typed('decimal', c.decimalString(v.value.digits, v.value.places));
  }
  return null;
}

class Driver extends c.Driver {
  // chans hold {ch, closed, conn}: the channel, the broker's close reason, its connection's name.
  ch(step) {
    const entry = super.ch(step);
    if (entry.closed) throw entry.closed; // the broker's channel.close, as the 'error' event gave it
    return entry.ch;
  }

  async op_connect(step) {
    await this.connect(step, async (url) => {
      const conn = await amqp.connect(url, { timeout: 15000 });
      conn.on('error', () => {});
      return conn;
    });
  }

  async openChannel(step, confirm) {
    const conn = this.conn(step);
    const ch = confirm ? await conn.createConfirmChannel() : await conn.createChannel();
    const entry = { ch, closed: null, conn: step.conn || 'c' };
    ch.on('error', (err) => { entry.closed = err; });
    ch.on('return', (msg) => this.recordReturn(msg.fields.replyCode, msg.fields.exchange,
      msg.fields.routingKey, msg.content));
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
    const { props, unsent } = c.properties(step.props, SPECIAL);
    this.ch(step).publish(step.exchange, step.routing_key, c.makeBody(step.body),
      { mandatory: !!step.mandatory, ...props }, () => {});
    return c.sent(unsent);
  }

  async op_wait_confirms(step) {
    await this.ch(step).waitForConfirms();
    return 'ok';
  }

  fetch(ch, queue, noAck) { return ch.get(queue, { noAck }); }

  settle(ch, msg, ack) {
    if (ack === 'ack') ch.ack(msg);
    else if (ack === 'reject') ch.reject(msg, false);
    else if (ack === 'nack') ch.nack(msg, false, false);
  }

  received(msg) {
    return c.message(msg.content, c.propsOf(msg.properties), msg.properties.headers, msg.fields, special);
  }

  deliveredBody(msg) { return msg.content; }

  async op_consume(step) {
    const ch = this.ch(step);
    const log = { ch, msgs: [], next: 0, cancelled: false };
    this.consumers[step.tag] = log;
    await ch.consume(step.queue, (msg) => {
      if (msg === null) log.cancelled = true; // amqplib's way of saying basic.cancel from the broker
      else log.msgs.push(msg);
    }, { noAck: !!step.no_ack, consumerTag: step.tag });
  }

  async op_ack(step) {
    const log = this.consumers[step.tag];
    log.ch.ack(log.msgs[log.next++]);
  }

  async op_cancel(step) { await this.consumers[step.tag].ch.cancel(step.tag); }

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
