"""Clustering (B-CLUSTER): replicated nodes coordinated through etcd.

One node leads: it holds the leader key in etcd, bound to its lease, and runs the broker.
The others follow: they keep a copy of the leader's data directory, fed by the replication
stream, and relay their clients' AMQP and HTTP connections to the leader. The pieces:

- etcd.py: a small etcd v3 client over etcd's JSON gateway (aiohttp).
- membership.py: the lease, the leader key (its create revision is the epoch), the node
  keys and the in-sync set.
- protocol.py: the replication stream's messages.
- leader.py: the leader's side: a full sync by checksums for each follower that connects,
  then the stream of writes, replacements and deletions; which records every in-sync
  follower has fsynced (what may be confirmed).
- follower.py: the follower's side: applies the stream to its data directory, fsyncs, acks.
- proxy.py: relays a follower's client connections to the leader.
- node.py: a node's life: follow, campaign, lead, and step down.
"""
