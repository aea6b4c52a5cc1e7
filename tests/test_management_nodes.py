"""GET /api/nodes and /api/nodes/{name} (B-CLUSTER-8): every node with its name, whether it
runs, its cluster role, whether it is in sync and its replication lag. A single node over
HTTP (a real broker); a cluster through a stand-in for the server's `cluster` object (the
cluster itself is tested end to end with the clustering)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from aiohttp.test_utils import make_mocked_request

from mq.config import Settings
from mq.ctl import ApiClient, ApiError, quote
from mq.management.api import Api, HTTPError
from mq.management.views import Views
from mq.testing import BrokerProcess, run_broker


@pytest.fixture(scope="module")
def broker() -> Iterator[BrokerProcess]:
    with run_broker(args=("--management-port", "0")) as b:
        yield b


@pytest.fixture
def api(broker: BrokerProcess) -> ApiClient:
    return ApiClient(broker.management_url)


def test_single_node_leads_itself(broker: BrokerProcess, api: ApiClient) -> None:
    """B-CLUSTER-8: not clustered, /api/nodes is the one node as before (RabbitMQ's fields)
    and it leads, in sync, with no lag; /api/nodes/{name} is the same node, another name
    is 404."""
    [node] = api.get("/api/nodes")
    assert node["name"].startswith("mq@")
    assert (node["running"], node["type"]) == (True, "disc")
    assert (node["cluster_role"], node["in_sync"], node["lag"]) == ("leader", True, 0)
    for key in ("os_pid", "mem_used", "fd_used", "uptime", "partitions"):
        assert key in node
    assert node["amqp_address"].endswith(f":{broker.port}")
    assert node["management_address"].endswith(":" + broker.management_url.rsplit(":", 1)[1])
    one = api.get(f"/api/nodes/{quote(node['name'])}")
    assert {k: one[k] for k in ("name", "cluster_role", "in_sync", "lag")} == \
        {k: node[k] for k in ("name", "cluster_role", "in_sync", "lag")}
    with pytest.raises(ApiError) as info:
        api.get("/api/nodes/mq@nowhere")
    assert info.value.status == 404


class FakeCluster:
    """What mq.cluster gives the server as `server.cluster`: nodes() -> list of dicts."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self._nodes = nodes

    def nodes(self) -> list[dict[str, Any]]:
        return [dict(n) for n in self._nodes]


def cluster_entry(name: str, role: str, in_sync: bool, lag: int, port: int,
                  running: bool = True) -> dict[str, Any]:
    return {"name": name, "running": running, "cluster_role": role, "in_sync": in_sync,
            "lag": lag, "amqp_address": f"10.0.0.{port}:5672",
            "management_address": f"10.0.0.{port}:15672",
            "replication_address": f"10.0.0.{port}:5679"}


def test_cluster_nodes_from_the_cluster_object() -> None:
    """B-CLUSTER-8: in a cluster, /api/nodes lists every node the cluster object knows: the
    local one (the leader) with the node's own fields too, the others with their cluster
    fields and type; /api/nodes/{name} finds any of them."""
    entries = [cluster_entry("n1", "leader", True, 0, 1),
               cluster_entry("n2", "follower", True, 120, 2),
               cluster_entry("n3", "joining", False, 7_000_000, 3, running=False)]
    server = SimpleNamespace(broker=SimpleNamespace(), port=5672, management_port=15672,
                             settings=Settings(node_name="n1"), cluster=FakeCluster(entries))
    views = Views(server)  # type: ignore[arg-type]
    nodes = views.nodes()
    assert [n["name"] for n in nodes] == ["n1", "n2", "n3"]
    leader, follower, joining = nodes
    assert {k: leader[k] for k in entries[0]} == entries[0]
    assert leader["type"] == "disc" and "os_pid" in leader and "mem_used" in leader
    assert follower == {**entries[1], "type": "disc"}
    assert joining == {**entries[2], "type": "disc"}

    api = Api(views)

    async def get(name: str) -> Any:
        request = make_mocked_request("GET", f"/api/nodes/{name}", match_info={"node": name})
        return await api.get_node(request)
    response = asyncio.run(get("n3"))
    assert response.status == 200 and b'"cluster_role": "joining"' in response.body
    with pytest.raises(HTTPError) as info:
        asyncio.run(get("n4"))
    assert info.value.status == 404
    listed = asyncio.run(api.nodes(make_mocked_request("GET", "/api/nodes")))
    assert b'"n2"' in listed.body

    # A node name other than the leader's (a follower relays the API, so this is rare):
    # the leader's entry is the local one.
    server.settings = Settings(node_name="elsewhere")
    assert "os_pid" in views.nodes()[0] and "os_pid" not in views.nodes()[1]
