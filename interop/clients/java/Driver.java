import com.rabbitmq.client.*;

import java.io.IOException;
import java.math.BigDecimal;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.util.*;
import java.util.concurrent.CopyOnWriteArrayList;

/** Driver for the RabbitMQ Java client (Debian librabbitmq-client-java). See ../PROTOCOL.md. */
public final class Driver {
    static final class Unsupported extends RuntimeException {
        Unsupported(String op) { super(op + " not supported by this client"); }
    }

    static final class Log {
        final Channel ch;
        final List<Long> tags = new CopyOnWriteArrayList<>();
        final List<Object> bodies = new CopyOnWriteArrayList<>();
        int next;
        volatile boolean cancelled;
        Log(Channel ch) { this.ch = ch; }
    }

    final String url;
    final Map<String, Connection> conns = new HashMap<>();
    final Map<String, Channel> chans = new HashMap<>();
    final Map<String, Log> consumers = new HashMap<>();
    final List<Object> returned = new CopyOnWriteArrayList<>();

    Driver(String url) { this.url = url; }

    // --- bodies and typed values (same rules as interop/bodies.py) ---

    static byte[] makeBody(Object spec) {
        if (spec instanceof Map<?, ?> m) {
            int n = ((Number) m.get("size")).intValue();
            byte[] b = new byte[n];
            for (int k = 0; k < n; k++) b[k] = (byte) (k % 251);
            return b;
        }
        return spec == null ? new byte[0] : ((String) spec).getBytes(StandardCharsets.UTF_8);
    }

    static Object describeBody(byte[] body) {
        if (body == null) body = new byte[0];
        if (body.length <= 200) {
            String text = new String(body, StandardCharsets.UTF_8);
            if (Arrays.equals(text.getBytes(StandardCharsets.UTF_8), body)) return text;
        }
        try {
            byte[] d = MessageDigest.getInstance("SHA-256").digest(body);
            Map<String, Object> m = new LinkedHashMap<>();
            m.put("len", body.length);
            m.put("sha256", HexFormat.of().formatHex(d));
            return m;
        } catch (Exception e) {
            throw new RuntimeException(e);
        }
    }

    static Map<String, Object> typed(String type, Object value) {
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("type", type);
        m.put("value", value);
        return m;
    }

    @SuppressWarnings("unchecked")
    static Object toNative(Map<String, Object> v) {
        Object value = v.get("value");
        switch ((String) v.get("type")) {
            case "int": return ((Number) value).intValue();
            case "long": return ((Number) value).longValue();
            case "float": return ((Number) value).doubleValue();
            case "decimal": return new BigDecimal((String) value);
            case "timestamp": return new Date(((Number) value).longValue() * 1000);
            case "bytes": return HexFormat.of().parseHex((String) value);
            case "void": return null;
            case "table": {
                Map<String, Object> t = new LinkedHashMap<>();
                ((Map<String, Object>) value).forEach((k, x) -> t.put(k, toNative((Map<String, Object>) x)));
                return t;
            }
            case "array": {
                List<Object> l = new ArrayList<>();
                for (Object x : (List<Object>) value) l.add(toNative((Map<String, Object>) x));
                return l;
            }
            default: return value;
        }
    }

    static Object fromNative(Object v) {
        if (v == null) return typed("void", null);
        if (v instanceof Boolean) return typed("bool", v);
        if (v instanceof Byte || v instanceof Short || v instanceof Integer || v instanceof Long)
            return typed("int", ((Number) v).longValue());
        if (v instanceof Float || v instanceof Double) return typed("float", ((Number) v).doubleValue());
        if (v instanceof BigDecimal d) return typed("decimal", d.toPlainString());
        if (v instanceof Date d) return typed("timestamp", d.getTime() / 1000);
        if (v instanceof byte[] b) return typed("bytes", HexFormat.of().formatHex(b));
        if (v instanceof Map<?, ?> m) {
            Map<String, Object> out = new LinkedHashMap<>();
            m.forEach((k, x) -> out.put(String.valueOf(k), fromNative(x)));
            return typed("table", out);
        }
        if (v instanceof List<?> l) {
            List<Object> out = new ArrayList<>();
            for (Object x : l) out.add(fromNative(x));
            return typed("array", out);
        }
        return typed("str", v.toString()); // LongString and String
    }

    static Map<String, Object> received(GetResponse r) {
        return message(r.getBody(), r.getProps(), r.getEnvelope());
    }

    static Map<String, Object> message(byte[] body, AMQP.BasicProperties p, Envelope env) {
        Map<String, Object> props = new LinkedHashMap<>();
        putIf(props, "content_type", p.getContentType());
        putIf(props, "content_encoding", p.getContentEncoding());
        putIf(props, "delivery_mode", p.getDeliveryMode());
        putIf(props, "priority", p.getPriority());
        putIf(props, "correlation_id", p.getCorrelationId());
        putIf(props, "reply_to", p.getReplyTo());
        putIf(props, "expiration", p.getExpiration());
        putIf(props, "message_id", p.getMessageId());
        putIf(props, "timestamp", p.getTimestamp() == null ? null : p.getTimestamp().getTime() / 1000);
        putIf(props, "type", p.getType());
        putIf(props, "user_id", p.getUserId());
        putIf(props, "app_id", p.getAppId());
        Map<String, Object> headers = new LinkedHashMap<>();
        if (p.getHeaders() != null) p.getHeaders().forEach((k, v) -> headers.put(k, fromNative(v)));
        Map<String, Object> m = new LinkedHashMap<>();
        m.put("body", describeBody(body));
        m.put("props", props);
        m.put("headers", headers);
        m.put("redelivered", env != null && env.isRedeliver());
        m.put("exchange", env == null ? "" : env.getExchange());
        m.put("routing_key", env == null ? "" : env.getRoutingKey());
        return m;
    }

    static void putIf(Map<String, Object> m, String k, Object v) { if (v != null) m.put(k, v); }

    static Object errorCode(Throwable e) {
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (t instanceof AuthenticationFailureException || t instanceof PossibleAuthenticationFailureException)
                return t.getMessage() != null && t.getMessage().contains("403") ? 403 : "auth";
            if (t instanceof ShutdownSignalException s) {
                Object reason = s.getReason();
                if (reason instanceof AMQP.Channel.Close c) return c.getReplyCode();
                if (reason instanceof AMQP.Connection.Close c) return c.getReplyCode();
            }
            if (t instanceof java.util.concurrent.TimeoutException) return "timeout";
        }
        return "closed";
    }

    // --- steps ---

    static String str(Map<String, Object> s, String k, String def) {
        Object v = s.get(k);
        return v == null ? def : (String) v;
    }

    static double num(Map<String, Object> s, String k, double def) {
        Object v = s.get(k);
        return v == null ? def : ((Number) v).doubleValue();
    }

    static boolean flag(Map<String, Object> s, String k) { return Boolean.TRUE.equals(s.get(k)); }

    @SuppressWarnings("unchecked")
    static Map<String, Object> args(Map<String, Object> s) {
        Map<String, Object> a = (Map<String, Object>) s.get("args");
        if (a == null) return null;
        Map<String, Object> out = new HashMap<>();
        a.forEach((k, v) -> out.put(k, v instanceof Long l ? (Object) l.intValue() : v));
        return out;
    }

    Channel ch(Map<String, Object> s) { return chans.get(str(s, "ch", "ch")); }

    static void waitFor(java.util.function.BooleanSupplier pred, double seconds) throws InterruptedException {
        long until = System.currentTimeMillis() + (long) (seconds * 1000);
        while (!pred.getAsBoolean() && System.currentTimeMillis() < until) Thread.sleep(20);
    }

    @SuppressWarnings("unchecked")
    Object run(Map<String, Object> s) throws Exception {
        String op = (String) s.get("op");
        switch (op) {
            case "connect": {
                ConnectionFactory f = new ConnectionFactory();
                String uri = str(s, "url", url);
                f.setUri(uri);
                // The AMQP URI spec reads a bare "/" path as the empty vhost; every other client
                // here (and the suite's URLs) mean the default vhost "/".
                if (new java.net.URI(uri).getRawPath().equals("/")) f.setVirtualHost("/");
                f.setConnectionTimeout(15000);
                f.setAutomaticRecoveryEnabled(false);
                if (s.containsKey("heartbeat")) f.setRequestedHeartbeat((int) num(s, "heartbeat", 0));
                long until = System.currentTimeMillis() + (long) (num(s, "retry_for", 0) * 1000);
                while (true) {
                    try {
                        conns.put(str(s, "conn", "c"), f.newConnection());
                        return null;
                    } catch (IOException | java.util.concurrent.TimeoutException e) {
                        if (System.currentTimeMillis() > until) throw e;
                        Thread.sleep(500);
                    }
                }
            }
            case "close": conns.get(str(s, "conn", "c")).close(); return null;
            case "channel": {
                Channel ch = conns.get(str(s, "conn", "c")).createChannel();
                ch.addReturnListener((code, text, ex, rk, props, body) -> {
                    Map<String, Object> r = new LinkedHashMap<>();
                    r.put("reply_code", code);
                    r.put("exchange", ex);
                    r.put("routing_key", rk);
                    r.put("body", describeBody(body));
                    returned.add(r);
                });
                chans.put(str(s, "ch", "ch"), ch);
                return null;
            }
            case "exchange_declare":
                if (flag(s, "passive")) ch(s).exchangeDeclarePassive(str(s, "exchange", ""));
                else ch(s).exchangeDeclare(str(s, "exchange", ""), str(s, "type", "direct"), flag(s, "durable"),
                        flag(s, "auto_delete"), null);
                return null;
            case "exchange_delete": ch(s).exchangeDelete(str(s, "exchange", "")); return null;
            case "queue_declare": {
                AMQP.Queue.DeclareOk ok = flag(s, "passive") ? ch(s).queueDeclarePassive(str(s, "queue", ""))
                        : ch(s).queueDeclare(str(s, "queue", ""), flag(s, "durable"), flag(s, "exclusive"),
                        flag(s, "auto_delete"), args(s));
                Map<String, Object> m = new LinkedHashMap<>();
                m.put("messages", ok.getMessageCount());
                m.put("consumers", ok.getConsumerCount());
                return m;
            }
            case "queue_bind":
                ch(s).queueBind(str(s, "queue", ""), str(s, "exchange", ""), str(s, "routing_key", ""), args(s));
                return null;
            case "queue_delete": ch(s).queueDelete(str(s, "queue", "")); return null;
            case "qos": ch(s).basicQos((int) num(s, "prefetch", 0)); return null;
            case "confirm": ch(s).confirmSelect(); return null;
            case "publish": {
                Map<String, Object> p = (Map<String, Object>) s.getOrDefault("props", Map.of());
                AMQP.BasicProperties.Builder b = new AMQP.BasicProperties.Builder();
                for (Map.Entry<String, Object> e : p.entrySet()) {
                    Object v = e.getValue();
                    switch (e.getKey()) {
                        case "headers" -> {
                            Map<String, Object> h = new LinkedHashMap<>();
                            ((Map<String, Object>) v).forEach((k, x) -> h.put(k, toNative((Map<String, Object>) x)));
                            b.headers(h);
                        }
                        case "content_type" -> b.contentType((String) v);
                        case "content_encoding" -> b.contentEncoding((String) v);
                        case "delivery_mode" -> b.deliveryMode(((Number) v).intValue());
                        case "priority" -> b.priority(((Number) v).intValue());
                        case "correlation_id" -> b.correlationId((String) v);
                        case "reply_to" -> b.replyTo((String) v);
                        case "expiration" -> b.expiration((String) v);
                        case "message_id" -> b.messageId((String) v);
                        case "timestamp" -> b.timestamp(new Date(((Number) v).longValue() * 1000));
                        case "type" -> b.type((String) v);
                        case "user_id" -> b.userId((String) v);
                        case "app_id" -> b.appId((String) v);
                        default -> { }
                    }
                }
                ch(s).basicPublish(str(s, "exchange", ""), str(s, "routing_key", ""), flag(s, "mandatory"),
                        b.build(), makeBody(s.get("body")));
                return "ok";
            }
            case "wait_confirms": return ch(s).waitForConfirms(10000) ? "ok" : "nacked";
            case "returns": {
                int count = (int) num(s, "count", 1);
                waitFor(() -> returned.size() >= count, num(s, "timeout", 5));
                Thread.sleep((long) (num(s, "settle", 0) * 1000));
                return new ArrayList<>(returned);
            }
            case "get": return get(ch(s), s);
            case "get_all": {
                List<Object> out = new ArrayList<>();
                while (true) {
                    Object m = get(ch(s), Map.of("queue", s.get("queue")));
                    if ("empty".equals(m)) return out;
                    out.add(((Map<String, Object>) m).get("body"));
                }
            }
            case "consume": {
                Channel ch = ch(s);
                Log log = new Log(ch);
                consumers.put(str(s, "tag", ""), log);
                ch.basicConsume(str(s, "queue", ""), flag(s, "no_ack"), str(s, "tag", ""), new DefaultConsumer(ch) {
                    @Override
                    public void handleDelivery(String tag, Envelope env, AMQP.BasicProperties p, byte[] body) {
                        log.tags.add(env.getDeliveryTag());
                        log.bodies.add(describeBody(body));
                    }

                    @Override
                    public void handleCancel(String tag) { log.cancelled = true; } // broker's basic.cancel
                });
                return null;
            }
            case "deliveries": {
                Log log = consumers.get(str(s, "tag", ""));
                int count = (int) num(s, "count", 1);
                waitFor(() -> log.bodies.size() >= count, num(s, "timeout", 5));
                Thread.sleep((long) (num(s, "settle", 0) * 1000));
                return new ArrayList<>(log.bodies);
            }
            case "ack": {
                Log log = consumers.get(str(s, "tag", ""));
                log.ch.basicAck(log.tags.get(log.next++), false);
                return null;
            }
            case "cancel": consumers.get(str(s, "tag", "")).ch.basicCancel(str(s, "tag", "")); return null;
            case "cancelled": {
                Log log = consumers.get(str(s, "tag", ""));
                waitFor(() -> log.cancelled, num(s, "timeout", 5));
                return log.cancelled;
            }
            case "sleep": Thread.sleep((long) (num(s, "seconds", 0) * 1000)); return null; // heartbeats run on their own thread
            case "sync": ch(s).exchangeDeclarePassive("amq.direct"); return null;
            default: throw new Unsupported(op);
        }
    }

    Object get(Channel ch, Map<String, Object> s) throws Exception {
        String ack = str(s, "ack", "ack");
        long until = System.currentTimeMillis() + (long) (num(s, "wait", 0) * 1000);
        GetResponse r;
        while ((r = ch.basicGet(str(s, "queue", ""), ack.equals("noack"))) == null) {
            if (System.currentTimeMillis() > until) return "empty";
            Thread.sleep(50);
        }
        long tag = r.getEnvelope().getDeliveryTag();
        switch (ack) {
            case "ack" -> ch.basicAck(tag, false);
            case "reject" -> ch.basicReject(tag, false);
            case "nack" -> ch.basicNack(tag, false, false);
            default -> { }
        }
        return received(r);
    }

    @SuppressWarnings("unchecked")
    public static void main(String[] argv) throws Exception {
        String input = new String(System.in.readAllBytes(), StandardCharsets.UTF_8);
        List<Object> steps = (List<Object>) ((Map<String, Object>) Json.parse(input)).get("steps");
        Driver d = new Driver(argv[1]);
        Map<String, Object> observed = new LinkedHashMap<>();
        for (int k = 0; k < steps.size(); k++) {
            Map<String, Object> s = (Map<String, Object>) steps.get(k);
            System.err.println("interop-step " + k + " " + s.get("op")); // names the step if we time out
            try {
                Object result = d.run(s);
                if (s.containsKey("save")) observed.put((String) s.get("save"), result == null ? "ok" : result);
            } catch (Unsupported u) {
                observed.put("_unsupported", u.getMessage());
                break;
            } catch (Exception e) {
                Map<String, Object> err = new LinkedHashMap<>();
                err.put("error", errorCode(e));
                err.put("detail", String.valueOf(e).substring(0, Math.min(300, String.valueOf(e).length())));
                if (s.containsKey("save")) {
                    observed.put((String) s.get("save"), err);
                    continue;
                }
                err.put("step", k);
                err.put("op", s.get("op"));
                observed.put("_abort", err);
                break;
            }
        }
        Map<String, Object> out = new LinkedHashMap<>();
        out.put("scenario", argv[0]);
        out.put("observed", observed);
        System.out.println(Json.write(out));
        System.out.flush();
        Runtime.getRuntime().halt(0); // don't wait for the client's non-daemon threads
    }
}
