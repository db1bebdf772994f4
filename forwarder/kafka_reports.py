"""Kafka's answers: each message's delivery report, judged by its error code.

A delivery report's error is never ``retriable()`` (librdkafka retried what it could), so the
code decides: too large / invalid record → refused for good (dead letter); a missing topic,
not in time, brokers down, anything else → sent again (forwarder/kafka_sink.py).
"""

from __future__ import annotations

import re
import threading

from forwarder.sink import Result, Verdict

# By code, since no delivery-report error is retriable(): these are refused for good.
REFUSED = frozenset({"MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE", "INVALID_RECORD"})
NO_TOPIC = frozenset({"UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION"})
# Sent and not answered in time (congestion: the forwarder sends less) / not sent at all.
LATE = frozenset({"_MSG_TIMED_OUT", "_TIMED_OUT", "REQUEST_TIMED_OUT"})
DOWN = frozenset({"_TRANSPORT", "_ALL_BROKERS_DOWN", "_PURGE_QUEUE", "_PURGE_INFLIGHT"})
# The part of librdkafka's error texts that changes from one attempt to the next.
_VOLATILE = re.compile(r" \(after \d+ms in state \w+(, \d+ identical error\(s\) suppressed)?\)")


def steady_text(text: str) -> str:
    """librdkafka's error text without what changes from one attempt to the next."""
    return _VOLATILE.sub("", text)


def no_topic_text(topic: str) -> str:
    return f"Kafka topic {topic} does not exist: create it (the agent never creates topics)"


def judge(
    code: str, text: str, *, topic: str, problem: str | None, delivery_timeout: float
) -> Result:
    """A delivery report's error (``problem``: the last error librdkafka reported)."""
    if code in REFUSED:
        return Result(Verdict.REFUSED, f"Kafka refused the message: {code}")
    if code in NO_TOPIC:
        return Result(Verdict.FAILED, no_topic_text(topic))
    if code == "_MSG_TIMED_OUT":
        why = problem or "no error reported"
        return Result(Verdict.LATE, f"Kafka did not confirm within {delivery_timeout:g} s: {why}")
    if code in LATE:
        return Result(Verdict.LATE, f"Kafka delivery failed: {code}: {text}")
    if code in DOWN:
        return Result(Verdict.DOWN, f"Kafka delivery failed: {code}: {text}")
    return Result(Verdict.FAILED, f"Kafka delivery failed: {code}: {text}")


class Reports:
    """One batch's delivery reports, filled in by librdkafka's callbacks (any thread)."""

    def __init__(self, n: int) -> None:
        self.results: list[Result | None] = [None] * n
        self.left = n
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.closed = False
        if n == 0:
            self.done.set()

    def put(self, i: int, result: Result) -> None:
        with self.lock:
            if self.closed or self.results[i] is not None:
                return  # the batch was given up on: a late report changes nothing
            self.results[i] = result
            self.left -= 1
            if self.left == 0:
                self.done.set()

    def close(self, missing: Result) -> list[Result]:
        """The results; a message without a report counts as ``missing``."""
        with self.lock:
            self.closed = True
            return [r if r is not None else missing for r in self.results]
