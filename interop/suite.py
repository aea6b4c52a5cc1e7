"""Running every (scenario, client) pair against one or more brokers, concurrently."""
from __future__ import annotations

import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from .broker import Broker
from .driver_process import run_driver
from .outcome import FAIL, NA, NOT_INSTALLED, SKIPPED, TIMEOUT, Outcome, judge, known_failure
from .registry import BY_NAME as CLIENTS_BY_NAME, Client
from .scenarios import REFERENCE_CLIENT, Ctx, Plan, Scenario

REFERENCE = CLIENTS_BY_NAME[REFERENCE_CLIENT]

Cell = tuple[str, str]  # (scenario, client)


@dataclass
class BrokerResult:
    broker: Broker
    cells: dict[Cell, Outcome] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Suite:
    scenarios: list[Scenario]
    clients: list[Client]
    short: bool
    jobs: int = 6
    timeout_scale: float = 1.0
    run_id: str = field(default_factory=lambda: "interop-" + secrets.token_hex(3))
    progress: Callable[[str], None] = lambda _msg: None
    max_seconds: float | None = None  # a budget for the whole run: later cells get what is left
    _deadline: float = float("inf")

    def plan(self, scenario: Scenario, client: Client, url: str) -> Plan:
        # The same names on every broker, so the observations compare one to one.
        return scenario.build(Ctx(f"{self.run_id}.{client.name}.{scenario.name}", url, self.short))

    def applies(self, scenario: Scenario, client: Client) -> bool:
        if scenario.only is not None:
            return client.name in scenario.only
        return not client.only_own_scenarios

    def run(self, brokers: list[Broker]) -> list[BrokerResult]:
        results = [BrokerResult(b) for b in brokers]
        installed = {c.name: c.not_installed() for c in self.clients}
        normal: list[tuple[BrokerResult, Scenario, Client]] = []
        restarting: dict[int, list[tuple[Scenario, Client]]] = {}
        for i, res in enumerate(results):
            for s in self.scenarios:
                for c in self.clients:
                    if not self.applies(s, c):
                        res.cells[(s.name, c.name)] = Outcome(NA, "scenario not written for this client")
                    elif installed[c.name]:
                        res.cells[(s.name, c.name)] = Outcome(NOT_INSTALLED, installed[c.name])
                    elif s.needs_restart and res.broker.restart is None:
                        res.cells[(s.name, c.name)] = Outcome(SKIPPED, res.broker.restart_missing)
                    elif s.needs_restart:
                        restarting.setdefault(i, []).append((s, c))
                    else:
                        normal.append((res, s, c))
        started = time.monotonic()
        if self.max_seconds:
            self._deadline = started + self.max_seconds
        # Idle scenarios (a minute of heartbeats) each get a thread of their own, so they wait
        # side by side instead of holding the worker slots; slow ones first in the pool.
        idle = [job for job in normal if job[1].idle]
        busy = sorted((job for job in normal if not job[1].idle),
                      key=lambda job: -job[1].build(Ctx("x", job[0].broker.url, self.short)).timeout)
        with ThreadPoolExecutor(max_workers=max(1, len(idle))) as waiting, \
                ThreadPoolExecutor(max_workers=self.jobs) as pool:
            idle_done = [waiting.submit(self._run_cell, *job) for job in idle]
            list(pool.map(lambda job: self._run_cell(*job), busy))
            for future in idle_done:
                future.result()
            # Restarting a broker would break everyone's connections: those scenarios go last,
            # all clients' "before" halves, one restart, then all "after" halves; each broker
            # does this on its own thread, so two brokers restart side by side.
            with ThreadPoolExecutor(max_workers=max(1, len(restarting))) as brokers_pool:
                list(brokers_pool.map(lambda item: self._run_restart(pool, results[item[0]], item[1]),
                                      restarting.items()))
        for res in results:
            res.seconds = time.monotonic() - started
        return results

    def _timeout(self, plan: Plan) -> float:
        return max(0.0, min(plan.timeout * self.timeout_scale, self._deadline - time.monotonic()))

    def _out_of_time(self, res: BrokerResult, cells: list[Cell]) -> bool:
        if time.monotonic() < self._deadline:
            return False
        for cell in cells:
            res.cells[cell] = Outcome(TIMEOUT, f"not run: the run's budget (--max-seconds {self.max_seconds:g}) was used up")
        return True

    def _run_cell(self, res: BrokerResult, s: Scenario, c: Client) -> None:
        if self._out_of_time(res, [(s.name, c.name)]):
            return
        plan = self.plan(s, c, res.broker.url)
        url, timeout = res.broker.url, self._timeout(plan)
        runs = []
        for who, steps in ((REFERENCE, plan.reference_before), (c, plan.steps), (REFERENCE, plan.reference_after)):
            if steps:
                runs.append((who, run_driver(who, s.name, url, steps, timeout)))
        seconds = sum(r.seconds for _, r in runs)
        broken = next(((who, r) for who, r in runs if r.observed is None or "_abort" in r.observed), None)
        if broken and broken[0] is not c:
            # The reference side failed: say so rather than blame the client under test.
            who, r = broken
            why = r.problem or f"{r.observed['_abort']['op']}: {r.observed['_abort'].get('detail', '')}"
            res.cells[(s.name, c.name)] = Outcome(FAIL, f"reference client {who.name} failed: {why}"[:300],
                                                  seconds=seconds)
        elif broken:
            _, r = broken
            res.cells[(s.name, c.name)] = self._verdict(plan, r.observed, r.problem, seconds, r.where, c)
        else:
            merged: dict = {}
            for _, r in runs:
                merged.update(r.observed or {})
            res.cells[(s.name, c.name)] = self._verdict(plan, merged, None, seconds, "", c)
        known_failure(res.cells[(s.name, c.name)], c.known_failure(s.name))
        self.progress(f"{res.broker.label}: {s.name} x {c.name}: {res.cells[(s.name, c.name)].status}")

    def _verdict(self, plan: Plan, observed: dict | None, problem: str | None, seconds: float,
                 where: str = "", client: Client | None = None) -> Outcome:
        if problem == "timeout":
            out = Outcome(TIMEOUT, f"timeout after {self._timeout(plan):.0f}s {where}".strip())
        elif observed is None:
            out = Outcome(FAIL, problem or "no report")
        else:
            out = judge(plan, observed)
        out.seconds = seconds
        return out

    def _run_restart(self, pool: ThreadPoolExecutor, res: BrokerResult,
                     jobs: list[tuple[Scenario, Client]]) -> None:
        plans = {(s.name, c.name): self.plan(s, c, res.broker.url) for s, c in jobs}
        if self._out_of_time(res, list(plans)):
            return
        first = dict(zip(plans, pool.map(
            lambda sc: run_driver(sc[1], sc[0].name, res.broker.url, plans[(sc[0].name, sc[1].name)].steps,
                                  self._timeout(plans[(sc[0].name, sc[1].name)])), jobs)))
        self.progress(f"{res.broker.label}: restarting the broker")
        try:
            res.broker.restart()  # type: ignore[misc]
        except Exception as e:  # noqa: BLE001 - reported in every affected cell
            for cell in plans:
                res.cells[cell] = Outcome(FAIL, f"broker restart failed: {e}"[:300])
            return
        second = dict(zip(plans, pool.map(
            lambda sc: run_driver(sc[1], sc[0].name, res.broker.url,
                                  plans[(sc[0].name, sc[1].name)].after_restart or [],
                                  self._timeout(plans[(sc[0].name, sc[1].name)])), jobs)))
        for cell, plan in plans.items():
            a, b = first[cell], second[cell]
            if a.observed is None or b.observed is None:
                bad = a if a.observed is None else b
                res.cells[cell] = self._verdict(plan, None, bad.problem, a.seconds + b.seconds, bad.where)
            else:
                res.cells[cell] = self._verdict(plan, {**a.observed, **b.observed}, None,
                                                a.seconds + b.seconds)
