"""Durability: the append-only log, recovery and compaction (see log.py)."""
from mq.store.log import Recovered, RecoveredQueue, Store, StoreError

__all__ = ["Recovered", "RecoveredQueue", "Store", "StoreError"]
