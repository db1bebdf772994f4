"""The reference receiver, exercised for real over HTTP on 127.0.0.1."""

from __future__ import annotations

import gzip
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from ila_agent.receiver import ReceiverServer, make_server, serve

KEY = "test-key-123"
AGENT = "agent-1"
REGISTRATION = {
    "agent_id": AGENT,
    "hostname": "web-01",
    "os_type": "Linux",
    "os_version": "6.1",
    "agent_version": "2.0.0",
    "sources": ["/var/log/auth.log"],
}


@dataclass
class Client:
    """A started receiver and a keep-alive session talking to it."""

    server: ReceiverServer
    session: requests.Session

    @property
    def base(self) -> str:
        return self.server.url

    def post(
        self, endpoint: str, body: Any, *, key: str | None = KEY, **kwargs: Any
    ) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["X-API-Key"] = key
        url = f"{self.base}/api/agent/{endpoint}"
        kwargs.setdefault("timeout", 5)
        return self.session.post(url, json=body, headers=headers, **kwargs)

    def admin(self, name: str, body: Any) -> requests.Response:
        return self.session.post(f"{self.base}/api/receiver/{name}", json=body, timeout=5)

    def get(self, name: str, **params: Any) -> Any:
        response = self.session.get(f"{self.base}/api/receiver/{name}", params=params, timeout=5)
        assert response.status_code == 200, response.text
        return response.json()

    def register(self) -> None:
        assert self.post("register", REGISTRATION).status_code == 200

    def statuses(self) -> list[tuple[str, int]]:
        return [(r["endpoint"], r["status"]) for r in self.get("requests")["requests"]]


def start(api_key: str | None = KEY, db_path: str | None = None) -> tuple[ReceiverServer, Any]:
    server = make_server(port=0, api_key=api_key, db_path=db_path)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    return server, thread


def stop(server: ReceiverServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def rx() -> Iterator[Client]:
    server, thread = start()
    with requests.Session() as session:
        yield Client(server, session)
    stop(server, thread)


def entry(n: int, uid: str | None = None, text: str | None = None) -> dict[str, Any]:
    item = {
        "log_text": text or f"line {n}",
        "source": "/var/log/auth.log",
        "timestamp": "2026-11-27T10:00:01.517Z",
        "hostname": "web-01",
    }
    if uid is not None:
        item["event_uid"] = uid
    return item


def batch(entries: list[dict[str, Any]], batch_id: str = "b1") -> dict[str, Any]:
    return {"agent_id": AGENT, "batch_id": batch_id, "logs": entries}


class TestAuthentication:
    def test_missing_or_wrong_key_is_401_without_echoing_the_key(self, rx: Client) -> None:
        """A missing or wrong X-API-Key is a 401 whose body never contains the key sent."""
        for key in (None, "wrong-secret"):
            for endpoint in ("register", "heartbeat", "ingest-batch"):
                response = rx.post(endpoint, REGISTRATION, key=key)
                assert response.status_code == 401
                assert response.json() == {"status": "error", "message": "invalid api key"}
                assert "wrong-secret" not in response.text
        assert rx.get("stats")["agents"] == 0

    def test_no_key_is_needed_when_the_receiver_has_none(self) -> None:
        """With api_key=None every request is accepted whatever X-API-Key says."""
        server, thread = start(api_key=None)
        try:
            with requests.Session() as session:
                client = Client(server, session)
                assert client.post("register", REGISTRATION, key=None).status_code == 200
                assert client.post("register", REGISTRATION, key="anything").status_code == 200
        finally:
            stop(server, thread)


class TestValidation:
    def test_bad_json_is_400(self, rx: Client) -> None:
        """A body that is not a JSON object is a 400 on every agent endpoint."""
        headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
        for endpoint in ("register", "heartbeat", "ingest-batch"):
            url = f"{rx.base}/api/agent/{endpoint}"
            for data in (b"{not json", b"[1, 2]", b""):
                response = rx.session.post(url, data=data, headers=headers, timeout=5)
                assert response.status_code == 400
                assert response.json() == {"status": "error", "message": "invalid json"}

    def test_a_non_json_content_type_is_400_like_flask(self, rx: Client) -> None:
        """As with Flask's get_json(silent=True), a body not sent as application/json is a 400."""
        body = json.dumps(REGISTRATION).encode()
        headers = {"X-API-Key": KEY, "Content-Type": "text/plain"}
        url = f"{rx.base}/api/agent/register"
        assert rx.session.post(url, data=body, headers=headers, timeout=5).status_code == 400

    def test_missing_agent_id_is_400(self, rx: Client) -> None:
        """Every agent endpoint answers 400 without a non-empty agent_id."""
        for endpoint in ("register", "heartbeat", "ingest-batch"):
            for body in ({"hostname": "web-01"}, {"agent_id": ""}, {"agent_id": 7}):
                response = rx.post(endpoint, body)
                assert response.status_code == 400
                assert response.json()["message"] == "agent_id is required"

    def test_logs_missing_not_a_list_or_empty_is_400(self, rx: Client) -> None:
        """An ingest-batch whose logs is missing, not a list or empty is a 400."""
        rx.register()
        cases: list[Any] = [None, "line", {"a": 1}, []]
        for logs in cases:
            body: dict[str, Any] = {"agent_id": AGENT, "batch_id": "b"}
            if logs is not None:
                body["logs"] = logs
            response = rx.post("ingest-batch", body)
            assert response.status_code == 400
            assert response.json()["message"] == "logs must be a non-empty list"
        assert rx.get("stats")["batches"] == 0

    def test_unknown_paths_are_404_and_logged(self, rx: Client) -> None:
        """A POST to an unknown path is a 404, recorded in the request log by its path."""
        response = rx.post("register/", REGISTRATION)
        assert response.status_code == 404
        assert rx.statuses() == [("/api/agent/register/", 404)]
        for path in ("/api/receiver/nope", "/stats"):
            assert rx.session.get(f"{rx.base}{path}", timeout=5).status_code == 404


class TestRegistration:
    def test_heartbeat_and_batch_are_404_before_register(self, rx: Client) -> None:
        """An unknown agent gets 404 'agent not registered' until it registers."""
        not_registered = {"status": "error", "message": "agent not registered"}
        heartbeat = {"agent_id": AGENT, "status": "online"}
        response = rx.post("heartbeat", heartbeat)
        assert (response.status_code, response.json()) == (404, not_registered)
        response = rx.post("ingest-batch", batch([entry(1, "u1")]))
        assert (response.status_code, response.json()) == (404, not_registered)
        response = rx.post("register", REGISTRATION)
        assert (response.status_code, response.json()) == (200, {"status": "success"})
        assert rx.post("heartbeat", heartbeat).status_code == 200
        assert rx.post("ingest-batch", batch([entry(1, "u1")])).status_code == 200
        assert rx.statuses() == [
            ("heartbeat", 404),
            ("ingest-batch", 404),
            ("register", 200),
            ("heartbeat", 200),
            ("ingest-batch", 200),
        ]
        stats = rx.get("stats")
        assert (stats["heartbeats"], stats["batches"], stats["events_unique"]) == (1, 1, 1)

    def test_registering_again_updates_the_agent(self, rx: Client) -> None:
        """A second register updates the stored agent instead of adding one."""
        rx.register()
        assert rx.post("register", dict(REGISTRATION, hostname="web-02")).status_code == 200
        (agent,) = rx.get("agents")["agents"]
        assert agent["agent_id"] == AGENT
        assert agent["hostname"] == "web-02"
        assert agent["os_type"] == "Linux"
        assert agent["sources"] == ["/var/log/auth.log"]
        assert agent["registrations"] == 2
        assert rx.get("stats")["agents"] == 1

    def test_heartbeats_are_stored_with_their_body(self, rx: Client) -> None:
        """GET heartbeats lists each stored heartbeat body with when it arrived."""
        rx.register()
        body = {"agent_id": AGENT, "status": "online", "buffer": {"pending": 3}}
        before = time.time()
        assert rx.post("heartbeat", body).status_code == 200
        assert rx.post("heartbeat", body).status_code == 200
        beats = rx.get("heartbeats")["heartbeats"]
        assert [b["body"] for b in beats] == [body, body]
        assert [b["agent_id"] for b in beats] == [AGENT, AGENT]
        assert all(before <= b["received_at"] <= time.time() for b in beats)
        assert rx.get("heartbeats", after=beats[0]["id"])["heartbeats"] == beats[1:]


class TestIngest:
    def test_the_same_batch_twice_is_deduplicated_by_event_uid(self, rx: Client) -> None:
        """Entries already stored under their event_uid are counted as duplicates, not stored."""
        rx.register()
        body = batch([entry(1, "u1"), entry(2, "u2"), entry(3, "u3")])
        first = rx.post("ingest-batch", body, headers={"Idempotency-Key": "b1"})
        assert first.status_code == 200
        assert first.json() == {"status": "success", "total": 3, "inserted": 3, "duplicates": 0}
        second = rx.post("ingest-batch", body, headers={"Idempotency-Key": "b1"})
        assert second.json() == {"status": "success", "total": 3, "inserted": 0, "duplicates": 3}
        assert rx.get("stats") == {
            "agents": 1,
            "heartbeats": 0,
            "batches": 2,
            "events_received": 6,
            "events_unique": 3,
            "requests": 3,
            "ingest_in_flight_max": 1,
        }
        batches = rx.get("batches")["batches"]
        assert [(b["idempotency_key"], b["inserted"], b["duplicates"]) for b in batches] == [
            ("b1", 3, 0),
            ("b1", 0, 3),
        ]

    def test_entries_without_event_uid_are_always_stored(self, rx: Client) -> None:
        """Without event_uid nothing can be de-duplicated: every copy is stored."""
        rx.register()
        body = batch([entry(1), entry(1), entry(2, "u2"), entry(2, "u2")])
        response = rx.post("ingest-batch", body)
        assert response.json() == {"status": "success", "total": 4, "inserted": 3, "duplicates": 1}
        assert rx.get("stats")["events_unique"] == 3

    def test_events_are_listed_by_id_with_the_full_entry(self, rx: Client) -> None:
        """GET events gives every stored column and the full entry object, paged by after/limit."""
        rx.register()
        extra = dict(entry(1, "u1"), event_id=4625, channel="Security")
        assert rx.post("ingest-batch", batch([extra, entry(2, "u2"), entry(3)], "bX")).ok
        events = rx.get("events")["events"]
        assert [e["id"] for e in events] == [1, 2, 3]
        assert events[0] == {
            "id": 1,
            "event_uid": "u1",
            "source": "/var/log/auth.log",
            "log_text": "line 1",
            "timestamp": "2026-11-27T10:00:01.517Z",
            "hostname": "web-01",
            "agent_id": AGENT,
            "batch_id": "bX",
            "entry": extra,
        }
        assert events[2]["event_uid"] is None
        assert [e["id"] for e in rx.get("events", after=1, limit=1)["events"]] == [2]
        assert rx.get("events", after=3)["events"] == []
        assert len(rx.get("events", limit=10**9)["events"]) == 3
        bad = rx.session.get(f"{rx.base}/api/receiver/events", params={"limit": "x"}, timeout=5)
        assert bad.status_code == 400

    def test_a_gzip_body_is_decoded_unless_disabled(self, rx: Client) -> None:
        """Content-Encoding: gzip is accepted; with accept_gzip false it is a 400 like Flask."""
        rx.register()
        data = gzip.compress(json.dumps(batch([entry(1, "u1")])).encode())
        headers = {
            "X-API-Key": KEY,
            "Content-Type": "application/json",
            "Content-Encoding": "gzip",
        }
        url = f"{rx.base}/api/agent/ingest-batch"
        assert rx.session.post(url, data=data, headers=headers, timeout=5).status_code == 200
        assert rx.admin("config", {"accept_gzip": False}).status_code == 200
        assert rx.session.post(url, data=data, headers=headers, timeout=5).status_code == 400

    def test_a_chunked_body_is_read(self, rx: Client) -> None:
        """A body sent with Transfer-Encoding: chunked is read like any other."""
        rx.register()
        data = json.dumps(batch([entry(1, "u1"), entry(2, "u2")])).encode()
        headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
        url = f"{rx.base}/api/agent/ingest-batch"
        response = rx.session.post(url, data=iter([data[:10], data[10:]]), headers=headers)
        assert response.json()["inserted"] == 2


class TestRequestLog:
    def test_requests_are_logged_in_arrival_order(self, rx: Client) -> None:
        """Every agent request is logged with endpoint, status, agent, size, batch and times."""
        rx.post("register", REGISTRATION, key="bad")
        rx.register()
        rx.post("ingest-batch", batch([entry(1, "u1"), entry(2, "u2")], "b7"))
        log = rx.get("requests")["requests"]
        assert [(r["id"], r["endpoint"], r["status"]) for r in log] == [
            (1, "register", 401),
            (2, "register", 200),
            (3, "ingest-batch", 200),
        ]
        assert [(r["agent_id"], r["n_logs"], r["batch_id"]) for r in log] == [
            (AGENT, None, None),
            (AGENT, None, None),
            (AGENT, 2, "b7"),
        ]
        assert log[0]["at"] <= log[1]["at"] <= log[2]["at"] <= time.time()
        assert log[0]["mono"] <= log[1]["mono"] <= log[2]["mono"]
        assert [r["id"] for r in rx.get("requests", after=2)["requests"]] == [3]
        assert rx.get("stats")["requests"] == 3


class TestScripts:
    def test_a_script_is_consumed_in_order_then_normal_processing_resumes(self, rx: Client) -> None:
        """Scripted answers (503 + Retry-After, then 302 + Location) come first, storing nothing."""
        rx.register()
        script = {
            "endpoint": "ingest-batch",
            "responses": [
                {"status": 503, "headers": {"Retry-After": "2"}},
                {"status": 302, "headers": {"Location": "http://elsewhere.invalid/x"}},
            ],
        }
        response = rx.admin("script", script)
        assert response.json() == {"status": "success", "pending": 2}
        body = batch([entry(1, "u1")])
        first = rx.post("ingest-batch", body)
        assert first.status_code == 503
        assert first.headers["Retry-After"] == "2"
        assert first.json() == {"status": "error", "message": "scripted 503"}
        second = rx.post("ingest-batch", body, allow_redirects=False)
        assert second.status_code == 302
        assert second.headers["Location"] == "http://elsewhere.invalid/x"
        assert rx.get("stats")["events_unique"] == 0
        third = rx.post("ingest-batch", body)
        assert third.json() == {"status": "success", "total": 1, "inserted": 1, "duplicates": 0}
        log = rx.get("requests")["requests"]
        assert [(r["status"], r["scripted"]) for r in log[1:]] == [
            (503, True),
            (302, True),
            (200, False),
        ]
        assert rx.get("config")["scripts"] == {"register": 0, "heartbeat": 0, "ingest-batch": 0}

    def test_a_scripted_body_and_other_endpoints(self, rx: Client) -> None:
        """A script for one endpoint leaves the others alone; a given body is sent as given."""
        script = {"endpoint": "register", "responses": [{"status": 429, "body": "slow down"}]}
        assert rx.admin("script", script).status_code == 200
        response = rx.post("register", REGISTRATION)
        assert (response.status_code, response.text) == (429, "slow down")
        assert rx.get("stats")["agents"] == 0
        rx.register()
        assert rx.post("heartbeat", {"agent_id": AGENT}).status_code == 200

    def test_a_scripted_delay_makes_the_client_time_out(self, rx: Client) -> None:
        """A scripted delay longer than the client's read timeout is a client-side timeout."""
        rx.register()
        script = {"endpoint": "heartbeat", "responses": [{"status": 200, "delay": 0.6}]}
        assert rx.admin("script", script).status_code == 200
        with pytest.raises(requests.Timeout):
            rx.post("heartbeat", {"agent_id": AGENT}, timeout=0.2)
        assert rx.get("stats")["heartbeats"] == 0

    def test_a_dropped_connection_is_a_connection_error(self, rx: Client) -> None:
        """A scripted drop closes the connection without an answer, logged with status 0."""
        rx.register()
        assert rx.admin("script", {"endpoint": "heartbeat", "responses": [{"drop": True}]}).ok
        with pytest.raises(requests.ConnectionError):
            rx.post("heartbeat", {"agent_id": AGENT})
        assert rx.statuses()[-1] == ("heartbeat", 0)
        assert rx.post("heartbeat", {"agent_id": AGENT}).status_code == 200

    def test_invalid_scripts_are_400(self, rx: Client) -> None:
        """A script for an unknown endpoint or with a malformed response is refused whole."""
        bad = [
            {"endpoint": "nope", "responses": [{"status": 503}]},
            {"endpoint": "register", "responses": {"status": 503}},
            {"endpoint": "register", "responses": [{"status": 503}, {"status": 99}]},
            {"endpoint": "register", "responses": [{"status": 503, "delay": -1}]},
            {"endpoint": "register", "responses": [{"status": 503, "colour": "red"}]},
        ]
        for script in bad:
            assert rx.admin("script", script).status_code == 400
        assert rx.get("config")["scripts"]["register"] == 0


class TestConfig:
    def test_reject_substring_rejects_the_whole_batch(self, rx: Client) -> None:
        """A batch with an entry containing reject_substring is a 400 and nothing is stored."""
        rx.register()
        assert rx.admin("config", {"reject_substring": "BAD"}).status_code == 200
        response = rx.post("ingest-batch", batch([entry(1, "u1"), entry(2, "u2", "a BAD line")]))
        assert response.status_code == 400
        assert response.json() == {"status": "error", "message": "entry 1 rejected"}
        assert rx.get("stats")["events_unique"] == 0
        assert rx.post("ingest-batch", batch([entry(1, "u1")])).status_code == 200
        assert rx.get("stats")["events_unique"] == 1

    def test_max_batch_is_413_until_disabled(self, rx: Client) -> None:
        """A batch larger than max_batch is a 413; max_batch null lifts the limit."""
        rx.register()
        response = rx.admin("config", {"max_batch": 2})
        assert response.json()["config"]["max_batch"] == 2
        three = batch([entry(1, "u1"), entry(2, "u2"), entry(3, "u3")])
        assert rx.post("ingest-batch", three).status_code == 413
        assert rx.post("ingest-batch", batch([entry(1, "u1"), entry(2, "u2")])).status_code == 200
        assert rx.admin("config", {"max_batch": None}).status_code == 200
        assert rx.post("ingest-batch", three).json()["inserted"] == 1

    def test_delay_slows_every_batch(self, rx: Client) -> None:
        """The delay setting is waited before each ingest-batch is answered."""
        rx.register()
        assert rx.admin("config", {"delay": 0.3}).status_code == 200
        started = time.monotonic()
        assert rx.post("ingest-batch", batch([entry(1, "u1")])).status_code == 200
        assert time.monotonic() - started >= 0.3

    def test_forget_agents_makes_the_next_heartbeat_404(self, rx: Client) -> None:
        """After forget_agents the agent must register again."""
        rx.register()
        assert rx.admin("config", {"forget_agents": True}).status_code == 200
        assert rx.get("stats")["agents"] == 0
        assert rx.post("heartbeat", {"agent_id": AGENT}).status_code == 404
        assert rx.post("ingest-batch", batch([entry(1, "u1")])).status_code == 404

    def test_reset_clears_config_and_scripts(self, rx: Client) -> None:
        """reset restores the default config and drops pending scripts."""
        rx.register()
        rx.admin("config", {"reject_substring": "line", "max_batch": 1, "delay": 0.01})
        rx.admin("script", {"endpoint": "ingest-batch", "responses": [{"status": 500}]})
        response = rx.admin("config", {"reset": True})
        assert response.json()["config"] == {
            "reject_substring": None,
            "max_batch": None,
            "delay": 0.0,
            "accept_gzip": True,
            "max_concurrent": None,
        }
        assert rx.get("config")["scripts"]["ingest-batch"] == 0
        assert rx.post("ingest-batch", batch([entry(1, "u1"), entry(2, "u2")])).status_code == 200

    def test_invalid_config_is_400_and_changes_nothing(self, rx: Client) -> None:
        """An unknown key or a wrong value is a 400 and no part of the request is applied."""
        for body in ({"max_batch": 0}, {"delay": "slow"}, {"colour": 1}, {"reset": "yes"}):
            assert rx.admin("config", body).status_code == 400
        assert rx.admin("config", {"max_batch": 5, "delay": -1}).status_code == 400
        assert rx.get("config")["config"]["max_batch"] is None


class TestLifeCycle:
    def test_a_file_database_is_private_and_survives_a_restart(self, tmp_path: Path) -> None:
        """The SQLite file is mode 0600 and its events and counters outlive the server."""
        db = str(tmp_path / "sub" / "receiver.db")
        for expected in (1, 0):
            server, thread = start(db_path=db)
            try:
                with requests.Session() as session:
                    client = Client(server, session)
                    client.register()
                    response = client.post("ingest-batch", batch([entry(1, "u1")]))
                    assert response.json()["inserted"] == expected
            finally:
                stop(server, thread)
        assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
        server, thread = start(db_path=db)
        try:
            with requests.Session() as session:
                stats = Client(server, session).get("stats")
            assert (stats["events_unique"], stats["events_received"], stats["batches"]) == (1, 2, 2)
        finally:
            stop(server, thread)

    def test_closing_the_server_drops_keep_alive_connections(self) -> None:
        """After server_close a pooled connection fails instead of reaching a stale thread."""
        server, thread = start()
        with requests.Session() as session:
            client = Client(server, session)
            client.register()
            stop(server, thread)
            with pytest.raises(requests.ConnectionError):
                client.post("register", REGISTRATION)

    def test_serve_writes_the_port_and_exits_0_on_sigterm(self, tmp_path: Path) -> None:
        """serve() prints its address, writes the port to ready_file and exits 0 on SIGTERM."""
        ready = tmp_path / "port"
        code = (
            "import sys; from ila_agent.receiver import serve; "
            f"sys.exit(serve('127.0.0.1', 0, 'k', None, {str(ready)!r}))"
        )
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
        )
        try:
            deadline = time.monotonic() + 10
            while not ready.exists():
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.02)
            port = int(ready.read_text())
            assert stat.S_IMODE(ready.stat().st_mode) == 0o600
            answer = requests.get(f"http://127.0.0.1:{port}/api/receiver/stats", timeout=5)
            assert answer.json()["requests"] == 0
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0
        assert out == f"receiver listening on http://127.0.0.1:{port} db=:memory:\n"

    def test_serve_returns_1_when_the_port_is_taken(self) -> None:
        """serve() reports an address already in use instead of raising."""
        server, thread = start()
        try:
            assert serve("127.0.0.1", server.port, KEY, None) == 1
        finally:
            stop(server, thread)

    def test_many_batches_from_concurrent_clients(self, rx: Client) -> None:
        """Concurrent clients sending overlapping batches end with exact counters."""
        rx.register()

        def send(worker: int) -> None:
            with requests.Session() as session:
                client = Client(rx.server, session)
                for n in range(10):
                    entries = [entry(i, f"u{n}-{i}") for i in range(100)]
                    body = batch(entries, f"w{worker}-{n}")
                    assert client.post("ingest-batch", body).status_code == 200

        threads = [threading.Thread(target=send, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        stats = rx.get("stats")
        assert (stats["batches"], stats["events_received"], stats["events_unique"]) == (
            40,
            4000,
            1000,
        )
