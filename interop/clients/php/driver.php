<?php
// Driver for php-amqplib (Debian php-amqplib). Usage: php driver.php SCENARIO URL < script.json
// Same protocol as the other drivers (see ../PROTOCOL.md).
declare(strict_types=1);

require_once '/usr/share/php/PhpAmqpLib/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Exception\AMQPBasicCancelException;
use PhpAmqpLib\Exception\AMQPProtocolException;
use PhpAmqpLib\Exception\AMQPTimeoutException;
use PhpAmqpLib\Message\AMQPMessage;
use PhpAmqpLib\Wire\AMQPAbstractCollection as C;
use PhpAmqpLib\Wire\AMQPArray;
use PhpAmqpLib\Wire\AMQPDecimal;
use PhpAmqpLib\Wire\AMQPTable;

final class Unsupported extends Exception {}

const PROPS = ['content_type', 'content_encoding', 'delivery_mode', 'priority', 'correlation_id', 'reply_to',
    'expiration', 'message_id', 'timestamp', 'type', 'user_id', 'app_id'];

function make_body($spec): string {
    if (is_array($spec)) {
        $out = '';
        for ($i = 0; $i < $spec['size']; $i++) $out .= chr($i % 251);
        return $out;
    }
    return (string)($spec ?? '');
}

function describe_body(string $body) {
    if (strlen($body) <= 200 && mb_check_encoding($body, 'UTF-8')) return $body;
    return ['len' => strlen($body), 'sha256' => hash('sha256', $body)];
}

function typed(string $type, $value): array { return ['type' => $type, 'value' => $value]; }

// Typed script values -> [php value, AMQPTable type constant].
function to_native(array $v): array {
    $value = $v['value'];
    switch ($v['type']) {
        case 'str': return [$value, C::T_STRING_LONG];
        case 'int': return [$value, C::T_INT_LONG];
        case 'long': return [$value, C::T_INT_LONGLONG];
        case 'bool': return [$value, C::T_BOOL];
        case 'float': throw new Unsupported('float'); // no double type in its 0-9-1 table codec
        case 'decimal':
            [$whole, $frac] = array_pad(explode('.', $value), 2, '');
            return [new AMQPDecimal((int)($whole . $frac), strlen($frac)), C::T_DECIMAL];
        case 'timestamp': return [$value, C::T_TIMESTAMP];
        case 'void': return [null, C::T_VOID];
        case 'bytes': return [hex2bin($value), C::T_BYTES];
        case 'table':
            $t = new AMQPTable();
            foreach ($value as $k => $x) { [$n, $type] = to_native($x); $t->set($k, $n, $type); }
            return [$t, C::T_TABLE];
        case 'array':
            $a = new AMQPArray();
            foreach ($value as $x) { [$n, $type] = to_native($x); $a->push($n, $type); }
            return [$a, C::T_ARRAY];
    }
    throw new Unsupported('header type ' . $v['type']);
}

// A received AMQPTable/AMQPArray keeps each value's type (a T_* constant): report from that.
function from_wire(array $pair) {
    [$type, $value] = $pair;
    switch ($type) {
        case C::T_STRING_LONG: case C::T_STRING_SHORT: return typed('str', $value);
        case C::T_INT_SHORTSHORT: case C::T_INT_SHORTSHORT_U: case C::T_INT_SHORT: case C::T_INT_SHORT_U:
        case C::T_INT_LONG: case C::T_INT_LONG_U: case C::T_INT_LONGLONG: case C::T_INT_LONGLONG_U:
            return typed('int', (int)$value);
        case C::T_FLOAT: case C::T_DOUBLE: return typed('float', (float)$value);
        case C::T_DECIMAL: return typed('decimal', decimal_string($value));
        case C::T_TIMESTAMP: return typed('timestamp', (int)$value);
        case C::T_VOID: return typed('void', null);
        case C::T_BOOL: return typed('bool', (bool)$value);
        case C::T_BYTES: return typed('bytes', bin2hex((string)$value));
        case C::T_TABLE:
            $out = [];
            foreach ($value as $k => $x) $out[$k] = from_wire($x);
            return typed('table', (object)$out);
        case C::T_ARRAY:
            return typed('array', array_values(array_map('from_wire', $value)));
    }
    return typed('str', (string)$value);
}

function decimal_string(AMQPDecimal $d): string {
    $n = (string)abs($d->getE() === 0 ? $d->getN() : $d->getN());
    $places = $d->getE();
    $n = str_pad($n, $places + 1, '0', STR_PAD_LEFT);
    $s = $places > 0 ? substr($n, 0, -$places) . '.' . substr($n, -$places) : $n;
    return ($d->getN() < 0 ? '-' : '') . $s;
}

function raw_table($collection): array {
    // getNativeData() loses the wire types; the raw [type, value] pairs are what arrived.
    $r = new ReflectionProperty(get_class($collection), 'data');
    $r->setAccessible(true);
    $data = $r->getValue($collection);
    $out = [];
    foreach ($data as $k => [$type, $value]) {
        $out[$k] = [$type, is_object($value) && ($value instanceof AMQPTable || $value instanceof AMQPArray)
            ? raw_table($value) : $value];
    }
    return $out;
}

function received(AMQPMessage $m): array {
    $props = [];
    foreach (PROPS as $k) if ($m->has($k)) $props[$k] = $m->get($k);
    $headers = [];
    if ($m->has('application_headers')) {
        foreach (raw_table($m->get('application_headers')) as $k => $pair) $headers[$k] = from_wire($pair);
    }
    return ['body' => describe_body($m->getBody()), 'props' => (object)$props, 'headers' => (object)$headers,
        'redelivered' => (bool)$m->isRedelivered(), 'exchange' => (string)$m->getExchange(),
        'routing_key' => (string)$m->getRoutingKey()];
}

function error_code(Throwable $e) {
    $code = $e->getCode();
    if (is_int($code) && $code >= 300 && $code < 600) return $code;
    if (preg_match('/ACCESS_REFUSED|ACCESS-REFUSED/', $e->getMessage())) return 403;
    if ($e instanceof AMQPTimeoutException) return 'timeout';
    return 'closed';
}

final class Driver {
    private array $conns = [];
    private array $chans = [];
    private array $consumers = [];
    private array $returned = [];
    private array $closed = [];

    public function __construct(private string $url) {}

    private function ch(array $s) {
        $name = $s['ch'] ?? 'ch';
        if (isset($this->closed[$name])) throw $this->closed[$name]; // the broker's close, as first seen
        return $this->chans[$name];
    }

    // Run a channel call, remembering a broker channel.close so later calls report the same code.
    private function guard(array $s, callable $fn) {
        try {
            return $fn($this->ch($s));
        } catch (AMQPProtocolException $e) {
            $this->closed[$s['ch'] ?? 'ch'] = $e;
            throw $e;
        }
    }

    // Read frames for a while: returns, deliveries, cancels, and heartbeats only move in here.
    private function pump(array $s, float $seconds): void {
        $until = microtime(true) + $seconds;
        do {
            $conn = $this->conns[$s['conn'] ?? 'c'];
            $conn->checkHeartBeat();
            foreach ($this->chans as $name => $ch) {
                if (!$ch->is_open() || ($this->chanConn[$name] ?? 'c') !== ($s['conn'] ?? 'c')) continue;
                try {
                    $ch->wait(null, true, 0.02);
                } catch (AMQPTimeoutException $e) {
                } catch (AMQPBasicCancelException $e) {
                    if (isset($this->consumers[$e->consumerTag])) $this->consumers[$e->consumerTag]['cancelled'] = true;
                }
            }
            usleep(10000);
        } while (microtime(true) < $until);
    }

    private array $chanConn = [];

    public function op_connect(array $s) {
        $u = parse_url($s['url'] ?? $this->url);
        $path = $u['path'] ?? '/';
        $vhost = ($path === '/' || $path === '') ? '/' : urldecode(substr($path, 1));
        $hb = (int)($s['heartbeat'] ?? 0);
        $until = microtime(true) + ($s['retry_for'] ?? 0);
        while (true) {
            try {
                $this->conns[$s['conn'] ?? 'c'] = new AMQPStreamConnection(
                    $u['host'], $u['port'] ?? 5672, urldecode($u['user'] ?? 'guest'), urldecode($u['pass'] ?? 'guest'),
                    $vhost, false, 'AMQPLAIN', null, 'en_US', 15.0, max(15.0, 2.0 * $hb + 1), null, false, $hb);
                return null;
            } catch (Throwable $e) {
                if (microtime(true) > $until || error_code($e) === 403) throw $e;
                usleep(500000);
            }
        }
    }

    public function op_close(array $s) { $this->conns[$s['conn'] ?? 'c']->close(); }

    public function op_channel(array $s) {
        $ch = $this->conns[$s['conn'] ?? 'c']->channel();
        $ch->set_return_listener(function ($code, $text, $exchange, $rk, AMQPMessage $m) {
            $this->returned[] = ['reply_code' => $code, 'exchange' => $exchange, 'routing_key' => $rk,
                'body' => describe_body($m->getBody())];
        });
        $name = $s['ch'] ?? 'ch';
        $this->chans[$name] = $ch;
        $this->chanConn[$name] = $s['conn'] ?? 'c';
        unset($this->closed[$name]);
    }

    public function op_exchange_declare(array $s) {
        $this->guard($s, fn($ch) => $ch->exchange_declare($s['exchange'], $s['type'] ?? 'direct',
            (bool)($s['passive'] ?? false), (bool)($s['durable'] ?? false), (bool)($s['auto_delete'] ?? false)));
    }

    public function op_exchange_delete(array $s) { $this->guard($s, fn($ch) => $ch->exchange_delete($s['exchange'])); }

    public function op_queue_declare(array $s) {
        $args = new AMQPTable($s['args'] ?? []);
        [, $messages, $consumers] = $this->guard($s, fn($ch) => $ch->queue_declare($s['queue'],
            (bool)($s['passive'] ?? false), (bool)($s['durable'] ?? false), (bool)($s['exclusive'] ?? false),
            (bool)($s['auto_delete'] ?? false), false, $args));
        return ['messages' => $messages, 'consumers' => $consumers];
    }

    public function op_queue_bind(array $s) {
        $this->guard($s, fn($ch) => $ch->queue_bind($s['queue'], $s['exchange'], $s['routing_key'] ?? '', false,
            new AMQPTable($s['args'] ?? [])));
    }

    public function op_queue_delete(array $s) { $this->guard($s, fn($ch) => $ch->queue_delete($s['queue'])); }
    public function op_qos(array $s) { $this->guard($s, fn($ch) => $ch->basic_qos(0, $s['prefetch'], false)); }

    private array $nacked = [];

    public function op_confirm(array $s) {
        $name = $s['ch'] ?? 'ch';
        $this->nacked[$name] = 0;
        $this->guard($s, function ($ch) use ($name) {
            $ch->set_nack_handler(function () use ($name) { $this->nacked[$name]++; });
            $ch->confirm_select();
        });
    }

    public function op_publish(array $s) {
        $props = [];
        $unsent = [];
        foreach ($s['props'] ?? [] as $k => $v) {
            if ($k === 'headers') {
                $t = new AMQPTable();
                foreach ($v as $h => $x) {
                    try {
                        [$n, $type] = to_native($x);
                        $t->set($h, $n, $type);
                    } catch (Unsupported $e) {
                        $unsent[] = $h;
                    }
                }
                $props['application_headers'] = $t;
            } else {
                $props[$k] = $v;
            }
        }
        $msg = new AMQPMessage(make_body($s['body'] ?? ''), $props);
        $this->guard($s, fn($ch) => $ch->basic_publish($msg, $s['exchange'], $s['routing_key'],
            (bool)($s['mandatory'] ?? false)));
        sort($unsent);
        return $unsent ? ['unsent' => $unsent] : 'ok';
    }

    public function op_wait_confirms(array $s) {
        $this->guard($s, fn($ch) => $ch->wait_for_pending_acks_returns(10));
        $n = $this->nacked[$s['ch'] ?? 'ch'] ?? 0;
        return $n ? "$n nacked" : 'ok';
    }

    public function op_returns(array $s) {
        $until = microtime(true) + ($s['timeout'] ?? 5);
        while (count($this->returned) < $s['count'] && microtime(true) < $until) $this->pump($s, 0.05);
        $this->pump($s, (float)($s['settle'] ?? 0));
        return $this->returned;
    }

    public function op_get(array $s) {
        $ack = $s['ack'] ?? 'ack';
        $until = microtime(true) + ($s['wait'] ?? 0);
        while (!($m = $this->guard($s, fn($ch) => $ch->basic_get($s['queue'], $ack === 'noack')))) {
            if (microtime(true) > $until) return 'empty';
            usleep(50000);
        }
        $tag = $m->getDeliveryTag();
        $this->guard($s, function ($ch) use ($ack, $tag) {
            if ($ack === 'ack') $ch->basic_ack($tag);
            elseif ($ack === 'reject') $ch->basic_reject($tag, false);
            elseif ($ack === 'nack') $ch->basic_nack($tag, false, false);
        });
        return received($m);
    }

    public function op_get_all(array $s) {
        $out = [];
        while (($m = $this->op_get(['wait' => 0] + $s)) !== 'empty') $out[] = $m['body'];
        return $out;
    }

    public function op_consume(array $s) {
        $tag = $s['tag'];
        $this->consumers[$tag] = ['ch' => $this->ch($s), 'msgs' => [], 'next' => 0, 'cancelled' => false];
        $this->guard($s, fn($ch) => $ch->basic_consume($s['queue'], $tag, false, (bool)($s['no_ack'] ?? false),
            false, false, function (AMQPMessage $m) use ($tag) { $this->consumers[$tag]['msgs'][] = $m; }));
    }

    public function op_deliveries(array $s) {
        $tag = $s['tag'];
        $until = microtime(true) + ($s['timeout'] ?? 5);
        while (count($this->consumers[$tag]['msgs']) < $s['count'] && microtime(true) < $until) $this->pump($s, 0.05);
        $this->pump($s, (float)($s['settle'] ?? 0));
        return array_map(fn($m) => describe_body($m->getBody()), $this->consumers[$tag]['msgs']);
    }

    public function op_ack(array $s) {
        $log = &$this->consumers[$s['tag']];
        $log['ch']->basic_ack($log['msgs'][$log['next']++]->getDeliveryTag());
    }

    public function op_cancel(array $s) { $this->consumers[$s['tag']]['ch']->basic_cancel($s['tag']); }

    public function op_cancelled(array $s) {
        $until = microtime(true) + ($s['timeout'] ?? 5);
        while (!$this->consumers[$s['tag']]['cancelled'] && microtime(true) < $until) $this->pump($s, 0.05);
        return $this->consumers[$s['tag']]['cancelled'];
    }

    public function op_sleep(array $s) { $this->pump($s, (float)$s['seconds']); } // heartbeats go out from here

    public function op_sync(array $s) {
        $this->guard($s, fn($ch) => $ch->exchange_declare('amq.direct', 'direct', true));
    }
}

function main(array $argv): void {
    [, $scenario, $url] = $argv;
    $steps = json_decode(stream_get_contents(STDIN), true)['steps'];
    $driver = new Driver($url);
    $observed = [];
    foreach ($steps as $i => $step) {
        $method = 'op_' . $step['op'];
        fwrite(STDERR, "interop-step $i {$step['op']}\n"); // names the step if we time out
        try {
            if (!method_exists($driver, $method)) throw new Unsupported($step['op']);
            $result = $driver->$method($step);
            if (isset($step['save'])) $observed[$step['save']] = $result ?? 'ok';
        } catch (Unsupported $e) {
            $observed['_unsupported'] = $step['op'] . ' not supported by this client';
            break;
        } catch (Throwable $e) {
            $err = ['error' => error_code($e), 'detail' => substr(get_class($e) . ': ' . $e->getMessage(), 0, 300)];
            if (isset($step['save'])) {
                $observed[$step['save']] = $err;
                continue;
            }
            $observed['_abort'] = $err + ['step' => $i, 'op' => $step['op']];
            break;
        }
    }
    fwrite(STDOUT, json_encode(['scenario' => $scenario, 'observed' => (object)$observed],
        JSON_UNESCAPED_UNICODE | JSON_INVALID_UTF8_SUBSTITUTE) . "\n");
    fflush(STDOUT);
    posix_kill(getmypid(), 9); // skip the library's destructors (they may block on a closed socket)
}

main($argv);
