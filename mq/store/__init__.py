"""Durability: the append-only log, recovery and compaction (see log.py)."""
from mq.store.format import StoreError
from mq.store.log import Store
from mq.store.recovery import Recovered, RecoveredQueue

__all__ = ["Recovered", "RecoveredQueue", "Store", "StoreError"]
