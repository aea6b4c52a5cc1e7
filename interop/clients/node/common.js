// Shared by the node drivers: the script loop, bodies, typed header values, and a base Driver
// with every operation that only waits or polls. Same protocol as the Python drivers (see ../PROTOCOL.md).
'use strict';
const crypto = require('node:crypto');

function makeBody(spec) {
  if (spec !== null && typeof spec === 'object') {
    const buf = Buffer.alloc(spec.size);
    for (let i = 0; i < spec.size; i++) buf[i] = i % 251;
    return buf;
  }
  return Buffer.from(String(spec ?? ''), 'utf8');
}

function describeBody(body) {
  const buf = Buffer.from(body);
  if (buf.length <= 200) {
    const text = buf.toString('utf8');
    if (Buffer.from(text, 'utf8').equals(buf)) return text;
  }
  return { len: buf.length, sha256: crypto.createHash('sha256').update(buf).digest('hex') };
}

function typed(type, value) { return { type, value }; }

// A received header value as typed JSON. `special` lets a driver handle library-specific shapes.
function fromNative(v, special) {
  const s = special && special(v);
  if (s) return s;
  if (v === null || v === undefined) return typed('void', null);
  if (typeof v === 'boolean') return typed('bool', v);
  if (typeof v === 'bigint') return typed('int', Number(v));
  if (typeof v === 'number') return Number.isInteger(v) ? typed('int', v) : typed('float', v);
  if (typeof v === 'string') return typed('str', v);
  if (v instanceof Date) return typed('timestamp', Math.floor(v.getTime() / 1000));
  if (Buffer.isBuffer(v) || v instanceof Uint8Array) return typed('bytes', Buffer.from(v).toString('hex'));
  if (Array.isArray(v)) return typed('array', v.map((x) => fromNative(x, special)));
  const out = {};
  for (const [k, x] of Object.entries(v)) out[k] = fromNative(x, special);
  return typed('table', out);
}

// Typed script value -> what the library encodes as that type; `special` maps the types a
// library takes in its own shape (type -> function of the value).
function toNative({ type, value }, special) {
  if (type in special) return special[type](value);
  switch (type) {
    case 'bytes': return Buffer.from(value, 'hex');
    case 'void': return null;
    case 'table': return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toNative(v, special)]));
    case 'array': return value.map((v) => toNative(v, special));
    default: return value;
  }
}

// Script property names -> the camelCase names both libraries use.
const PROPS = {
  content_type: 'contentType', content_encoding: 'contentEncoding', delivery_mode: 'deliveryMode',
  priority: 'priority', correlation_id: 'correlationId', reply_to: 'replyTo', expiration: 'expiration',
  message_id: 'messageId', timestamp: 'timestamp', type: 'type', user_id: 'userId', app_id: 'appId',
};

// A publish step's properties in the library's names, leaving out (and naming) the header types
// in `unsupported`.
function properties(props, special, unsupported = new Set()) {
  const out = {};
  const unsent = [];
  for (const [k, v] of Object.entries(props || {})) {
    if (k !== 'headers') {
      out[PROPS[k]] = v;
      continue;
    }
    out.headers = {};
    for (const [h, x] of Object.entries(v)) {
      if (unsupported.has(x.type)) unsent.push(h);
      else out.headers[h] = toNative(x, special);
    }
  }
  return { props: out, unsent };
}

// A publish's result: 'ok', or which headers the library could not express.
function sent(unsent) { return unsent.length ? { unsent: unsent.sort() } : 'ok'; }

// A received message's properties under the script's names.
function propsOf(properties) {
  return Object.fromEntries(Object.entries(PROPS).map(([ours, theirs]) => [ours, properties[theirs]]));
}

// Decimal digits with `places` decimals, as Python's str(Decimal) writes them.
function decimalString(digits, places) {
  const neg = digits < 0;
  let s = String(Math.abs(digits)).padStart(places + 1, '0');
  if (places > 0) s = s.slice(0, s.length - places) + '.' + s.slice(s.length - places);
  return (neg ? '-' : '') + s;
}

function parseDecimal(text) {
  const [whole, frac = ''] = text.split('.');
  return { places: frac.length, digits: parseInt(whole + frac, 10) };
}

function message(body, props, headers, fields, special) {
  const clean = {};
  for (const [k, v] of Object.entries(props)) if (v !== undefined && v !== null) clean[k] = v;
  const hs = {};
  for (const [k, v] of Object.entries(headers || {})) hs[k] = fromNative(v, special);
  return {
    body: describeBody(body), props: clean, headers: hs, redelivered: !!fields.redelivered,
    exchange: fields.exchange || '', routing_key: fields.routingKey || '',
  };
}

function errorCode(err) {
  for (const key of ['code', 'replyCode']) {
    if (Number.isInteger(err?.[key]) && err[key] >= 300 && err[key] < 600) return err[key];
  }
  const text = String(err?.message ?? err);
  if (/ACCESS[-_]REFUSED/.test(text) && /login|auth|PLAIN/i.test(text)) return 403;
  const m = text.match(/\b([345]\d\d)\b/);
  if (m) return parseInt(m[1], 10);
  if (/auth/i.test(text)) return 'auth';
  if (/timeout|timed out/i.test(text)) return 'timeout';
  return 'closed';
}

function sleep(ms) { return new Promise((r) => setTimeout(r, ms)); }

async function waitFor(pred, seconds) {
  const until = Date.now() + seconds * 1000;
  while (!pred() && Date.now() < until) await sleep(20);
}

function withQuery(url, key, value) {
  const u = new URL(url);
  u.searchParams.set(key, String(value));
  return u.toString();
}

class Unsupported extends Error {}

// Named connections, channels and consumers, and the operations that only wait or poll. A driver
// adds its library's calls, and for get steps: fetch (one basic.get, falsy when empty),
// settle (ack/reject/nack as asked), received (the report) and deliveredBody (a delivery's bytes).
class Driver {
  constructor(url) {
    this.url = url;
    this.conns = {};
    this.chans = {};
    this.consumers = {}; // tag -> {msgs, next, cancelled, ...}
    this.returned = [];
  }

  conn(step) { return this.conns[step.conn || 'c']; }

  ch(step) { return this.chans[step.ch || 'ch']; }

  // Open the step's connection with attempt(url), retrying refused connects for retry_for seconds.
  async connect(step, attempt) {
    let url = step.url || this.url;
    if ('heartbeat' in step) url = withQuery(url, 'heartbeat', step.heartbeat);
    const until = Date.now() + (step.retry_for || 0) * 1000;
    for (;;) {
      try {
        this.conns[step.conn || 'c'] = await attempt(url);
        return;
      } catch (err) {
        if (Date.now() > until) throw err;
        await sleep(500);
      }
    }
  }

  recordReturn(replyCode, exchange, routingKey, body) {
    this.returned.push({
      reply_code: replyCode, exchange, routing_key: routingKey, body: describeBody(body),
    });
  }

  async op_close(step) { await this.conn(step).close(); }

  async op_returns(step) {
    await waitFor(() => this.returned.length >= step.count, step.timeout || 5);
    await sleep((step.settle || 0) * 1000);
    return [...this.returned];
  }

  async op_get(step) {
    const ch = this.ch(step);
    const ack = step.ack || 'ack';
    const until = Date.now() + (step.wait || 0) * 1000;
    let msg;
    while (!(msg = await this.fetch(ch, step.queue, ack === 'noack'))) {
      if (Date.now() > until) return 'empty';
      await sleep(50);
    }
    await this.settle(ch, msg, ack);
    return this.received(msg);
  }

  async op_get_all(step) {
    const out = [];
    for (;;) {
      const msg = await this.op_get({ ...step, wait: 0 });
      if (msg === 'empty') return out;
      out.push(msg.body);
    }
  }

  async op_deliveries(step) {
    const log = this.consumers[step.tag];
    await waitFor(() => log.msgs.length >= step.count, step.timeout || 5);
    await sleep((step.settle || 0) * 1000);
    return log.msgs.map((m) => describeBody(this.deliveredBody(m)));
  }

  async op_cancelled(step) {
    const log = this.consumers[step.tag];
    await waitFor(() => log.cancelled, step.timeout || 5);
    return log.cancelled;
  }

  async op_sleep(step) { await sleep(step.seconds * 1000); }
}

// The step in progress, so a driver whose event loop drains mid-step can say where it stopped.
const progress = { step: -1, op: null, observed: null };

async function runSteps(driver, steps) {
  const observed = {};
  progress.observed = observed;
  for (let i = 0; i < steps.length; i++) {
    const step = steps[i];
    progress.step = i;
    progress.op = step.op;
    process.stderr.write(`interop-step ${i} ${step.op}\n`); // names the step if we time out
    const fn = driver['op_' + step.op];
    try {
      if (!fn) throw new Unsupported(step.op);
      const value = await fn.call(driver, step);
      if ('save' in step) observed[step.save] = value === undefined ? 'ok' : value;
    } catch (err) {
      if (err instanceof Unsupported) {
        observed._unsupported = `${step.op} not supported by this client`;
        break;
      }
      const e = { error: errorCode(err), detail: String(err?.message ?? err).slice(0, 300) };
      if ('save' in step) {
        observed[step.save] = e;
      } else {
        observed._abort = { step: i, op: step.op, ...e };
        break;
      }
    }
  }
  return observed;
}

// Entry point: node DRIVER.js SCENARIO URL, with the script as JSON on stdin.
function main(makeDriver) {
  const [scenario, url] = process.argv.slice(2);
  let input = '';
  let reported = false;
  const report = (observed) => {
    reported = true;
    process.stdout.write(JSON.stringify({ scenario, observed }) + '\n', () => process.exit(0));
  };
  // Node exits quietly when nothing is left to wait for: a library promise that will never
  // settle (no reply, no timer) ends here instead of in a timeout.
  process.on('beforeExit', () => {
    if (reported) return;
    const observed = progress.observed || {};
    observed._abort = { step: progress.step, op: progress.op, error: 'hang',
      detail: 'no reply: the client library stopped waiting without settling' };
    report(observed);
  });
  process.stdin.on('data', (d) => { input += d; });
  process.stdin.on('end', async () => {
    let observed;
    // Stray errors from library internals must not crash the report.
    process.on('unhandledRejection', () => {});
    process.on('uncaughtException', () => {});
    try {
      observed = await runSteps(makeDriver(url), JSON.parse(input).steps);
    } catch (err) {
      observed = { _crash: String(err?.stack ?? err).slice(-2000) };
    }
    report(observed);
  });
}

module.exports = {
  describeBody, fromNative, decimalString, parseDecimal, message, makeBody, properties, sent, propsOf, typed,
  sleep, Driver, main,
};
