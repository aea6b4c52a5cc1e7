"""/api/policies[/{vhost}[/{name}]]: RabbitMQ's policy routes (GET, PUT, DELETE), in its
shapes; changes are saved in the data dir with users and permissions."""
from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from mq.broker.policy import InvalidPolicy, policy_from_json

if TYPE_CHECKING:
    from mq.management.api import Api


def validation_failed(exc: InvalidPolicy) -> str:
    """RabbitMQ's 400 reason for a refused policy."""
    return f"Validation failed\n\n{exc}\n"


def policy_routes(api: Api) -> list[web.RouteDef]:
    from mq.management.api import bad_request, not_found  # api.py imports this module

    async def list_policies(request: web.Request) -> web.Response:
        return web.json_response([p.as_json() for vhost in api._vhosts(request)
                                  for p in sorted(vhost.policies.values(),
                                                  key=lambda p: p.name)])

    async def get_policy(request: web.Request) -> web.Response:
        policy = api._vhost(request).policies.get(request.match_info["name"])
        if policy is None:
            raise not_found()
        return web.json_response(policy.as_json())

    async def put_policy(request: web.Request) -> web.Response:
        vhost, name = api._vhost(request), request.match_info["name"]
        try:
            policy = policy_from_json(vhost.name, name, await api._body(request))
        except InvalidPolicy as exc:
            raise bad_request(validation_failed(exc)) from None
        created = name not in vhost.policies
        vhost.set_policy(policy)
        return await api._saved(201 if created else 204)

    async def delete_policy(request: web.Request) -> web.Response:
        if not api._vhost(request).clear_policy(request.match_info["name"]):
            raise not_found()
        return await api._saved(204)

    one = "/api/policies/{vhost}/{name}"
    return [
        web.get("/api/policies", list_policies),
        web.get("/api/policies/{vhost}", list_policies),
        web.get(one, get_policy), web.put(one, put_policy), web.delete(one, delete_policy),
    ]
