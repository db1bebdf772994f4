"""Real processes for end-to-end tests: the reference receiver and the agent, over 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import urllib3

urllib3.disable_warnings()  # the tests' own admin calls to a receiver with a test CA

API_KEY = "test-key-7f3a9c"
PY = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    cond: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``cond`` until truthy; fail the test naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or cond} (last={last!r})")


class Writer(threading.Thread):
    """Appends numbered lines to a file until stopped; every line is unique."""

    def __init__(self, path: Path, tag: str, per_tick: int = 20, tick: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.tag = tag
        self.per_tick = per_tick
        self.tick = tick
        self.n = 0
        self.lock = threading.Lock()  # held by a test to pause writing (rotation)
        self.stop_event = threading.Event()
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115
        self.written: list[str] = []

    def run(self) -> None:
        while not self.stop_event.is_set():
            with self.lock:
                batch = [f"{self.tag} {self.n + i:08d}" for i in range(self.per_tick)]
                self.f.write("".join(x + "\n" for x in batch))
                self.f.flush()
                self.written.extend(batch)
                self.n += self.per_tick
            time.sleep(self.tick)

    def reopen(self) -> None:
        self.f.close()
        self.f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def finish(self) -> list[str]:
        self.stop_event.set()
        self.join(10)
        self.f.close()
        return self.written


class ReceiverProc:
    """`ila-agent receiver` as a subprocess on a fixed port, so it can be stopped and restarted."""

    def __init__(
        self,
        tmp: Path,
        port: int | None = None,
        api_key: str = API_KEY,
        tls: list[str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.tls = tls or []  # extra receiver arguments: --tls-cert ... --tls-client-ca ...
        self.admin_cert: tuple[str, str] | None = None  # for the tests' GETs under mutual TLS
        self.port = port or free_port()
        self.api_key = api_key
        self.db = tmp / "received.db"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> ReceiverProc:
        ready = self.tmp / f"receiver-{self.port}.ready"
        ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [PY, "-m", "ila_agent", "receiver", "--port", str(self.port), "--api-key",
             self.api_key, "--db", str(self.db), "--ready-file", str(ready), *self.tls],
            stdout=subprocess.DEVNULL,
            stderr=open(self.tmp / "receiver.err", "ab"),  # noqa: SIM115
        )  # fmt: skip
        proc = self.proc

        def ready_or_gone() -> bool:
            if proc.poll() is not None:  # it could not start (the port taken?): fail now
                err = (self.tmp / "receiver.err").read_text(errors="replace")[-500:]
                raise AssertionError(f"the receiver exited with {proc.returncode}: {err}")
            return ready.exists()

        wait_until(ready_or_gone, 15, what="receiver ready")
        return self

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def get(self, path: str, **params: Any) -> Any:
        r = requests.get(
            self.url + path, params=params, timeout=10, verify=False, cert=self.admin_cert
        )
        r.raise_for_status()
        return r.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        r = requests.post(
            self.url + path, json=body, timeout=10, verify=False, cert=self.admin_cert
        )
        r.raise_for_status()
        return r.json()

    def stats(self) -> dict[str, int]:
        return dict(self.get("/api/receiver/stats"))

    def events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.get("/api/receiver/events", after=after, limit=10000)["events"]
            if not page:
                return out
            out.extend(page)
            after = page[-1]["id"]

    def requests_log(self) -> list[dict[str, Any]]:
        return list(self.get("/api/receiver/requests", limit=100000)["requests"])

    def heartbeats(self) -> list[dict[str, Any]]:
        return list(self.get("/api/receiver/heartbeats")["heartbeats"])

    def script(self, endpoint: str, responses: list[dict[str, Any]]) -> None:
        self.post("/api/receiver/script", {"endpoint": endpoint, "responses": responses})

    def configure(self, **changes: Any) -> None:
        self.post("/api/receiver/config", changes)


class AgentProc:
    """`ila-agent run` as a subprocess with a config written into ``tmp``."""

    def __init__(self, tmp: Path, **config: Any) -> None:
        self.tmp = tmp
        self.config_path = tmp / "config.json"
        base: dict[str, Any] = {
            "api_key": API_KEY,
            "batch_size": 50,
            "batch_interval": 0.2,
            "heartbeat_interval": 0.5,
            "retry_interval": 1,
            "poll_interval": 0.2,
            "partial_line_timeout": 1,
            "connect_timeout": 2,
            "request_timeout": 5,
            "start_position": "beginning",
            "buffer_db": "buffer/agent.db",
            "agent_log_file": "agent.log",
        }
        base.update(config)
        self.config = base
        self.config_path.write_text(json.dumps(base, indent=2))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(
        self, extra_env: dict[str, str] | None = None, *, nofile: int | None = None
    ) -> AgentProc:
        """Run the agent; ``nofile``: its descriptor limit, soft and hard (``ulimit -n``)."""
        env = {k: v for k, v in os.environ.items() if k != "ILA_AGENT_API_KEY"}
        env.update(extra_env or {})
        self.starts += 1

        def limit() -> None:
            import resource

            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [PY, "-m", "ila_agent", "run", "--config", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.tmp / "agent.err", "ab"),  # noqa: SIM115
            env=env,
            preexec_fn=limit if nofile is not None else None,
        )
        return self

    def open_files(self) -> list[str]:
        """What the agent's descriptors point at now (/proc/<pid>/fd)."""
        assert self.proc is not None
        out = []
        fd_dir = Path(f"/proc/{self.proc.pid}/fd")
        for fd in list(fd_dir.iterdir()) if fd_dir.exists() else []:
            try:
                out.append(os.readlink(fd))
            except OSError:
                continue  # closed meanwhile
        return out

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM; returns the exit code (fails the test when it takes longer than ``timeout``)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def cleanup(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(10)

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PY, "-m", "ila_agent", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def status(self) -> dict[str, Any]:
        out = self.cli("status", "--json")
        assert out.returncode == 0, out.stderr
        return dict(json.loads(out.stdout))

    def log_text(self) -> str:
        p = self.tmp / "agent.log"
        return p.read_text() if p.exists() else ""


def write_lines(path: Path, lines: list[str], *, mode: str = "a") -> None:
    with open(path, mode, encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")


def make_pki(d: Path, *, server_names: str = "IP:127.0.0.1,DNS:localhost") -> Path:
    """A private CA in ``d`` (ca.pem), a server certificate for ``server_names`` (a
    subjectAltName list) and a client certificate, each with its key."""
    d.mkdir(parents=True, exist_ok=True)

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=test-ca")  # fmt: skip
    (d / "san.cnf").write_text(f"subjectAltName={server_names}\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                "-extfile", "san.cnf")  # fmt: skip
    return d
