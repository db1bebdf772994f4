"""Fleet simulation: 10,000 agents come back after a server outage (virtual clock).

Drives the agent's real ``forwarder.retry.RetryPolicy`` (with its jitter) and
``forwarder.concurrency.ConcurrencyController`` under a virtual clock (an event heap; nothing
sleeps) against a modelled ILA-SOC server, and reports how fast the fleet drains the backlog an
outage left, how hard it hits the server while doing so, and how many requests are rejected.
The model, the definitions and the figures are in bench/FLEET_SIM.md.

    /work/main/.venv/bin/python bench/fleet_sim.py            # 10,000 agents, both Retry-After
    /work/main/.venv/bin/python bench/fleet_sim.py --quick    # 1,000 agents (capacity scaled)
    PYTHONPATH=/work/main /tmp/fleetvenv/bin/python bench/fleet_sim.py --plot docs/fleet_sim.png

The Markdown table goes to stdout, progress to stderr. ``--plot`` needs matplotlib.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import shlex
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from forwarder.concurrency import DEFAULT_MIN_WINDOW, ConcurrencyController, Ticket
from forwarder.retry import RETRY_AFTER_MAX, RetryPolicy
from forwarder.signals import Signal

# Event kinds, in the heap as (time, seq, kind, payload).
WAKE, DONE, ANSWER, OUTAGE_START, OUTAGE_END = range(5)
# Answer statuses the agent can get.
OK, REJECTED, REFUSED = 200, 503, -1

RETRY_AFTER_POLICIES = ("queue", "fixed", "none")
# An answer on its way to an agent: (agent, entries, ticket, status, Retry-After seconds).
Answer = tuple["Agent", int, Ticket, int, float | None]


@dataclass(frozen=True)
class SimConfig:
    """Everything that defines one run; the defaults are the documented scenario."""

    agents: int = 10_000
    capacity: float = 400.0  # full batches (batch_size entries) per second the server serves
    batch_size: int = 500
    rate: float = 10.0  # lines/s each agent reads (fleet input = agents x rate)
    batch_interval: float = 5.0  # a partial batch is sent once its oldest line is this old
    max_in_flight: int = 8
    retry_interval: float = 30.0  # RetryPolicy cap
    full_batch_s: float = 0.25  # service time of a full batch on one worker
    queue_s: float = 10.0  # admission: 503 when the queued work exceeds this many seconds
    retry_after: str = "queue"  # queue | fixed | none
    retry_after_fixed: float = 10.0
    net_rtt: tuple[float, float] = (0.02, 0.10)  # each agent's network round trip, uniform
    warmup: float = 30.0  # normal operation before the outage
    outage: float = 600.0
    tail: float = 30.0  # simulated after the last backlog drained
    max_time: float = 4_000.0  # stop here even if not drained
    seed: int = 1
    variant: str = "real"  # "real" or a labelled proposed change (see VARIANTS)

    @property
    def capacity_lines(self) -> float:
        return self.capacity * self.batch_size

    @property
    def input_lines(self) -> float:
        return self.agents * self.rate

    @property
    def workers(self) -> int:
        return max(1, round(self.capacity * self.full_batch_s))

    @property
    def line_s(self) -> float:
        """Service time of one entry on one worker (the per-entry classification)."""
        return self.workers / self.capacity_lines


@dataclass(frozen=True)
class SimResult:
    config: SimConfig
    recovery_at: float
    backlog_at_recovery: float  # lines not yet acked, summed over agents
    drained_at: float | None  # when the last agent got below one batch of unacked lines
    ideal_drain_s: float
    peak_offered: float  # highest 1-s offered load after recovery, in multiples of capacity
    peak_offered_at: float
    requests_after: int
    rejected_after: int
    refused_after: int
    max_limit_seen: int
    cpu_s: float
    wall_s: float
    series: dict[str, list[float]] = field(repr=False)

    @property
    def drain_s(self) -> float | None:
        return None if self.drained_at is None else self.drained_at - self.recovery_at

    @property
    def drain_ratio(self) -> float | None:
        d = self.drain_s
        return None if d is None else d / self.ideal_drain_s

    @property
    def reject_share(self) -> float:
        return self.rejected_after / max(1, self.requests_after)


class VirtualClock:
    """The simulation's time; the controllers read it through ``__call__``."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Agent:
    """One agent's sending state: what the forwarder holds besides the buffer."""

    __slots__ = (
        "acked",
        "backlogged",
        "ctrl",
        "idx",
        "last_lease",
        "leased",
        "net",
        "p0",
        "paused_until",
        "redo",
        "retry",
        "wake_at",
    )

    def __init__(
        self,
        idx: int,
        net: float,
        p0: float,
        last_lease: float,
        ctrl: ConcurrencyController,
        retry: RetryPolicy,
    ) -> None:
        self.idx = idx
        self.net = net
        self.p0 = p0  # lines already read at t = 0
        self.acked = 0
        self.leased = 0
        self.last_lease = last_lease
        self.paused_until = 0.0
        self.wake_at = math.inf
        self.ctrl = ctrl
        self.retry = retry
        self.backlogged = False
        self.redo: list[int] = []  # failed batches (their sizes), sent again first


# -- variants -------------------------------------------------------------------------------
# "real" is the code as it is. The others are labelled demonstrations, built here only:
# "floor1" configures the real controller (no code changed); "ra-jitter" and
# "jitter-before-cap" subclass RetryPolicy: a PROPOSED change and a known ANTI-PATTERN.

VARIANTS: dict[str, str] = {
    "real": "RetryPolicy and ConcurrencyController as they are (pacing below one request)",
    "floor1": "the controller with min_window=1: never less than one request in flight per "
    "agent (the issue's rule as first written, no pacing)",
    "floor1+ra-jitter": "floor1, and PROPOSED for retry.py: a Retry-After is a minimum, "
    "spread x1-1.5",
    "jitter-before-cap": "ANTI-PATTERN (Fleet reconnect storm): full jitter on the uncapped "
    "delay, then the cap, so long failures all wait exactly retry_interval",
}


class RetryAfterJitterPolicy(RetryPolicy):
    """PROPOSED for forwarder/retry.py (demonstrated here only): spread a Retry-After.

    A Retry-After is honoured as a minimum and spread over [1, 1.5] x its value (still at
    most RETRY_AFTER_MAX), so that every agent told "come back in 10 s" does not come back
    in the same second.
    """

    def next_delay(self, retry_after: float | None = None) -> float:
        delay = super().next_delay(retry_after)
        if retry_after is None:
            return delay
        return min(RETRY_AFTER_MAX, delay * random.uniform(1.0, 1.5))


class JitterBeforeCapPolicy(RetryPolicy):
    """ANTI-PATTERN (demonstrated here only): the jitter is drawn before the cap.

    ``min(cap, uniform(0, base ** n))``: once ``base ** n`` is well past the cap almost every
    draw is cut to the cap, so agents that failed together retry in lock-step.
    """

    def next_delay(self, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return super().next_delay(retry_after)
        self.failures += 1
        uncapped = self.factor * self.base ** min(self.failures - 1, 60)
        return min(self.cap, random.uniform(0.0, uncapped))


def make_retry(cfg: SimConfig, clock: Callable[[], float]) -> RetryPolicy:
    if cfg.variant == "floor1+ra-jitter":
        return RetryAfterJitterPolicy(cfg.retry_interval, clock=clock)
    if cfg.variant == "jitter-before-cap":
        return JitterBeforeCapPolicy(cfg.retry_interval, clock=clock)
    return RetryPolicy(cfg.retry_interval, clock=clock)


def make_controller(cfg: SimConfig, clock: Callable[[], float]) -> ConcurrencyController:
    """The controller as the forwarder builds it: cap max_in_flight, retry_interval, batch."""
    return ConcurrencyController(
        cfg.max_in_flight,
        clock=clock,
        max_gap_s=cfg.retry_interval,
        max_size=cfg.batch_size,
        min_window=1.0 if cfg.variant.startswith("floor1") else DEFAULT_MIN_WINDOW,
    )


# -- the simulation -------------------------------------------------------------------------


class FleetSim:
    """Agents, one server, one event heap."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        random.seed(cfg.seed)  # backoff.full_jitter draws from the random module
        self.clock = VirtualClock()
        self.heap: list[tuple[float, int, int, object]] = []
        self.seq = 0
        lo, hi = cfg.net_rtt
        self.agents: list[Agent] = []
        for i in range(cfg.agents):
            age = self.rng.uniform(0.0, cfg.batch_interval)  # random phase
            self.agents.append(
                Agent(
                    i,
                    self.rng.uniform(lo, hi),
                    age * cfg.rate,
                    -age,
                    make_controller(cfg, self.clock),
                    make_retry(cfg, self.clock),
                )
            )
        # server
        self.workers = cfg.workers
        self.line_s = cfg.line_s
        self.down = False
        self.busy = 0
        self.queue: deque[tuple[Agent, int, Ticket]] = deque()
        self.queued_lines = 0
        self.queue_cap_lines = cfg.queue_s * cfg.capacity_lines
        self.in_service: dict[int, tuple[Agent, int, Ticket]] = {}
        self.rid = 0
        # measurements, per second of simulated time
        n = int(cfg.max_time) + 2
        self.offered_lines = [0] * n
        self.offered_req = [0] * n
        self.rejected_req = [0] * n
        self.refused_req = [0] * n
        self.good_lines = [0] * n
        self.acked_lines = [0] * n
        self.window_sum = [0.0] * n  # sum of windows at answers, / answers = mean window
        self.answers = [0] * n
        self.recovery_at = cfg.warmup + cfg.outage
        self.backlog_at_recovery = 0.0
        self.n_backlogged = -1
        self.drained_at: float | None = None
        self.max_limit_seen = 1

    def push(self, t: float, kind: int, payload: object) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, kind, payload))

    def run(self) -> SimResult:
        cfg = self.cfg
        started, cpu = time.perf_counter(), time.process_time()
        for a in self.agents:
            self.dispatch(a, 0.0)
        self.push(cfg.warmup, OUTAGE_START, None)
        self.push(self.recovery_at, OUTAGE_END, None)
        heap = self.heap
        clock = self.clock
        end = cfg.max_time
        pop = heapq.heappop
        dispatch, done, answer = self.dispatch, self.done, self.answer
        while heap:
            t, _, kind, payload = pop(heap)
            if t >= end:
                break
            clock.now = t
            if kind == WAKE:
                if payload.wake_at == t:  # type: ignore[attr-defined]
                    payload.wake_at = math.inf  # type: ignore[attr-defined]
                    dispatch(payload, t)  # type: ignore[arg-type]
            elif kind == DONE:
                done(payload, t)
            elif kind == ANSWER:
                answer(payload, t)  # type: ignore[arg-type]
            elif kind == OUTAGE_START:
                self.outage_start(t)
            else:
                self.outage_end(t)
            if self.drained_at is not None and t >= self.drained_at + cfg.tail:
                end = t
                break
        return self.result(end, time.process_time() - cpu, time.perf_counter() - started)

    # -- the agent ---------------------------------------------------------------------------

    def dispatch(self, a: Agent, now: float) -> None:
        """Start batches while the controller allows and a batch is due (forwarder._lease)."""
        cfg = self.cfg
        if now < a.paused_until:
            self.wake(a, a.paused_until)
            return
        while True:
            if a.redo:  # a batch that failed goes again, as it was (Batch.retry)
                n = a.redo[-1]
            else:
                # lines read and not yet leased; 1e-6: float slack, so that a wake-up lands
                pending = cfg.rate * now + a.p0 - a.acked - a.leased + 1e-6
                due = a.last_lease + cfg.batch_interval
                if pending >= cfg.batch_size:
                    n = cfg.batch_size
                elif pending >= 1 and now >= due:
                    n = int(pending)
                else:
                    if pending < 1 and now + (1 - pending) / cfg.rate > due:
                        due = now + (1 - pending) / cfg.rate
                    full_at = now + (cfg.batch_size - pending) / cfg.rate
                    if full_at < due:
                        due = full_at
                    self.wake(a, due if due > now + 1e-3 else now + 1e-3)
                    return
            ticket = a.ctrl.try_start()
            if ticket is None:
                wait = a.ctrl.wait_s()  # paced: wake then; limit reached: an answer wakes us
                if wait < math.inf:
                    self.wake(a, now + (wait if wait > 1e-3 else 1e-3))
                return
            if a.redo:
                a.redo.pop()
            else:
                a.leased += n
                a.last_lease = now
            self.arrive(a, n, ticket, now)

    def wake(self, a: Agent, t: float) -> None:
        if t < a.wake_at:
            a.wake_at = t
            self.push(t, WAKE, a)

    def answer(self, payload: Answer, now: float) -> None:
        a, n, ticket, status, retry_after = payload
        b = int(now)
        if status == OK:
            a.leased -= n
            a.acked += n
            self.acked_lines[b] += n
            a.ctrl.finished(ticket, Signal.OK, size=n)
            a.retry.reset()
            if a.backlogged and self.cfg.rate * now + a.p0 - a.acked < self.cfg.batch_size:
                a.backlogged = False
                self.n_backlogged -= 1
                if self.n_backlogged == 0:
                    self.drained_at = now
        else:
            a.redo.append(n)
            signal = Signal.UNREACHABLE if status == REFUSED else Signal.BACKPRESSURE
            a.ctrl.finished(ticket, signal, size=n)
            delay = a.retry.next_delay(retry_after)
            a.paused_until = max(a.paused_until, now + delay)
        limit = a.ctrl.limit
        self.window_sum[b] += a.ctrl.window
        self.answers[b] += 1
        if limit > self.max_limit_seen:
            self.max_limit_seen = limit
        self.dispatch(a, now)

    # -- the server --------------------------------------------------------------------------

    def arrive(self, a: Agent, n: int, ticket: Ticket, now: float) -> None:
        b = int(now)
        self.offered_lines[b] += n
        self.offered_req[b] += 1
        if self.down:
            self.refused_req[b] += 1
            self.push(now + a.net, ANSWER, (a, n, ticket, REFUSED, None))
        elif self.queued_lines >= self.queue_cap_lines:
            self.rejected_req[b] += 1
            self.push(now + a.net, ANSWER, (a, n, ticket, REJECTED, self.retry_after_value()))
        elif self.busy < self.workers:
            self.serve((a, n, ticket), now)
        else:
            self.queue.append((a, n, ticket))
            self.queued_lines += n

    def retry_after_value(self) -> float | None:
        cfg = self.cfg
        if cfg.retry_after == "none":
            return None
        if cfg.retry_after == "fixed":
            return cfg.retry_after_fixed
        # "come back when the queue has drained", with spread, as whole seconds (the header)
        wait = self.queued_lines / cfg.capacity_lines
        return float(max(1, math.ceil(wait * self.rng.uniform(0.5, 1.5))))

    def serve(self, req: tuple[Agent, int, Ticket], now: float) -> None:
        self.busy += 1
        self.rid += 1
        self.in_service[self.rid] = req
        self.push(now + req[1] * self.line_s, DONE, self.rid)

    def done(self, payload: object, now: float) -> None:
        req = self.in_service.pop(payload, None)  # type: ignore[call-overload]
        if req is None:
            return  # its connection was reset by the outage
        a, n, ticket = req
        self.busy -= 1
        self.good_lines[int(now)] += n
        self.push(now + a.net, ANSWER, (a, n, ticket, OK, None))
        if self.queue:
            nxt = self.queue.popleft()
            self.queued_lines -= nxt[1]
            self.serve(nxt, now)

    def outage_start(self, now: float) -> None:
        """The server goes away: open connections are reset, new ones refused."""
        self.down = True
        for a, n, ticket in [*self.in_service.values(), *self.queue]:
            self.push(now + a.net, ANSWER, (a, n, ticket, REFUSED, None))
        self.in_service.clear()
        self.queue.clear()
        self.busy = 0
        self.queued_lines = 0

    def outage_end(self, now: float) -> None:
        self.down = False
        cfg = self.cfg
        backlog = 0.0
        self.n_backlogged = 0
        for a in self.agents:
            unacked = cfg.rate * now + a.p0 - a.acked
            backlog += unacked
            if unacked >= cfg.batch_size:
                a.backlogged = True
                self.n_backlogged += 1
        self.backlog_at_recovery = backlog
        if self.n_backlogged == 0:
            self.drained_at = now

    # -- results -------------------------------------------------------------------------------

    def result(self, end: float, cpu: float, wall: float) -> SimResult:
        cfg = self.cfg
        r0 = int(self.recovery_at)
        last = min(int(end), len(self.offered_lines) - 1)
        after = range(r0 + 1, last)  # whole seconds after recovery
        peak_i = max(after, key=lambda i: self.offered_lines[i]) if after else min(r0, last)
        produced0 = sum(a.p0 for a in self.agents)
        series: dict[str, list[float]] = {"t": [], "offered": [], "goodput": [], "backlog": []}
        series.update(rejected=[], mean_window=[])
        acked = 0
        for i in range(last):
            acked += self.acked_lines[i]
            series["t"].append(float(i))
            series["offered"].append(self.offered_lines[i] / cfg.capacity_lines)
            series["goodput"].append(self.good_lines[i] / cfg.capacity_lines)
            series["rejected"].append(float(self.rejected_req[i]))
            series["backlog"].append(cfg.input_lines * (i + 1) + produced0 - acked)
            series["mean_window"].append(self.window_sum[i] / max(1, self.answers[i]))
        return SimResult(
            config=cfg,
            recovery_at=self.recovery_at,
            backlog_at_recovery=self.backlog_at_recovery,
            drained_at=self.drained_at,
            ideal_drain_s=self.backlog_at_recovery / (cfg.capacity_lines - cfg.input_lines),
            peak_offered=self.offered_lines[peak_i] / cfg.capacity_lines,
            peak_offered_at=peak_i - self.recovery_at,
            requests_after=sum(self.offered_req[r0:last]),
            rejected_after=sum(self.rejected_req[r0:last]),
            refused_after=sum(self.refused_req[r0:last]),
            max_limit_seen=self.max_limit_seen,
            cpu_s=cpu,
            wall_s=wall,
            series=series,
        )


# -- report ---------------------------------------------------------------------------------

GOAL_DRAIN, GOAL_PEAK, GOAL_REJECTS = 1.25, 1.5, 0.10


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


RA_LABELS = {"queue": "≈ queue/C × U(0.5, 1.5)", "none": "none (503 alone)"}


def table(results: Sequence[SimResult]) -> str:
    """One Markdown row per run; ✓/✗ against the goals."""
    head = (
        "| variant | Retry-After | drain (s) | ideal (s) | drain / ideal | peak offered (× C) "
        "| 503s / requests | max limit | CPU (wall) s |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for r in results:
        c = r.config
        ra = RA_LABELS.get(c.retry_after, f"fixed {c.retry_after_fixed:g} s")
        ratio = r.drain_ratio
        drain = "not drained" if r.drain_s is None else f"{r.drain_s:.0f}"
        ratio_s = "–" if ratio is None else f"{ratio:.2f} {_mark(ratio <= GOAL_DRAIN)}"
        rows.append(
            f"| {c.variant} | {ra} | {drain} | {r.ideal_drain_s:.0f} | {ratio_s} "
            f"| {r.peak_offered:.2f} {_mark(r.peak_offered <= GOAL_PEAK)} "
            f"(+{r.peak_offered_at:.0f} s) "
            f"| {100 * r.reject_share:.1f} % {_mark(r.reject_share <= GOAL_REJECTS)} "
            f"({r.rejected_after:,} / {r.requests_after:,}) "
            f"| {r.max_limit_seen} | {r.cpu_s:.0f} ({r.wall_s:.0f}) |"
        )
    return head + "\n".join(rows) + "\n"


def plot(results: Sequence[SimResult], path: Path) -> None:
    """One panel per run: offered load and goodput (x C), total backlog on the right axis."""
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("--plot needs matplotlib (pip install matplotlib)") from None

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(11, 3.6 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results, strict=True):
        s, c = r.series, r.config
        t = [x - r.recovery_at for x in s["t"]]
        ax.plot(t, s["offered"], lw=0.8, label="offered load (×C)", color="tab:red")
        ax.plot(t, s["goodput"], lw=0.8, label="goodput (×C)", color="tab:green")
        ax.axhline(1.0, color="grey", lw=0.6, ls="--")
        ax.axhline(GOAL_PEAK, color="tab:red", lw=0.6, ls=":")
        ax.axvspan(-c.outage, 0, color="grey", alpha=0.12, label="outage")
        if r.drained_at is not None:
            ax.axvline(r.drained_at - r.recovery_at, color="tab:blue", lw=0.8, ls="--")
        ax.set_ylim(0, max(2.0, min(6.0, r.peak_offered * 1.1)))
        ax.set_ylabel("× capacity")
        ax.set_xlabel("seconds after the server came back")
        ax2 = ax.twinx()
        ax2.plot(t, [b / 1e6 for b in s["backlog"]], lw=1.0, color="tab:blue", label="backlog")
        ax2.set_ylabel("total backlog (M lines)")
        ax.set_title(
            f"{c.agents:,} agents, C={c.capacity:g} batches/s; variant {c.variant}; "
            f"Retry-After {c.retry_after}",
            fontsize=10,
        )
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--agents", type=int, default=None)
    p.add_argument("--capacity", type=float, default=None, help="full batches/s (default 400)")
    p.add_argument("--outage", type=float, default=SimConfig.outage, help="seconds")
    p.add_argument("--seed", type=int, default=SimConfig.seed)
    p.add_argument("--quick", action="store_true", help="1,000 agents, capacity scaled to 40")
    p.add_argument("--queue-s", type=float, default=SimConfig.queue_s)
    p.add_argument("--retry-after", choices=[*RETRY_AFTER_POLICIES, "both"], default="both")
    p.add_argument("--retry-after-fixed", type=float, default=SimConfig.retry_after_fixed)
    p.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="repeatable")
    p.add_argument("--plot", type=Path, default=None, help="write a PNG (needs matplotlib)")
    args = p.parse_args(argv)
    agents = args.agents or (1_000 if args.quick else SimConfig.agents)
    capacity = args.capacity or SimConfig.capacity * agents / SimConfig.agents
    base = SimConfig(
        agents=agents,
        capacity=capacity,
        outage=args.outage,
        seed=args.seed,
        queue_s=args.queue_s,
        retry_after_fixed=args.retry_after_fixed,
    )
    policies = ["queue", "fixed"] if args.retry_after == "both" else [args.retry_after]
    results = []
    for variant in args.variant or ["real"]:
        for ra in policies:
            cfg = replace(base, retry_after=ra, variant=variant)
            print(f"running {variant} / Retry-After {ra} …", file=sys.stderr, flush=True)
            results.append(FleetSim(cfg).run())
    args_given = list(argv) if argv is not None else sys.argv[1:]
    cmd = shlex.join(["python", "bench/fleet_sim.py", *args_given])
    print(f"`{cmd}`\n")
    print(
        f"{agents:,} agents × {base.rate:g} lines/s = {base.input_lines:,.0f} lines/s input; "
        f"server {base.capacity:g} batches/s × {base.batch_size} = "
        f"{base.capacity_lines:,.0f} lines/s ({base.workers} workers × "
        f"{base.full_batch_s * 1000:.0f} ms per full batch), queue ≤ {base.queue_s:g} s of work; "
        f"outage {base.outage:g} s; seed {base.seed}.\n"
    )
    print(table(results))
    print(
        f"Goals: drain ≤ {GOAL_DRAIN:g} × ideal (ideal = backlog at recovery / (capacity − "
        f"input)), peak offered load in any 1-s window ≤ {GOAL_PEAK:g} × capacity, 503s ≤ "
        f"{GOAL_REJECTS:.0%} of the requests after recovery. Variants: "
        + "; ".join(f"{v}: {VARIANTS[v]}" for v in dict.fromkeys(args.variant or ["real"]))
        + "."
    )
    if args.plot:
        plot(results, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
