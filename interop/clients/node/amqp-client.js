// Driver for @cloudamqp/amqp-client (npm).
'use strict';
const { AMQPClient } = require('@cloudamqp/amqp-client');
const c = require('./common');

// The library picks field types from JS types: it has no way to send a decimal, and writes a
// non-integer number as a 32-bit float.
const UNSUPPORTED = new Set(['decimal']);
const SPECIAL = { long: (value) => BigInt(value), timestamp: (value) => new Date(value * 1000) };

// The library leaves an empty body undefined.
function bodyOf(msg) { return msg.body || Buffer.alloc(0); }

class Driver extends c.Driver {
  constructor(url) {
    super(url);
    this.confirms = {}; // channel name -> publish promises
  }

  async op_connect(step) { await this.connect(step, (url) => new AMQPClient(url).connect()); }

  async op_channel(step) {
    const ch = await this.conn(step).channel();
    ch.onReturn = (msg) => this.recordReturn(msg.replyCode, msg.exchange, msg.routingKey, bodyOf(msg));
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
    const { props, unsent } = c.properties(step.props, SPECIAL, UNSUPPORTED);
    if ('timestamp' in props) props.timestamp = new Date(props.timestamp * 1000);
    // In confirm mode the promise settles with the broker's ack; otherwise once written.
    const done = this.ch(step).basicPublish(step.exchange, step.routing_key, c.makeBody(step.body), props,
      !!step.mandatory);
    const pending = this.confirms[step.ch || 'ch'];
    if (pending) pending.push(done.catch((e) => e));
    else await done;
    return c.sent(unsent);
  }

  async op_wait_confirms(step) {
    const results = await Promise.all(this.confirms[step.ch || 'ch'] || []);
    const failed = results.filter((r) => r instanceof Error);
    return failed.length ? `${failed.length} failed: ${failed[0].message}` : 'ok';
  }

  fetch(ch, queue, noAck) { return ch.basicGet(queue, { noAck }); }

  async settle(ch, msg, ack) {
    if (ack === 'ack') await msg.ack();
    else if (ack === 'reject') await msg.reject(false);
    else if (ack === 'nack') await msg.nack(false);
  }

  received(msg) {
    const props = c.propsOf(msg.properties);
    if (props.timestamp instanceof Date) props.timestamp = Math.floor(props.timestamp.getTime() / 1000);
    return c.message(bodyOf(msg), props, msg.properties.headers,
      { redelivered: msg.redelivered, exchange: msg.exchange, routingKey: msg.routingKey });
  }

  deliveredBody(msg) { return bodyOf(msg); }

  async op_consume(step) {
    const log = { msgs: [], next: 0, cancelled: false };
    this.consumers[step.tag] = log;
    log.consumer = await this.ch(step).basicConsume(step.queue, { tag: step.tag, noAck: !!step.no_ack },
      (msg) => { log.msgs.push(msg); });
    // wait() rejects when the broker cancels the consumer, resolves on our own cancel.
    log.consumer.wait().catch(() => { log.cancelled = true; });
  }

  async op_ack(step) {
    const log = this.consumers[step.tag];
    await log.msgs[log.next++].ack();
  }

  async op_cancel(step) { await this.consumers[step.tag].consumer.cancel(); }

  async op_sync(step) { await this.ch(step).exchangeDeclare('amq.direct', 'direct', { passive: true }); }
}

c.main((url) => new Driver(url));
