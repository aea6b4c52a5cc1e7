"""The HTTP API: RabbitMQ's management API routes for what mq has, with basic auth against
the broker's users. Changes go through the same vhost methods the AMQP side uses, and are
answered as over AMQP (B-DUR-8, B-DUR-9, mq.broker.durability): a durable declare, delete,
bind or unbind only once its store records are on disk (the handler awaits, the loop goes
on), a disk write that fails is a 500 naming the disk error, and while writes fail such a
change is refused before anything changes. Users, vhosts, permissions and policies are
saved to access.json in a worker thread, one save after the other."""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable

from aiohttp import web

from mq._core.message import Message
from mq.amqp.connection import _is_loopback
from mq.broker.auth import Permission, User, hash_password
from mq.broker.definitions import (ACCESS_FILE, HASHING, access_content, export_definitions,
                                   import_definitions, topic_permission_from_json,
                                   topic_permission_json, write_access)
from mq.broker.durability import (DiskWriteFailed, disk_error, durable_binding,
                                  refuse_while_failing, seq_to_wait, when_durable)
from mq.broker.errors import (AccessRefused, AMQPError, ConnectionForced, NotFound,
                              PreconditionFailed)
from mq.broker.exchange import Exchange
from mq.broker.policy import InvalidPolicy
from mq.broker.properties import build as build_properties
from mq.broker.properties import decode as decode_properties
from mq.broker.publish import (NO_ROUTE, REFUSED, REPLY_TO, check_exchange, check_message,
                               check_permission, check_size, route)
from mq.broker.queue import Queue
from mq.broker.vhost import VirtualHost
from mq.logfmt import kv
from mq.management.metrics import render_metrics
from mq.management.policies import policy_routes, validation_failed
from mq.management.views import Views, jsonable, properties_key

log = logging.getLogger("mq.management")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
READ_TAGS = {"administrator", "monitoring", "management"}


class HTTPError(Exception):
    def __init__(self, status: int, error: str, reason: str) -> None:
        super().__init__(reason)
        self.status, self.error, self.reason = status, error, reason


def not_found(reason: str = "Not Found") -> HTTPError:
    return HTTPError(404, "Object Not Found", reason)


def bad_request(reason: str) -> HTTPError:
    return HTTPError(400, "bad_request", reason)


def internal_server_error(reason: str) -> HTTPError:
    """RabbitMQ's answer to a failure of its own (rabbit_mgmt_util:internal_server_error)."""
    return HTTPError(500, "internal_server_error", reason)


def _error_response(exc: HTTPError, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": exc.error, "reason": exc.reason}, status=exc.status,
                             headers=headers)


class Api:
    """Route handlers; `views` reads the broker, the handlers below change it."""

    def __init__(self, views: Views) -> None:
        self.views = views
        self.broker = views.broker
        # access.json is written by this one thread: saves go to disk one at a time, in the
        # order their contents were taken (the last change is the last written).
        self._access_writer = ThreadPoolExecutor(1, thread_name_prefix="mq-access")

    # ---- auth and errors ----------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if request.path.startswith("/api/"):
                request["user"] = self._authenticate(request)
            return await handler(request)
        except HTTPError as exc:
            # A browser prompt only when no credentials came (the dashboard sends its own).
            prompt = exc.status == 401 and "Authorization" not in request.headers
            return _error_response(exc, {"WWW-Authenticate": 'Basic realm="mq management"'}
                                   if prompt else None)
        except NotFound as exc:
            return _error_response(not_found(exc.text))
        except AccessRefused as exc:  # e.g. the amq. prefix: 401, as RabbitMQ answers
            return _error_response(HTTPError(401, "not_authorised", exc.text))
        except DiskWriteFailed as exc:  # B-DUR-8: the store (or access.json) cannot write
            log.error("management request failed %s", kv(method=request.method,
                                                          path=request.path, error=exc.text))
            return _error_response(internal_server_error(exc.text))
        except AMQPError as exc:
            return _error_response(bad_request(exc.text))

    def _authenticate(self, request: web.Request) -> User:
        """Basic auth; reads for administrator, monitoring and management users, changes
        for administrators only (RabbitMQ's tags)."""
        header = request.headers.get("Authorization", "")
        user = None
        if header.startswith("Basic "):
            try:
                name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                name = password = ""
            user = self.broker.users.authenticate(name, password)
        if user is None:
            raise HTTPError(401, "not_authorized", "Login failed")
        if user.name in self.broker.loopback_users and not _is_loopback(request.remote or ""):
            raise HTTPError(401, "not_authorized", "User can only log in via localhost")
        tags = set(user.tags)
        if not tags & READ_TAGS:
            raise HTTPError(401, "not_authorised", "Not management user")
        if request.method not in ("GET", "HEAD") and "administrator" not in tags:
            raise HTTPError(401, "not_authorised", "Not administrator user")
        return user

    async def _saved(self, status: int) -> web.Response:
        """Users, vhosts, permissions or policies changed: keep them for the next start.
        Answered once access.json is on disk; its fsyncs run in a worker thread (B-DUR-9:
        under write load they take up to tens of ms), which goes on with the save if the
        request goes away. A failed write is the disk error (500)."""
        data = access_content(self.broker)
        write = asyncio.get_running_loop().run_in_executor(
            self._access_writer, write_access, data, self.views.server.settings.data_dir)
        try:
            await asyncio.shield(write)
        except OSError as exc:
            raise disk_error(exc) from None
        # In a cluster: answered once the in-sync followers have it too (B-CLUSTER-3).
        replicated = asyncio.get_running_loop().create_future()
        self.broker.store.file_written(ACCESS_FILE, data, lambda: replicated.done()
                                       or replicated.set_result(None))
        await replicated
        return web.Response(status=status)

    # ---- durable changes: answered once on disk (B-DUR-8, B-DUR-9) ----------------------

    async def _durable(self, before: int, durable: bool) -> None:
        """After a change: return once what it wrote to the store is on disk (for a
        durable redeclare: the last topology record), as the AMQP answer would wait; raise
        the disk error if a write fails first. The loop is not blocked: this handler
        awaits a future that the store's when_durable() callback resolves."""
        store = self.broker.store
        seq = seq_to_wait(store, before, durable)
        if not seq:
            return
        future = asyncio.get_running_loop().create_future()

        def answered(exc: BaseException | None) -> None:
            if future.done():  # the request went away meanwhile
                return
            if exc is None:
                future.set_result(None)
            else:
                future.set_exception(disk_error(exc))
        when_durable(store, answered, seq)
        await future

    def _visible(self, request: web.Request) -> set[str] | None:
        """The vhosts a user may see: all for administrators and monitoring users, their
        own for management users (as in RabbitMQ)."""
        user: User = request["user"]
        if {"administrator", "monitoring"} & set(user.tags):
            return None
        return set(user.permissions)

    def _vhost(self, request: web.Request) -> VirtualHost:
        name = request.match_info["vhost"]
        visible = self._visible(request)
        vhost = self.broker.vhosts.get(name)
        if vhost is None or (visible is not None and name not in visible):
            raise not_found()
        return vhost

    def _vhosts(self, request: web.Request) -> list[VirtualHost]:
        if "vhost" in request.match_info:
            return [self._vhost(request)]
        return self.views.vhosts(self._visible(request))

    def _queue(self, request: web.Request) -> Queue:
        queue = self._vhost(request).queues.get(request.match_info["name"])
        if queue is None:
            raise not_found()
        return queue

    def _exchange(self, request: web.Request, key: str = "name") -> Exchange:
        name = request.match_info[key]
        exchange = self._vhost(request).exchanges.get("" if name == "amq.default" else name)
        if exchange is None:
            raise not_found()
        return exchange

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = json.loads(await request.read() or b"{}")
        except ValueError as exc:
            raise bad_request(f"invalid JSON: {exc}") from None
        if not isinstance(body, dict):
            raise bad_request("the body must be a JSON object")
        return body

    @staticmethod
    def _flag(request: web.Request, name: str) -> bool:
        return request.query.get(name, "false").lower() == "true"

    def _connection(self, request: web.Request) -> Any:
        name = request.match_info["name"]
        visible = self._visible(request)
        for conn in self.views.connections():
            if conn.name == name and (visible is None or conn.vhost.name in visible):
                return conn
        raise not_found()

    # ---- overview, node ---------------------------------------------------------------

    async def overview(self, request: web.Request) -> web.Response:
        return web.json_response(self.views.overview(self._visible(request)))

    async def whoami(self, request: web.Request) -> web.Response:
        user: User = request["user"]
        return web.json_response({"name": user.name, "tags": list(user.tags)})

    async def healthcheck(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def aliveness(self, request: web.Request) -> web.Response:
        """Declare a queue, publish to it and get the message back, as RabbitMQ does."""
        vhost = self._vhost(request)
        queue = vhost.declare_queue("aliveness-test", durable=False)
        queue.purge()
        route(vhost, vhost.get_exchange(""), Message("", queue.name, b"\x00\x00",
                                                     b"test_message"))
        entry = queue.get(no_ack=True)
        ok = entry is not None and entry.msg.body == b"test_message"
        return web.json_response({"status": "ok"} if ok else
                                 {"status": "failed", "reason": "message not returned"},
                                 status=200 if ok else 503)

    async def nodes(self, request: web.Request) -> web.Response:
        """Every node of the cluster (one when not clustered), B-CLUSTER-8."""
        return web.json_response(self.views.nodes())

    async def get_node(self, request: web.Request) -> web.Response:
        name = request.match_info["node"]
        for node in self.views.nodes():
            if node["name"] == name:
                return web.json_response(node)
        raise not_found()

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=render_metrics(self.views),
                            content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Format": "text/plain; version=0.0.4"})

    # ---- queues -------------------------------------------------------------------------

    async def list_queues(self, request: web.Request) -> web.Response:
        return web.json_response([self.views.queue(q) for v in self._vhosts(request)
                                  for q in sorted(v.queues.values(), key=lambda q: q.name)])

    async def get_queue(self, request: web.Request) -> web.Response:
        queue = self._queue(request)
        view = self.views.queue(queue)
        view["consumer_details"] = [c for c in self.views.consumers(self._vhost(request))
                                    if c["queue"]["name"] == queue.name]
        return web.json_response(view)

    async def put_queue(self, request: web.Request) -> web.Response:
        vhost, name = self._vhost(request), request.match_info["name"]
        body = await self._body(request)
        existed = name in vhost.queues
        # RabbitMQ's defaults: transient; `exclusive` is ignored (no connection to own it).
        durable = _bool(body, "durable")
        before = refuse_while_failing(self.broker.store, durable and not existed)
        queue = vhost.declare_queue(name, durable=durable,
                                    auto_delete=_bool(body, "auto_delete"),
                                    arguments=body.get("arguments") or {})
        await self._durable(before, bool(queue.store_qid))
        return web.Response(status=204 if existed else 201)

    async def delete_queue(self, request: web.Request) -> web.Response:
        queue = self._queue(request)
        if self._flag(request, "if-unused") and queue.consumer_count:
            raise bad_request(f"queue '{queue.name}' in vhost '{queue.vhost}' in use")
        if self._flag(request, "if-empty") and queue.message_count:
            raise bad_request(f"queue '{queue.name}' in vhost '{queue.vhost}' not empty")
        # Exclusive queues too: an operator may delete any queue (as in RabbitMQ).
        before = refuse_while_failing(self.broker.store, bool(queue.store_qid))
        self._vhost(request).remove_queue(queue)
        await self._durable(before, False)
        return web.Response(status=204)

    async def purge_queue(self, request: web.Request) -> web.Response:
        self._queue(request).purge()
        return web.Response(status=204)

    async def queue_bindings(self, request: web.Request) -> web.Response:
        queue, vhost = self._queue(request), self._vhost(request)
        out = [self.views.default_binding(queue)]
        out += [self.views.binding(vhost.name, b) for b in queue.incoming.values()]
        return web.json_response(out)

    async def get_messages(self, request: web.Request) -> web.Response:
        """POST /api/queues/{vhost}/{name}/get: RabbitMQ's count / ackmode / encoding /
        truncate; ack_requeue_true puts them back (redelivered)."""
        queue = self._queue(request)
        body = await self._body(request)
        ackmode = body.get("ackmode", "ack_requeue_true")
        if ackmode not in ("ack_requeue_true", "ack_requeue_false", "reject_requeue_true",
                           "reject_requeue_false"):
            raise bad_request(f"unknown ackmode '{ackmode}'")
        encoding = body.get("encoding", "auto")
        truncate = body.get("truncate")
        entries, out = [], []
        for _ in range(int(body.get("count", 1))):
            entry = queue.get(no_ack=False)
            if entry is None:
                break
            entries.append(entry)
            msg = entry.msg
            payload = msg.body[:truncate] if truncate else msg.body
            out.append({"payload_bytes": len(msg.body), "redelivered": entry.redelivered,
                        "exchange": msg.exchange, "routing_key": msg.routing_key,
                        "message_count": queue.message_count,
                        "properties": _properties_json(msg.props),
                        **_payload_json(bytes(payload), encoding)})
        if ackmode.endswith("requeue_true"):
            queue.requeue(entries)
        elif ackmode == "ack_requeue_false":
            queue.settle(entries)
        else:
            queue.reject(entries)
        return web.json_response(out)

    # ---- exchanges ----------------------------------------------------------------------

    async def list_exchanges(self, request: web.Request) -> web.Response:
        return web.json_response([self.views.exchange(e) for v in self._vhosts(request)
                                  for e in sorted(v.exchanges.values(), key=lambda e: e.name)])

    async def get_exchange(self, request: web.Request) -> web.Response:
        return web.json_response(self.views.exchange(self._exchange(request)))

    async def put_exchange(self, request: web.Request) -> web.Response:
        vhost, name = self._vhost(request), request.match_info["name"]
        body = await self._body(request)
        existed = name in vhost.exchanges
        durable = _bool(body, "durable")
        before = refuse_while_failing(self.broker.store, durable and not existed)
        exchange = vhost.declare_exchange(name, body.get("type", "direct"), durable=durable,
                                          auto_delete=_bool(body, "auto_delete"),
                                          internal=_bool(body, "internal"),
                                          arguments=body.get("arguments") or {})
        await self._durable(before, exchange.durable)
        return web.Response(status=204 if existed else 201)

    async def delete_exchange(self, request: web.Request) -> web.Response:
        exchange = self._exchange(request)
        before = refuse_while_failing(self.broker.store, exchange.durable)
        self._vhost(request).delete_exchange(exchange.name, self._flag(request, "if-unused"))
        await self._durable(before, False)
        return web.Response(status=204)

    async def exchange_bindings(self, request: web.Request) -> web.Response:
        exchange, vhost = self._exchange(request), self._vhost(request)
        source = request.match_info["direction"] == "source"
        bindings = exchange.bindings.values() if source else exchange.incoming.values()
        return web.json_response([self.views.binding(vhost.name, b) for b in bindings])

    async def publish(self, request: web.Request) -> web.Response:
        """POST /api/exchanges/{vhost}/{name}/publish: {"routed": bool}. The same checks and
        routing as basic.publish (mq.broker.publish), answered as RabbitMQ's API does (it
        publishes mandatory, with confirms, on a channel of the HTTP user): what closes
        the channel is a 400 "<code> <reply text>" (403: a 401 not_authorised), a
        returned message {"routed": false}, a nack a 400 "rejected ..."."""
        vhost, exchange = self._vhost(request), self._exchange(request)
        user: User = request["user"]
        body = await self._body(request)
        payload = body.get("payload", "")
        if not isinstance(payload, str):
            raise bad_request("payload_not_string")
        encoding = body.get("payload_encoding", "string")
        if encoding == "base64":
            try:
                raw = base64.b64decode(payload, validate=True)
            except binascii.Error:
                raise bad_request("payload is not valid base64") from None
        elif encoding == "string":
            raw = payload.encode()
        else:
            raise bad_request(f"unsupported_encoding {encoding}")
        props = _properties_bytes(body.get("properties") or {})
        routing_key = str(body.get("routing_key", ""))
        try:
            check_size(len(raw), self.broker.max_message_size)
            msg = Message(exchange.name, routing_key, props, raw)
            check_permission(user, vhost.name, "write", "exchange", exchange.name)
            check_exchange(vhost, exchange, user, routing_key)
            check_message(msg, user.name)
            if msg.reply_to == REPLY_TO:  # the API's channel has no reply-to consumer
                raise PreconditionFailed("fast reply consumer does not exist")
        except AccessRefused as exc:
            raise HTTPError(401, "not_authorised", exc.reply_text) from None
        except AMQPError as exc:
            raise bad_request(f"{exc.reply_code} {exc.reply_text}") from None
        outcome = route(vhost, exchange, msg)
        if outcome > 0 and not await self._confirmed(outcome):
            outcome = REFUSED
        if outcome == REFUSED:
            raise bad_request("rejected Unable to publish message. Check queue limits.")
        return web.json_response({"routed": outcome != NO_ROUTE})

    async def _confirmed(self, seq: int) -> bool:
        """Whether the store's records up to seq reach the disk (False: a write failed, the
        publish is nacked), awaited without blocking the loop."""
        future = asyncio.get_running_loop().create_future()

        def answered(exc: BaseException | None) -> None:
            if not future.done():
                future.set_result(exc is None)
        when_durable(self.broker.store, answered, seq)
        return await future

    # ---- bindings -----------------------------------------------------------------------

    async def list_bindings(self, request: web.Request) -> web.Response:
        return web.json_response([b for v in self._vhosts(request)
                                  for b in self.views.bindings(v)])

    def _binding_ends(self, request: web.Request) -> tuple[VirtualHost, Exchange, Any]:
        vhost = self._vhost(request)
        source = self._exchange(request, "source")
        dest_name = request.match_info["destination"]
        to_queue = request.match_info["kind"] == "q"
        destination = (vhost.queues if to_queue else vhost.exchanges).get(dest_name)
        if destination is None:
            raise not_found()
        return vhost, source, destination

    async def between(self, request: web.Request) -> web.Response:
        vhost, source, destination = self._binding_ends(request)
        return web.json_response([self.views.binding(vhost.name, b)
                                  for b in source.bindings_to(destination)])

    async def add_binding(self, request: web.Request) -> web.Response:
        vhost, source, destination = self._binding_ends(request)
        body = await self._body(request)
        key = str(body.get("routing_key", ""))
        arguments = body.get("arguments") or {}
        durable = durable_binding(source, destination)
        before = refuse_while_failing(self.broker.store, durable)
        vhost.bind(source, destination, key, arguments)
        await self._durable(before, durable)
        binding = source.find_binding(destination, key, arguments)
        location = properties_key(binding) if binding is not None else key
        return web.Response(status=201, headers={"Location": location})

    def _find_binding(self, request: web.Request) -> tuple[VirtualHost, Any]:
        vhost, source, destination = self._binding_ends(request)
        props = request.match_info["props"]
        for binding in source.bindings_to(destination):
            if properties_key(binding) == props:
                return vhost, binding
        raise not_found()

    async def get_binding(self, request: web.Request) -> web.Response:
        vhost, binding = self._find_binding(request)
        return web.json_response(self.views.binding(vhost.name, binding))

    async def delete_binding(self, request: web.Request) -> web.Response:
        vhost, b = self._find_binding(request)
        before = refuse_while_failing(self.broker.store,
                                      durable_binding(b.source, b.destination))
        vhost.unbind(b.source, b.destination, b.routing_key, b.arguments)
        await self._durable(before, False)
        return web.Response(status=204)

    # ---- connections, channels, consumers ----------------------------------------------

    def _visible_connections(self, request: web.Request) -> list[Any]:
        visible = self._visible(request)
        return [c for c in self.views.connections()
                if visible is None or c.vhost.name in visible]

    async def list_connections(self, request: web.Request) -> web.Response:
        return web.json_response([self.views.connection(c)
                                  for c in self._visible_connections(request)])

    async def get_connection(self, request: web.Request) -> web.Response:
        return web.json_response(self.views.connection(self._connection(request)))

    async def close_connection(self, request: web.Request) -> web.Response:
        """Close with 320 CONNECTION_FORCED; X-Reason gives the text, as in RabbitMQ."""
        conn = self._connection(request)
        reason = request.headers.get("X-Reason", "Closed via management plugin")
        log.info("connection closed by management %s", kv(peer=conn.name, user=conn.user.name,
                                                           by=request["user"].name,
                                                           reason=reason))
        conn.close_with(ConnectionForced(reason))
        return web.Response(status=204)

    async def connection_channels(self, request: web.Request) -> web.Response:
        conn = self._connection(request)
        return web.json_response([self.views.channel(conn.channels[n])
                                  for n in sorted(conn.channels)])

    async def list_channels(self, request: web.Request) -> web.Response:
        return web.json_response([self.views.channel(c.channels[n])
                                  for c in self._visible_connections(request)
                                  for n in sorted(c.channels)])

    async def get_channel(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        for conn in self._visible_connections(request):
            for ch in conn.channels.values():
                if self.views.channel(ch)["name"] == name:
                    return web.json_response(self.views.channel(ch))
        raise not_found()

    async def list_consumers(self, request: web.Request) -> web.Response:
        return web.json_response([c for v in self._vhosts(request)
                                  for c in self.views.consumers(v)])

    # ---- vhosts -------------------------------------------------------------------------

    async def list_vhosts(self, request: web.Request) -> web.Response:
        return web.json_response([self.views.vhost(v)
                                  for v in self.views.vhosts(self._visible(request))])

    async def get_vhost(self, request: web.Request) -> web.Response:
        return web.json_response(self.views.vhost(self._vhost(request)))

    async def put_vhost(self, request: web.Request) -> web.Response:
        name = request.match_info["vhost"]
        existed = name in self.broker.vhosts
        self.broker.add_vhost(name)
        return await self._saved(204 if existed else 201)

    async def delete_vhost(self, request: web.Request) -> web.Response:
        """Everything in it goes: its clients (320), queues, exchanges, permissions."""
        vhost = self._vhost(request)
        before = refuse_while_failing(
            self.broker.store,
            any(q.store_qid for q in vhost.queues.values())
            or any(x.durable for n, x in vhost.exchanges.items() if n and not n.startswith("amq.")))
        for conn in self.views.connections():
            if conn.vhost is vhost:
                conn.close_with(ConnectionForced(f"vhost '{vhost.name}' is deleted"))
        for queue in list(vhost.queues.values()):
            vhost.remove_queue(queue)
        for name in [n for n in vhost.exchanges if n and not n.startswith("amq.")]:
            vhost.delete_exchange(name)
        del self.broker.vhosts[vhost.name]
        for user in self.broker.users.users.values():
            user.permissions.pop(vhost.name, None)
            user.topic_permissions = {key: p for key, p in user.topic_permissions.items()
                                      if key[0] != vhost.name}
        # The log first: a crash between the two leaves an empty vhost with its permissions
        # (a consistent state), never queues of a vhost that access.json no longer has.
        await self._durable(before, False)
        return await self._saved(204)

    # ---- users and permissions --------------------------------------------------------

    @staticmethod
    def _user_json(user: User) -> dict[str, Any]:
        return {"name": user.name, "password_hash": user.password_hash,
                "hashing_algorithm": HASHING, "tags": list(user.tags), "limits": {}}

    def _user(self, request: web.Request) -> User:
        user = self.broker.users.users.get(request.match_info["user"])
        if user is None:
            raise not_found()
        return user

    async def list_users(self, request: web.Request) -> web.Response:
        return web.json_response([self._user_json(u)
                                  for u in self.broker.users.users.values()])

    async def get_user(self, request: web.Request) -> web.Response:
        return web.json_response(self._user_json(self._user(request)))

    async def put_user(self, request: web.Request) -> web.Response:
        """RabbitMQ's body: password or password_hash, tags (a list or "a,b")."""
        name = request.match_info["user"]
        body = await self._body(request)
        tags = body.get("tags", [])
        if isinstance(tags, str):
            tags = [t.strip() for t in tags.split(",") if t.strip()]
        if "password" in body:
            password_hash = hash_password(str(body["password"]))
        elif "password_hash" in body:
            password_hash = str(body["password_hash"])
            try:
                base64.b64decode(password_hash, validate=True)
            except binascii.Error:
                raise bad_request("password_hash is not base64") from None
        else:
            password_hash = ""  # as RabbitMQ: no password, no password login
        old = self.broker.users.users.get(name)
        self.broker.users.users[name] = User(name, password_hash, list(tags),
                                             old.permissions if old else {},
                                             old.topic_permissions if old else {})
        return await self._saved(204 if old else 201)

    async def delete_user(self, request: web.Request) -> web.Response:
        del self.broker.users.users[self._user(request).name]
        return await self._saved(204)

    @staticmethod
    def _permission_json(user: str, vhost: str, p: Permission) -> dict[str, Any]:
        return {"user": user, "vhost": vhost, "configure": p.configure, "write": p.write,
                "read": p.read}

    def _permissions(self, vhost: str | None = None, user: str | None = None) -> list[dict]:
        return [self._permission_json(u.name, v, p)
                for u in self.broker.users.users.values() if user in (None, u.name)
                for v, p in u.permissions.items() if vhost in (None, v)]

    async def list_permissions(self, request: web.Request) -> web.Response:
        if "user" in request.match_info:
            return web.json_response(self._permissions(user=self._user(request).name))
        if "vhost" in request.match_info:
            return web.json_response(self._permissions(vhost=self._vhost(request).name))
        return web.json_response(self._permissions())

    async def get_permission(self, request: web.Request) -> web.Response:
        user, vhost = self._user(request), self._vhost(request)
        permission = user.permissions.get(vhost.name)
        if permission is None:
            raise not_found()
        return web.json_response(self._permission_json(user.name, vhost.name, permission))

    async def put_permission(self, request: web.Request) -> web.Response:
        try:
            user, vhost = self._user(request), self._vhost(request)
        except HTTPError:
            raise bad_request("vhost_or_user_not_found") from None
        body = await self._body(request)
        existed = vhost.name in user.permissions
        user.permissions[vhost.name] = Permission(str(body.get("configure", "")),
                                                  str(body.get("write", "")),
                                                  str(body.get("read", "")))
        return await self._saved(204 if existed else 201)

    async def delete_permission(self, request: web.Request) -> web.Response:
        user, vhost = self._user(request), self._vhost(request)
        if user.permissions.pop(vhost.name, None) is None:
            raise not_found()
        return await self._saved(204)

    # ---- topic permissions (B-AUTH-1) ----------------------------------------------------

    def _topic_permissions(self, vhost: str | None = None,
                           user: str | None = None) -> list[dict]:
        return [topic_permission_json(u, v, exchange, p)
                for u in self.broker.users.users.values() if user in (None, u.name)
                for (v, exchange), p in u.topic_permissions.items() if vhost in (None, v)]

    async def list_topic_permissions(self, request: web.Request) -> web.Response:
        if "user" in request.match_info:
            return web.json_response(self._topic_permissions(user=self._user(request).name))
        if "vhost" in request.match_info:
            return web.json_response(self._topic_permissions(vhost=self._vhost(request).name))
        return web.json_response(self._topic_permissions())

    async def get_topic_permission(self, request: web.Request) -> web.Response:
        """As RabbitMQ: the user's topic permissions in the vhost, 404 when there are none."""
        user, vhost = self._user(request), self._vhost(request)
        found = self._topic_permissions(vhost.name, user.name)
        if not found:
            raise not_found()
        return web.json_response(found)

    async def put_topic_permission(self, request: web.Request) -> web.Response:
        """Body {"exchange", "write", "read"}: set (or replace) the one for that exchange."""
        try:
            user, vhost = self._user(request), self._vhost(request)
        except HTTPError:
            raise bad_request("vhost_or_user_not_found") from None
        body = await self._body(request)
        if not isinstance(body.get("exchange"), str):
            raise bad_request("exchange is missing")
        try:
            permission = topic_permission_from_json(body)
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        existed = any(v == vhost.name for v, _ in user.topic_permissions)
        user.topic_permissions[(vhost.name, body["exchange"])] = permission
        return await self._saved(204 if existed else 201)

    async def delete_topic_permission(self, request: web.Request) -> web.Response:
        """All of the user's topic permissions in the vhost go (RabbitMQ 3.10)."""
        user, vhost = self._user(request), self._vhost(request)
        kept = {key: p for key, p in user.topic_permissions.items() if key[0] != vhost.name}
        if len(kept) == len(user.topic_permissions):
            raise not_found()
        user.topic_permissions = kept
        return await self._saved(204)

    # ---- definitions --------------------------------------------------------------------

    async def get_definitions(self, request: web.Request) -> web.Response:
        return web.json_response(export_definitions(self.broker))

    async def post_definitions(self, request: web.Request) -> web.Response:
        """The import's durable topology is answered as its declares and binds would be
        over AMQP: refused while the store's writes fail (when it names any), and the
        answer waits until it is on disk."""
        body = await self._body(request)
        topology = any(body.get(key) for key in ("exchanges", "queues", "bindings"))
        before = refuse_while_failing(self.broker.store, topology)
        try:
            import_definitions(self.broker, body)
        except (KeyError, TypeError) as exc:
            raise bad_request(f"malformed definitions: missing or wrong {exc}") from None
        except InvalidPolicy as exc:
            raise bad_request(validation_failed(exc)) from None
        except ValueError as exc:  # a topic permission pattern that does not compile
            raise bad_request(str(exc)) from None
        response = await self._saved(204)
        await self._durable(before, topology)
        return response

    # ---- routes ---------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        q = "/api/queues/{vhost}/{name}"
        x = "/api/exchanges/{vhost}/{name}"
        b = "/api/bindings/{vhost}/e/{source}/{kind:[qe]}/{destination}"
        return [
            web.get("/api/overview", self.overview),
            web.get("/api/whoami", self.whoami),
            web.get("/api/healthchecks/node", self.healthcheck),
            web.get("/api/aliveness-test/{vhost}", self.aliveness),
            web.get("/metrics", self.metrics),
            web.get("/api/nodes", self.nodes),
            web.get("/api/nodes/{node}", self.get_node),
            web.get("/api/queues", self.list_queues),
            web.get("/api/queues/{vhost}", self.list_queues),
            web.get(q, self.get_queue), web.put(q, self.put_queue),
            web.delete(q, self.delete_queue),
            web.delete(q + "/contents", self.purge_queue),
            web.get(q + "/bindings", self.queue_bindings),
            web.post(q + "/get", self.get_messages),
            web.get("/api/exchanges", self.list_exchanges),
            web.get("/api/exchanges/{vhost}", self.list_exchanges),
            web.get(x, self.get_exchange), web.put(x, self.put_exchange),
            web.delete(x, self.delete_exchange),
            web.get(x + "/bindings/{direction:source|destination}", self.exchange_bindings),
            web.post(x + "/publish", self.publish),
            web.get("/api/bindings", self.list_bindings),
            web.get("/api/bindings/{vhost}", self.list_bindings),
            web.get(b, self.between), web.post(b, self.add_binding),
            web.get(b + "/{props}", self.get_binding),
            web.delete(b + "/{props}", self.delete_binding),
            web.get("/api/connections", self.list_connections),
            web.get("/api/connections/{name}", self.get_connection),
            web.delete("/api/connections/{name}", self.close_connection),
            web.get("/api/connections/{name}/channels", self.connection_channels),
            web.get("/api/channels", self.list_channels),
            web.get("/api/channels/{name}", self.get_channel),
            web.get("/api/consumers", self.list_consumers),
            web.get("/api/consumers/{vhost}", self.list_consumers),
            web.get("/api/vhosts", self.list_vhosts),
            web.get("/api/vhosts/{vhost}", self.get_vhost),
            web.put("/api/vhosts/{vhost}", self.put_vhost),
            web.delete("/api/vhosts/{vhost}", self.delete_vhost),
            web.get("/api/vhosts/{vhost}/permissions", self.list_permissions),
            web.get("/api/users", self.list_users),
            web.get("/api/users/{user}", self.get_user),
            web.put("/api/users/{user}", self.put_user),
            web.delete("/api/users/{user}", self.delete_user),
            web.get("/api/users/{user}/permissions", self.list_permissions),
            web.get("/api/permissions", self.list_permissions),
            web.get("/api/permissions/{vhost}/{user}", self.get_permission),
            web.put("/api/permissions/{vhost}/{user}", self.put_permission),
            web.delete("/api/permissions/{vhost}/{user}", self.delete_permission),
            web.get("/api/vhosts/{vhost}/topic-permissions", self.list_topic_permissions),
            web.get("/api/users/{user}/topic-permissions", self.list_topic_permissions),
            web.get("/api/topic-permissions", self.list_topic_permissions),
            web.get("/api/topic-permissions/{vhost}/{user}", self.get_topic_permission),
            web.put("/api/topic-permissions/{vhost}/{user}", self.put_topic_permission),
            web.delete("/api/topic-permissions/{vhost}/{user}", self.delete_topic_permission),
            web.get("/api/definitions", self.get_definitions),
            web.post("/api/definitions", self.post_definitions),
            *policy_routes(self),
        ]


def _bool(body: dict[str, Any], name: str) -> bool:
    """A boolean field as RabbitMQ parses it (rabbit_mgmt_util:parse_bool): true/false or
    the strings "true"/"false" (rabbitmqadmin sends strings); absent is false."""
    value = body.get(name, False)
    if value in (True, "true"):
        return True
    if value in (False, "false", None):
        return False
    raise bad_request(f"{{not_boolean,{json.dumps(value)}}}")


def _properties_json(raw: bytes) -> dict[str, Any]:
    """Message properties as RabbitMQ's get shows them: only those set, by AMQP name."""
    return {name: jsonable(value) for name, value in decode_properties(raw).items()}


def _properties_bytes(properties: dict[str, Any]) -> bytes:
    """The encoded properties of a message published through the API."""
    try:
        return build_properties(properties)
    except (TypeError, ValueError) as exc:
        raise bad_request(f"invalid properties: {exc}") from None


def _payload_json(payload: bytes, encoding: str) -> dict[str, Any]:
    """`auto`: text when it is UTF-8, else base64 (RabbitMQ's choice)."""
    if encoding == "auto":
        try:
            return {"payload": payload.decode("utf-8"), "payload_encoding": "string"}
        except UnicodeDecodeError:
            pass
    return {"payload": base64.b64encode(payload).decode(), "payload_encoding": "base64"}
