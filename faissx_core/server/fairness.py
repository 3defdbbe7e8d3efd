"""Fair queueing of pooled reads per tenant, so one tenant's heavy reads cannot starve another's.

Without it the pool is one FIFO: a tenant that sends a stream of one-second IVF searches fills
every worker and the queue in front of them, and another tenant's one-millisecond search waits
behind all of them. Here each tenant has its own queue, and free workers are handed out:

* **by work served** (start-time fair queueing): each tenant has a virtual clock advanced by
  the estimated work of each request it starts (at least ``quantum``); the next worker goes to
  the waiting tenant whose clock is least. A tenant sending cheap requests gets many through
  for each heavy one of another. A tenant that was idle starts at the current clock: idleness
  banks no credit.
* **with a worker kept for others**: a *heavy* request (estimated work above ``heavy``) starts
  only while its tenant runs fewer than ``slots - 1`` heavy ones, so however many heavy
  requests are queued, one worker stays free for the next tenant's request.

Nothing waits here while a worker is free for it; a tenant alone on the server keeps every
worker for light requests and all but one for heavy ones (and faiss's own threads still use
every core for a lone search: backend.ThreadBudget).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field


@dataclass
class _Tenant:
    queue: deque[tuple[float, Callable[[], None]]] = field(default_factory=deque)
    #: Work started so far, on the shared virtual clock.
    clock: float = 0.0
    running: int = 0
    heavy_running: int = 0


class FairScheduler:
    """Hands ``slots`` pool workers to tenants' queued jobs, fairly (see the module doc)."""

    def __init__(self, pool: Executor, slots: int, heavy: float, quantum: float) -> None:
        self.pool = pool
        self.slots = max(1, slots)
        self.heavy = heavy
        self.quantum = quantum
        self._tenants: dict[str, _Tenant] = {}
        self._clock = 0.0  # the clock of the last job started
        self._running = 0
        self._mutex = threading.Lock()

    def submit(self, tenant: str, cost: float, job: Callable[[], None]) -> None:
        """Run ``job`` on the pool when it is ``tenant``'s turn; ``cost``: its estimated work."""
        with self._mutex:
            state = self._tenants.setdefault(tenant, _Tenant())
            if not state.queue and not state.running:
                state.clock = max(state.clock, self._clock)  # idleness banks no credit
            state.queue.append((cost, job))
            started = self._pick()
        self._launch(started)

    def queued(self) -> int:
        with self._mutex:
            return sum(len(t.queue) for t in self._tenants.values())

    def _may_start(self, state: _Tenant, cost: float) -> bool:
        if cost > self.heavy and self.slots > 1:
            return state.heavy_running < self.slots - 1
        return True

    def _pick(self) -> list[tuple[Callable[..., None], str, float, Callable[[], None]]]:
        """Jobs to start now, least-served tenant first (caller holds the mutex)."""
        started = []
        while self._running < self.slots:
            best: tuple[str, _Tenant] | None = None
            for name, state in self._tenants.items():
                if (
                    state.queue
                    and self._may_start(state, state.queue[0][0])
                    and (best is None or state.clock < best[1].clock)
                ):
                    best = (name, state)
            if best is None:
                break
            name, state = best
            cost, job = state.queue.popleft()
            self._clock = state.clock
            state.clock += max(cost, self.quantum)
            state.running += 1
            state.heavy_running += cost > self.heavy
            self._running += 1
            started.append((self._run, name, cost, job))
        return started

    def _run(self, tenant: str, cost: float, job: Callable[[], None]) -> None:
        try:
            job()
        finally:
            with self._mutex:
                self._running -= 1
                state = self._tenants[tenant]
                state.running -= 1
                state.heavy_running -= cost > self.heavy
                if not state.running and not state.queue:
                    del self._tenants[tenant]
                started = self._pick()
            self._launch(started)

    def _launch(
        self, started: list[tuple[Callable[..., None], str, float, Callable[[], None]]]
    ) -> None:
        for run, *args in started:
            try:
                self.pool.submit(run, *args)
            except RuntimeError:  # the pool is shutting down: drain the queue right here
                run(*args)
