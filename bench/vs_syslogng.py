#!/usr/bin/env python3
"""ila-agent vs syslog-ng (file → http, disk-buffer reliable), on the same input and receiver.

    /work/main/.venv/bin/python bench/vs_syslogng.py [--runs 3] [--lines 200000]
        [--scenarios 1,2,3a,3b,4,5] [--quick] [--keep] [--agent-config KEY=JSON ...]
        [--run-timeout 120] [--agent-src DIR] [--install | --no-install]

Installs syslog-ng from the distribution's packages when it is missing (the system service is
kept from starting), then runs ila-agent and syslog-ng (1 and 4 http() workers) interleaved
(ours, sng-1, sng-4, ours, ...) per scenario, N runs each, against one in-process threaded
receiver that counts every line's sequence number. Progress on stderr; on stdout the command,
the machine and one Markdown table per scenario (medians with min–max, CPU µs per line, peak
RSS, lost and duplicated lines, ratio ila-agent/syslog-ng). Method: bench/VS_SYSLOGNG.md.
Standard library only; the agent is a black box (``python -m ila_agent run --config``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from fast_receiver import LOAD_BODIES, FastReceiver, Faults, LedgerSnapshot  # noqa: E402
from sample_input import write_lines  # noqa: E402  (the same input as run_bench.py)

API_KEY = "bench-key-0123456789"
SNG_AGENT_ID = "syslog-ng-bench"
DEFAULT_LINES = 200_000
QUICK_LINES = 50_000
DEFAULT_RUNS = 3
DEFAULT_RUN_TIMEOUT_S = 120.0
QUICK_RUN_TIMEOUT_S = 60.0
STALL_S = 35.0  # no new line and no ingest request for this long (receiver up): STALLED
SETTLE_S = 1.0  # after the last line, wait for stray duplicates before stopping
POLL_S = 0.02
STOP_GRACE_S = 8.0  # ila-agent settles its batch in flight for up to 5 s on SIGTERM
OUTAGE_S = 10.0
KILL_AT_FRACTION = 0.4
SLOW_DELAY_S = 0.1
FAIL_RATIO = 0.2
RETRY_AFTER_S = "1"
DEFAULT_SEED = 20261127
LOAD_THREADS = 4
LOAD_SECONDS = 2.0
LOAD_LINES_PER_BODY = 500
OURS_BATCH_SIZE = 500
SNG_BATCH_LINES = 500
SNG_BATCH_TIMEOUT_MS = 200
SNG_PACKAGES = ("syslog-ng-core", "syslog-ng-mod-http")
POLICY_RC = "/usr/sbin/policy-rc.d"
POLICY_RC_DENY = b"#!/bin/sh\n# written by bench/vs_syslogng.py during apt-get install\nexit 101\n"
APT_UPDATE_TIMEOUT_S = 300
APT_INSTALL_TIMEOUT_S = 900
VENV_FALLBACK = "/tmp/benchvenv"
CLK_TCK = os.sysconf("SC_CLK_TCK")
KIB_PER_MIB = 1024
OK, TIMEOUT, STALLED, FAILED = "OK", "TIMEOUT", "STALLED", "FAILED"

_LIVE: list[subprocess.Popen[bytes]] = []  # every child still running; killed in finally


def say(msg: str) -> None:
    print(f"[vs-syslogng {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- processes ---------------------------------------------------------------------------------


def spawn(
    cmd: Sequence[str], log_path: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session (so its whole group can be signalled), output to a file."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=os.path.dirname(log_path),
            env=env,
            start_new_session=True,
        )
    _LIVE.append(proc)
    return proc


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def stop(proc: subprocess.Popen[bytes] | None, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM to the child's group, SIGKILL after ``grace`` seconds; always reaped."""
    if proc is None:
        return
    try:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(grace)
        _signal_group(proc, signal.SIGKILL)  # anything left in its group
    finally:
        if proc in _LIVE:
            _LIVE.remove(proc)


def kill9(proc: subprocess.Popen[bytes]) -> None:
    _signal_group(proc, signal.SIGKILL)
    proc.wait(STOP_GRACE_S)
    if proc in _LIVE:
        _LIVE.remove(proc)


def stop_all() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            stop(proc, grace=2.0)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2 :].split()  # fields from 3 (state) on


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields:
                kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def process_tree(root: int) -> list[int]:
    kids, out, todo = _children_map(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all threads) plus its reaped children's (cutime, cstime)."""
    fields = _stat_fields(pid)
    if not fields:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / CLK_TCK  # stat(5) fields 14..17


def vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


@dataclass
class ShipperProc:
    """One shipper under test; several incarnations when it is killed and restarted."""

    cmd: list[str]
    log_path: str
    env: dict[str, str] | None
    proc: subprocess.Popen[bytes] | None = None
    cpu_done_s: float = 0.0  # CPU of incarnations already ended
    hwm_kib: int = 0
    starts: int = 0

    def start(self) -> None:
        self.proc = spawn(self.cmd, self.log_path, self.env)
        self.starts += 1

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def _take_reading(self) -> None:
        """CPU and VmHWM of the process tree now (just before it is stopped or killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        pids = process_tree(self.proc.pid)
        self.cpu_done_s += sum(cpu_seconds(p) for p in pids)
        self.hwm_kib = max(self.hwm_kib, sum(vm_hwm_kib(p) for p in pids))

    def kill9(self) -> None:
        self._take_reading()
        if self.proc is not None:
            kill9(self.proc)

    def stop(self) -> None:
        self._take_reading()
        stop(self.proc)
        self.proc = None


# -- syslog-ng installation ------------------------------------------------------------------


def find_syslog_ng() -> str | None:
    return shutil.which("syslog-ng") or next(
        (p for p in ("/usr/sbin/syslog-ng", "/sbin/syslog-ng") if os.access(p, os.X_OK)), None
    )


def syslog_ng_version_text(path: str) -> str:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout + out.stderr


def syslog_ng_versions(path: str) -> tuple[str, str]:
    """(full version, config version) of the installed syslog-ng."""
    text = syslog_ng_version_text(path)
    full = re.search(r"^syslog-ng \S+ \((\d+\.\d+)([^)]*)\)", text, re.M)
    if full:  # Debian's 3.38.1 says "Config version: 3.35"; @version: 3.38 is what it runs
        return full.group(1) + full.group(2), full.group(1)
    conf = re.search(r"^Config version:\s*(\S+)", text, re.M)
    return "unknown", conf.group(1) if conf else "3.38"


def has_http_module(path: str) -> bool:
    mods = re.search(r"^Available-Modules:\s*(.*)$", syslog_ng_version_text(path), re.M)
    if not mods:
        return False
    return "http" in {m.strip() for m in mods.group(1).split(",")}


@contextlib.contextmanager
def services_blocked() -> Iterator[None]:
    """A policy-rc.d that forbids starting services, for the install; the old one restored."""
    saved: tuple[bytes, int] | None = None
    if os.path.lexists(POLICY_RC):
        with open(POLICY_RC, "rb") as f:
            saved = (f.read(), os.stat(POLICY_RC).st_mode & 0o7777)
    with open(POLICY_RC, "wb") as f:
        f.write(POLICY_RC_DENY)
    os.chmod(POLICY_RC, 0o755)
    try:
        yield
    finally:
        if saved is None:
            os.remove(POLICY_RC)
        else:
            with open(POLICY_RC, "wb") as f:
                f.write(saved[0])
            os.chmod(POLICY_RC, saved[1])


def running_syslog_ng_pids(exclude: Sequence[int] = ()) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) not in exclude:
            with contextlib.suppress(OSError), open(f"/proc/{entry}/comm", encoding="ascii") as f:
                if f.read().strip().startswith("syslog-ng"):
                    pids.append(int(entry))
    return pids


def install_syslog_ng() -> None:
    if os.geteuid() != 0:
        raise SystemExit(
            "syslog-ng is missing and installing it needs root: run as root, or "
            f"apt-get install {' '.join(SNG_PACKAGES)} with the service kept stopped"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    before = set(running_syslog_ng_pids())
    say(f"installing {' '.join(SNG_PACKAGES)} with apt-get (services blocked by {POLICY_RC})")
    apt = [
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *SNG_PACKAGES],
    ]
    with services_blocked():
        for cmd, limit in zip(apt, (APT_UPDATE_TIMEOUT_S, APT_INSTALL_TIMEOUT_S), strict=True):
            try:
                subprocess.run(cmd, env=env, check=True, timeout=limit, stdout=sys.stderr)
            except (OSError, subprocess.SubprocessError) as exc:
                raise SystemExit(f"{shlex.join(cmd)} failed: {exc}") from exc
    started = set(running_syslog_ng_pids()) - before
    if started:
        raise SystemExit(f"the install started syslog-ng (pids {sorted(started)}): stop it first")
    say("installed; checked: no syslog-ng process was started by the install")


def ensure_syslog_ng(allow_install: bool) -> str:
    path = find_syslog_ng()
    if path and has_http_module(path):
        return path
    if not allow_install:
        raise SystemExit("syslog-ng with the http module is missing (run without --no-install)")
    install_syslog_ng()
    path = find_syslog_ng()
    if not path or not has_http_module(path):
        raise SystemExit("syslog-ng or its http module is still missing after the install")
    return path


# -- ila-agent interpreter -------------------------------------------------------------------


def _imports_agent(python: str) -> bool:
    try:
        out = subprocess.run(
            [python, "-c", "import ila_agent, persistqueue, requests"],
            env=agent_env(),
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0


def _project_dependencies() -> list[str]:
    import tomllib  # Python ≥ 3.11; the fallback venv needs it only when .venv is unusable

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def ensure_agent_python(requested: str | None) -> str:
    """The project's .venv interpreter; else a venv of its own in /tmp/benchvenv."""
    if requested:
        return requested
    project = os.path.join(ROOT, ".venv", "bin", "python")
    if os.path.exists(project) and _imports_agent(project):
        return project
    fallback = os.path.join(VENV_FALLBACK, "bin", "python")
    if not (os.path.exists(fallback) and _imports_agent(fallback)):
        say(f"{project} unusable: creating {VENV_FALLBACK} with the project's dependencies")
        subprocess.run([sys.executable, "-m", "venv", VENV_FALLBACK], check=True, timeout=300)
        subprocess.run(
            [fallback, "-m", "pip", "install", "-q", *_project_dependencies()],
            check=True,
            timeout=900,
            stdout=sys.stderr,
        )
    return fallback


_AGENT_SRC = [ROOT]  # the source tree the agent runs from; --agent-src changes it


AGENT_PACKAGES = ("ila_agent", "ila_core", "collector", "forwarder", "queue_store")


def compile_agent(python: str) -> None:
    """Byte-compile the agent's sources once, as an installed package is: otherwise, with
    PYTHONDONTWRITEBYTECODE set, every agent start compiles them again (~0.1 s)."""
    dirs = [os.path.join(_AGENT_SRC[0], p) for p in AGENT_PACKAGES]
    done = subprocess.run(
        [python, "-m", "compileall", "-q", *[d for d in dirs if os.path.isdir(d)]],
        timeout=300,
        stdout=sys.stderr,  # compileall names what it could not compile on stdout
    )
    if done.returncode != 0:
        say(f"compileall failed in {_AGENT_SRC[0]} (above): the agent compiles at each start")


def installed_python(python: str, top: str) -> str:
    """An interpreter that sees ``python``'s packages as a plain install would: a venv of its
    own whose ``.pth`` lists ``python``'s site-packages. The project's .venv holds an editable
    install of the agent, whose import hook cost every agent start ~30-50 ms that an install
    by ops/install.sh (``pip install``, not editable) does not pay; the agent's own modules
    come from ``--agent-src`` on PYTHONPATH either way."""
    venv = os.path.join(top, "agent-venv")
    try:
        site_dirs = _site_packages(python)
        subprocess.run([python, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
        made = os.path.join(venv, "bin", "python")
        with open(os.path.join(_site_packages(made)[0], "agent-deps.pth"), "w") as f:
            f.write("".join(f"{d}\n" for d in site_dirs))
    except (OSError, ValueError, IndexError, subprocess.SubprocessError) as exc:
        say(f"no install-like venv ({exc}): the agent runs with {python}")
        return python
    if not _imports_agent(made):
        say(f"{made} cannot import the agent: it runs with {python}")
        return python
    return made


def _site_packages(python: str) -> list[str]:
    code = "import json, site; print(json.dumps(site.getsitepackages()))"
    return list(json.loads(_output([python, "-c", code])))


def agent_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("ILA_AGENT_API_KEY", None)  # the config's api_key is what we mean
    src = _AGENT_SRC[0]
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


# -- shippers and scenarios ------------------------------------------------------------------


@dataclass(frozen=True)
class Shipper:
    key: str
    label: str
    kind: str  # "ours" or "sng"
    workers: int = 1
    drop_keys: tuple[str, ...] = ()  # agent keys removed so the agent's default applies


OURS = Shipper("ours", f"ila-agent (batch_size {OURS_BATCH_SIZE})", "ours")
OURS_BS50 = Shipper(
    "ours-bs50", "ila-agent (default batch_size 50)", "ours", drop_keys=("batch_size",)
)
SNG1 = Shipper("sng1", "syslog-ng, 1 worker", "sng", workers=1)
SNG4 = Shipper("sng4", "syslog-ng, 4 workers", "sng", workers=4)


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    faults: Faults = field(default_factory=Faults)
    outage_s: float = 0.0
    kill_at: float | None = None
    extra: tuple[Shipper, ...] = ()
    rate_label: str = "lines/s"

    @property
    def shippers(self) -> tuple[Shipper, ...]:
        return (OURS, SNG1, SNG4, *self.extra)


SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario("1", "fast receiver (answers at once)"),
        Scenario(
            "2",
            f"every answer after {SLOW_DELAY_S * 1000:.0f} ms",
            Faults(delay_s=SLOW_DELAY_S),
            extra=(OURS_BS50,),
        ),
        Scenario(
            "3a",
            f"{FAIL_RATIO:.0%} of ingest answers are 503 (seeded), no Retry-After",
            Faults(fail_ratio=FAIL_RATIO),
        ),
        Scenario(
            "3b",
            f"{FAIL_RATIO:.0%} of ingest answers are 503 with Retry-After: {RETRY_AFTER_S}",
            Faults(fail_ratio=FAIL_RATIO, retry_after=RETRY_AFTER_S),
        ),
        Scenario(
            "4",
            f"receiver down (connection refused) for the first {OUTAGE_S:.0f} s, then drain",
            outage_s=OUTAGE_S,
            rate_label="drain lines/s",
        ),
        Scenario(
            "5",
            f"kill -9 when {KILL_AT_FRACTION:.0%} of lines have arrived, restart",
            kill_at=KILL_AT_FRACTION,
        ),
    )
}
SCENARIO_ALIASES = {
    "3": ("3a", "3b"),
    "fast": ("1",),
    "slow": ("2",),
    "503": ("3a",),
    "503ra": ("3b",),
    "outage": ("4",),
    "kill9": ("5",),
}


def parse_scenarios(text: str) -> list[Scenario]:
    keys: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        for key in SCENARIO_ALIASES.get(part, (part,)):
            if key not in SCENARIOS:
                raise SystemExit(
                    f"--scenarios: unknown scenario {part!r} "
                    f"(known: {', '.join([*SCENARIOS, *SCENARIO_ALIASES])})"
                )
            if key not in keys:
                keys.append(key)
    return [SCENARIOS[k] for k in keys]


# -- per-run configs -------------------------------------------------------------------------


@dataclass
class Ctx:
    lines: int
    input_path: str
    top_dir: str
    receiver: FastReceiver
    agent_python: str
    sng_path: str
    sng_config_version: str
    run_timeout: float
    stall_s: float
    keep: bool
    seed: int
    agent_overrides: dict[str, Any]


def ours_config(ctx: Ctx, sh: Shipper, rundir: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "server_url": ctx.receiver.url,
        "api_key": API_KEY,
        "log_sources": [ctx.input_path],
        "batch_size": OURS_BATCH_SIZE,
        "batch_interval": 1,
        "start_position": "beginning",
        "buffer_db": os.path.join(rundir, "buffer.db"),
        "agent_log_file": os.path.join(rundir, "agent.log"),
        "heartbeat_interval": 5,
        "max_in_flight": 8,  # agents older than max_in_flight warn about it and ignore it
    }
    cfg.update(ctx.agent_overrides)
    for key in sh.drop_keys:
        cfg.pop(key, None)
    return cfg


def ours_cmd(ctx: Ctx, sh: Shipper, rundir: str) -> list[str]:
    path = os.path.join(rundir, "config.json")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the API key
    with open(fd, "w", encoding="utf-8") as f:
        json.dump(ours_config(ctx, sh, rundir), f, indent=2)
    return [ctx.agent_python, "-m", "ila_agent", "run", "--config", path]


def sng_config(ctx: Ctx, workers: int, rundir: str) -> str:
    prefix = json.dumps(f'{{"agent_id":"{SNG_AGENT_ID}","logs":[')
    return f"""@version: {ctx.sng_config_version}
# written by bench/vs_syslogng.py: file() -> http(), disk-buffer(reliable(yes)), flow-control
options {{
  stats-freq(0);
  use-dns(no);
  dns-cache(no);
  use-fqdn(no);
  keep-hostname(yes);
  chain-hostnames(no);
}};
source s_input {{
  file("{ctx.input_path}" flags(no-parse) follow-freq(0.1) log-iw-size(20000));
}};
destination d_http {{
  http(
    url("{ctx.receiver.url}/api/agent/ingest-batch")
    method("POST")
    headers("Content-Type: application/json", "X-API-Key: {API_KEY}")
    batch-lines({SNG_BATCH_LINES})
    batch-timeout({SNG_BATCH_TIMEOUT_MS})
    workers({workers})
    timeout(60)
    time-reopen(1)
    body-prefix({prefix})
    delimiter(",")
    body-suffix("]}}")
    body('$(format-json log_text=$MSG source=$FILE_NAME timestamp=$R_ISODATE)')
    disk-buffer(
      reliable(yes)
      disk-buf-size(1073741824)
      mem-buf-size(16777216)
      dir("{os.path.join(rundir, "disk-buffer")}")
    )
  );
}};
log {{ source(s_input); destination(d_http); flags(flow-control); }};
"""


def sng_paths(rundir: str) -> dict[str, str]:
    names = {
        "conf": "syslog-ng.conf",
        "persist": "syslog-ng.persist",
        "ctl": "syslog-ng.ctl",
        "pid": "syslog-ng.pid",
    }
    return {k: os.path.join(rundir, v) for k, v in names.items()}


def sng_cmd(ctx: Ctx, sh: Shipper, rundir: str) -> list[str]:
    paths = sng_paths(rundir)
    os.makedirs(os.path.join(rundir, "disk-buffer"), exist_ok=True)
    with open(paths["conf"], "w", encoding="utf-8") as f:
        f.write(sng_config(ctx, sh.workers, rundir))
    return [
        ctx.sng_path,
        "-F",
        "-e",
        "--no-caps",
        "-f",
        paths["conf"],
        "-R",
        paths["persist"],
        "-c",
        paths["ctl"],
        "-p",
        paths["pid"],
    ]


def sng_dropped(ctx: Ctx, rundir: str) -> int | None:
    """The http() destination's ``dropped`` counter (this incarnation), via syslog-ng-ctl."""
    ctl = os.path.join(os.path.dirname(ctx.sng_path), "syslog-ng-ctl")
    try:
        out = subprocess.run(
            [ctl, "stats", "-c", sng_paths(rundir)["ctl"]],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    total, seen = 0, False
    for line in out.stdout.splitlines():
        parts = line.split(";")
        if len(parts) == 6 and parts[0].startswith("dst.http") and parts[4] == "dropped":
            total += int(parts[5]) if parts[5].isdigit() else 0
            seen = True
    return total if seen else None


def preflight(ctx: Ctx) -> None:
    """Fail fast: syslog-ng must accept its config, ila-agent its own."""
    rundir = tempfile.mkdtemp(prefix="preflight-", dir=ctx.top_dir)
    try:
        cmd = sng_cmd(ctx, SNG4, rundir)
        out = subprocess.run(
            [ctx.sng_path, "--syntax-only", "-f", sng_paths(rundir)["conf"]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if out.returncode != 0:
            raise SystemExit(
                f"syslog-ng rejects its config ({shlex.join(cmd)}):\n{out.stdout}{out.stderr}"
            )
        conf = ours_cmd(ctx, OURS, rundir)[-1]
        out = subprocess.run(
            [ctx.agent_python, "-m", "ila_agent", "check-config", "--config", conf],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=agent_env(),
        )
        if out.returncode != 0:
            raise SystemExit(f"ila-agent rejects its config:\n{out.stdout}{out.stderr}")
        for line in (out.stdout + out.stderr).splitlines():
            if "warning" in line.lower():
                say(f"ila-agent check-config: {line.strip()}")
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


# -- one run ---------------------------------------------------------------------------------


@dataclass
class RunResult:
    status: str
    expected: int
    lines: int
    rate: float | None
    cpu_s: float
    hwm_kib: int
    dup_lines: int
    dup_copies: int
    foreign: int
    wall_s: float
    receiver_cpu_pct: float
    first_after_up_s: float | None = None
    sng_dropped: int | None = None
    killed_at: int | None = None
    rejected: int = 0
    detail: str = ""

    @property
    def missing(self) -> int:
        return self.expected - self.lines

    @property
    def cpu_us_per_line(self) -> float | None:
        return self.cpu_s / self.lines * 1e6 if self.lines else None


@dataclass
class Watch:
    status: str = TIMEOUT
    t_up: float | None = None
    killed_at: int | None = None
    detail: str = ""


def _stalled(snap: LedgerSnapshot, since: float, now: float, stall_s: float) -> bool:
    last = max(since, snap.last_new_at or 0.0, snap.last_request_at or 0.0)
    return now - last > stall_s


def watch(ctx: Ctx, sc: Scenario, sp: ShipperProc, t0: float) -> Watch:
    """Wait until every line arrived, or the deadline, a stall or the shipper's exit."""
    rcv, w = ctx.receiver, Watch(t_up=None if sc.outage_s else t0)
    deadline = t0 + ctx.run_timeout
    while (now := time.monotonic()) < deadline:
        if w.t_up is None and now - t0 >= sc.outage_s:
            rcv.up()
            w.t_up = now
        snap = rcv.ledger.snapshot()
        if snap.unique >= ctx.lines:
            w.status = OK
            return w
        if sc.kill_at is not None and w.killed_at is None and snap.unique >= sc.kill_at * ctx.lines:
            w.killed_at = snap.unique
            sp.kill9()
            sp.start()
            continue
        code = sp.exit_code()
        if code is not None:
            w.status, w.detail = FAILED, f"exited with status {code}"
            return w
        if w.t_up is not None and _stalled(snap, w.t_up, now, ctx.stall_s):
            w.status = STALLED
            return w
        time.sleep(POLL_S)
    return w


def _self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _result(ctx: Ctx, w: Watch, sp: ShipperProc, t0: float, cpu0: float) -> RunResult:
    snap = ctx.receiver.ledger.snapshot()
    wall = time.monotonic() - t0
    t_ref = w.t_up if w.t_up is not None else t0
    rate = None
    if snap.unique and snap.last_new_at is not None and snap.last_new_at > t_ref:
        rate = snap.unique / (snap.last_new_at - t_ref)
    first_after_up = None
    if snap.first_at is not None and w.t_up is not None and w.t_up > t0:
        first_after_up = snap.first_at - w.t_up
    return RunResult(
        status=w.status,
        expected=ctx.lines,
        lines=snap.unique,
        rate=rate,
        cpu_s=sp.cpu_done_s,
        hwm_kib=sp.hwm_kib,
        dup_lines=snap.dup_lines,
        dup_copies=snap.dup_copies,
        foreign=snap.foreign,
        wall_s=wall,
        receiver_cpu_pct=100 * (_self_cpu() - cpu0) / wall,
        first_after_up_s=first_after_up,
        killed_at=w.killed_at,
        rejected=snap.rejected_requests,
        detail=w.detail,
    )


def _log_tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def run_once(ctx: Ctx, sc: Scenario, sh: Shipper, run_idx: int) -> RunResult:
    rundir = tempfile.mkdtemp(prefix=f"s{sc.key}-{sh.key}-r{run_idx + 1}-", dir=ctx.top_dir)
    rcv = ctx.receiver
    rcv.reset(ctx.lines)
    rcv.configure(
        Faults(sc.faults.delay_s, sc.faults.fail_ratio, sc.faults.retry_after, ctx.seed + run_idx)
    )
    cmd = ours_cmd(ctx, sh, rundir) if sh.kind == "ours" else sng_cmd(ctx, sh, rundir)
    env = agent_env() if sh.kind == "ours" else None
    sp = ShipperProc(cmd, os.path.join(rundir, "shipper.out"), env)
    dropped: int | None = None
    try:
        if sc.outage_s:
            rcv.down()
        cpu0, t0 = _self_cpu(), time.monotonic()
        sp.start()
        w = watch(ctx, sc, sp, t0)
        if w.status == OK:
            time.sleep(SETTLE_S)
        if sh.kind == "sng" and sp.exit_code() is None:
            dropped = sng_dropped(ctx, rundir)
        sp.stop()
        time.sleep(POLL_S)
        res = _result(ctx, w, sp, t0, cpu0)
        res.sng_dropped = dropped
        if res.status == FAILED:
            say(
                f"{sh.label} failed ({res.detail}); its output ends with:\n{_log_tail(sp.log_path)}"
            )
        return res
    finally:
        sp.stop()
        rcv.up()
        if not ctx.keep:
            shutil.rmtree(rundir, ignore_errors=True)


# -- capacity of the receiver ----------------------------------------------------------------


def receiver_capacity(ctx: Ctx) -> dict[str, float]:
    """Pre-encoded 500-line bodies from LOAD_THREADS keep-alive clients in another process."""
    rcv = ctx.receiver
    rcv.configure(Faults())
    rcv.reset(LOAD_LINES_PER_BODY * LOAD_BODIES)
    cpu0, t0 = _self_cpu(), time.monotonic()
    opts = {
        "--port": rcv.port,
        "--threads": LOAD_THREADS,
        "--seconds": LOAD_SECONDS,
        "--lines-per-body": LOAD_LINES_PER_BODY,
    }
    cmd = [sys.executable, os.path.join(HERE, "fast_receiver.py"), "load"]
    cmd += [part for key, value in opts.items() for part in (key, str(value))]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=LOAD_SECONDS + 60, check=True)
    res = json.loads(out.stdout)
    res["receiver_cpu_pct"] = 100 * (_self_cpu() - cpu0) / (time.monotonic() - t0)
    return res


# -- report ----------------------------------------------------------------------------------


def fmt_num(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def med_range(values: Sequence[float]) -> str:
    if not values:
        return "–"
    med = fmt_num(statistics.median(values))
    if len(values) == 1:
        return f"**{med}**"
    return f"**{med}** ({fmt_num(min(values))}–{fmt_num(max(values))})"


def per_run(values: Sequence[str]) -> str:
    return values[0] if len(set(values)) == 1 else " / ".join(values)


def rate_cell(runs: Sequence[RunResult]) -> str:
    cell = med_range([r.rate for r in runs if r.rate is not None])
    bad = [r for r in runs if r.status != OK]
    if bad:
        kinds = "/".join(sorted({r.status for r in bad}))
        arrived = ", ".join(f"{r.lines:,}" for r in bad)
        total = f"{runs[0].expected:,}"
        cell += f" ⚠ {kinds} in {len(bad)} of {len(runs)} (arrived {arrived} of {total})"
    return cell


def lost_cell(runs: Sequence[RunResult]) -> str:
    """Missing lines per run; † = not arrived when the run ended unfinished (not proven lost)."""
    return per_run([f"{r.missing:,}" + ("" if r.status == OK else "†") for r in runs])


def ratio_cell(ours: Sequence[RunResult] | None, sng: Sequence[RunResult]) -> str:
    a = [r.rate for r in ours or () if r.rate is not None]
    b = [r.rate for r in sng if r.rate is not None]
    if not a or not b:
        return "–"
    partial = any(r.status != OK for r in [*(ours or ()), *sng])
    return f"{statistics.median(a) / statistics.median(b):.2f}×" + (" ⚠" if partial else "")


def table(sc: Scenario, results: dict[str, list[RunResult]]) -> list[str]:
    out = [
        f"| shipper | {sc.rate_label} median (min–max) | CPU µs/line | peak RSS MiB | lost | dup "
        "| ratio ila-agent/syslog-ng |",
        "|---|---|---|---|---|---|---|",
    ]
    for sh in sc.shippers:
        runs = results.get(sh.key)
        if not runs:
            continue
        cpu = [v for r in runs if (v := r.cpu_us_per_line) is not None]
        rss = [r.hwm_kib / KIB_PER_MIB for r in runs if r.hwm_kib]
        ratio = ratio_cell(results.get(OURS.key), runs) if sh.kind == "sng" else "–"
        out.append(
            f"| {sh.label} | {rate_cell(runs)} | {med_range(cpu)} | {med_range(rss)} | "
            f"{lost_cell(runs)} | {per_run([f'{r.dup_lines:,}' for r in runs])} | {ratio} |"
        )
    return out


def notes(sc: Scenario, results: dict[str, list[RunResult]]) -> list[str]:
    out: list[str] = []
    everything = [r for runs in results.values() for r in runs]
    if everything:
        rcpu = max(r.receiver_cpu_pct for r in everything)
        out.append(
            f"Receiver (this script's process) CPU during the runs: at most {rcpu:.0f} % "
            "of one core."
        )
    for sh in sc.shippers:
        runs = results.get(sh.key, [])
        facts = _run_facts(sc, runs)
        if facts:
            out.append(f"{sh.label}: {'; '.join(facts)}.")
    return out


def _run_facts(sc: Scenario, runs: Sequence[RunResult]) -> list[str]:
    facts: list[str] = []
    if sc.outage_s and any(r.first_after_up_s is not None for r in runs):
        firsts = [f"{r.first_after_up_s:.1f}" for r in runs if r.first_after_up_s is not None]
        facts.append(f"first line {' / '.join(firsts)} s after the receiver came back")
    if sc.kill_at is not None:
        facts.append(
            "killed at "
            + " / ".join(f"{r.killed_at:,}" if r.killed_at else "never" for r in runs)
            + " lines arrived"
        )
    if any(r.rejected for r in runs):
        facts.append("503 answers " + " / ".join(f"{r.rejected:,}" for r in runs))
    if any(r.dup_copies != r.dup_lines for r in runs):
        facts.append("extra copies " + " / ".join(f"{r.dup_copies:,}" for r in runs))
    if any(r.sng_dropped for r in runs):
        facts.append(
            "syslog-ng's own `dropped` counter " + " / ".join(str(r.sng_dropped) for r in runs)
        )
    if any(r.foreign for r in runs):
        facts.append("lines without a known seq " + " / ".join(str(r.foreign) for r in runs))
    facts.extend(f"run {i + 1}: {r.detail}" for i, r in enumerate(runs) if r.detail)
    return facts


def _output(cmd: Sequence[str], env: dict[str, str] | None = None, timeout: float = 30) -> str:
    """stdout of a short command; raises OSError or SubprocessError when it fails."""
    done = subprocess.run(
        list(cmd), env=env, capture_output=True, text=True, timeout=timeout, check=True
    )
    return done.stdout.strip()


def git_code(src: str) -> str:
    """Which agent code runs: the commit and whether the tree was modified (read-only git)."""
    if not os.path.exists(os.path.join(src, ".git")):
        return f"source tree {src} (not a git checkout)"
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read-only: never refresh the index
    try:
        head = _output(["git", "-C", src, "rev-parse", "--short", "HEAD"], env)
        dirty = _output(["git", "-C", src, "status", "--porcelain", "--untracked-files=no"], env)
    except (OSError, subprocess.SubprocessError):
        return f"source tree {src} (git unreadable)"
    return f"git {head} in {src}" + (" (working tree modified)" if dirty else "")


def python_version(python: str) -> str:
    try:
        return _output([python, "-c", "import platform; print(platform.python_version())"])
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class Header:
    command: str
    date: str
    load_before: tuple[float, float, float]
    machine: str
    code: str
    input_desc: str
    capacity: dict[str, float] | None = None
    load_after: tuple[float, float, float] | None = None
    wall_s: float = 0.0


def print_report(
    h: Header,
    scenarios: Sequence[Scenario],
    results: dict[str, dict[str, list[RunResult]]],
    complete: bool,
) -> None:
    lines = [
        "# ila-agent vs syslog-ng",
        "",
        f"Command: `{h.command}`  ",
        f"Date: {h.date}  ",
        f"Machine: {h.machine}  ",
        f"ila-agent code: {h.code}  ",
    ]
    la = h.load_after or os.getloadavg()
    lines.append(
        "Load average before: "
        + " ".join(f"{x:.2f}" for x in h.load_before)
        + "; after: "
        + " ".join(f"{x:.2f}" for x in la)
        + "  "
    )
    lines.append(f"{h.input_desc}; wall time {h.wall_s:.0f} s.  ")
    if h.capacity:
        c = h.capacity
        lines.append(
            f"Receiver capacity: **{c['lines_per_s']:,.0f} lines/s** ({LOAD_THREADS} "
            f"keep-alive client threads in another process, pre-encoded "
            f"{LOAD_LINES_PER_BODY}-line bodies, {c['seconds']:.1f} s; receiver CPU "
            f"{c['receiver_cpu_pct']:.0f} % of one core)."
        )
    if not complete:
        lines += ["", "**INTERRUPTED or FAILED: the tables below are partial.**"]
    for sc in scenarios:
        res = results.get(sc.key)
        if not res:
            continue
        lines += ["", f"## {sc.key}. {sc.title}", "", *table(sc, res), ""]
        lines += [f"- {n}" for n in notes(sc, res)]
    lines += ["", FOOTNOTE]
    print("\n".join(lines), flush=True)


FOOTNOTE = (
    "Cells: **median** (min–max) over the runs. lines/s = lines arrived / (arrival of the last "
    "new line − shipper start); for scenario 4, − the receiver's return (drain rate); for "
    "scenario 5 it includes the kill and the restart. CPU: utime+stime of the shipper's process "
    "tree (all incarnations) per line arrived. Peak RSS: VmHWM just before the stop. lost: input "
    "lines never received (per run when they differ); † = the run ended unfinished (TIMEOUT: "
    "deadline; STALLED: no progress and no ingest request for a while), so those lines were not "
    "received by then. dup: lines received more than once. Ratio = ila-agent's median lines/s "
    "(batch_size 500 row) / that syslog-ng row's (> 1: ila-agent faster); ⚠ = from partial runs."
)


# -- main ------------------------------------------------------------------------------------


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--agent-config: expected KEY=JSON, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError as exc:
            raise SystemExit(f"--agent-config {key}: not JSON: {value!r} ({exc})") from exc
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--lines",
        type=int,
        help=f"input lines (default {DEFAULT_LINES:,}, {QUICK_LINES:,} with --quick)",
    )
    ap.add_argument(
        "--runs", type=int, help=f"runs per shipper (default {DEFAULT_RUNS}, 1 with --quick)"
    )
    ap.add_argument(
        "--scenarios",
        default="1,2,3a,3b,4,5",
        help="comma list of 1,2,3a,3b,4,5 (3 = 3a,3b; also fast, slow, 503, 503ra, outage, kill9)",
    )
    ap.add_argument("--quick", action="store_true", help="fewer lines, 1 run, shorter deadline")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument(
        "--agent-config",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="add or override an ila-agent config key (repeatable)",
    )
    ap.add_argument(
        "--run-timeout",
        type=float,
        help=f"per-run deadline, s (default "
        f"{DEFAULT_RUN_TIMEOUT_S:.0f}, {QUICK_RUN_TIMEOUT_S:.0f} with --quick)",
    )
    ap.add_argument("--python", help="the agent's interpreter (default: .venv/bin/python)")
    ap.add_argument(
        "--agent-src",
        default=ROOT,
        help="source tree the agent runs from, first "
        "on PYTHONPATH (default: this checkout, e.g. a `git archive` of a commit)",
    )
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the 503 draws")
    ap.add_argument("--no-install", action="store_true", help="never install syslog-ng")
    ap.add_argument(
        "--install",
        "--install-only",
        dest="install_only",
        action="store_true",
        help="install syslog-ng if missing (services kept stopped), then exit",
    )
    args = ap.parse_args(argv)
    args.lines = args.lines or (QUICK_LINES if args.quick else DEFAULT_LINES)
    args.runs = args.runs or (1 if args.quick else DEFAULT_RUNS)
    args.run_timeout = args.run_timeout or (
        QUICK_RUN_TIMEOUT_S if args.quick else DEFAULT_RUN_TIMEOUT_S
    )
    if args.lines < 10 or args.runs < 1 or args.run_timeout <= 0:
        ap.error("--lines ≥ 10, --runs ≥ 1, --run-timeout > 0")
    return args


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def leftover_pids(top_dir: str) -> list[int]:
    """Processes whose command line names our temp dir (they can only be ours)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/cmdline", "rb") as f:
                if top_dir.encode() in f.read():
                    found.append(int(entry))
    return found


def cleanup(top_dir: str, keep: bool) -> None:
    stop_all()
    for pid in leftover_pids(top_dir):
        say(f"killing left-over process {pid}")
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    if keep:
        say(f"kept {top_dir}")
    else:
        shutil.rmtree(top_dir, ignore_errors=True)


def run_all(
    ctx: Ctx,
    scenarios: Sequence[Scenario],
    runs: int,
    results: dict[str, dict[str, list[RunResult]]],
) -> bool:
    """Every scenario, runs interleaved across shippers; False when a run FAILED."""
    ok = True
    for sc in scenarios:
        res = results.setdefault(sc.key, {})
        for r in range(runs):
            for sh in sc.shippers:
                say(f"scenario {sc.key} run {r + 1}/{runs}: {sh.label} ...")
                rr = run_once(ctx, sc, sh, r)
                res.setdefault(sh.key, []).append(rr)
                ok = ok and rr.status != FAILED
                rate = f"{rr.rate:,.0f} lines/s" if rr.rate else "no rate"
                say(
                    f"  {rr.status}: {rr.lines:,}/{rr.expected:,} lines, {rate}, "
                    f"cpu {rr.cpu_s:.2f} s, hwm {rr.hwm_kib / KIB_PER_MIB:.1f} MiB, "
                    f"dup {rr.dup_lines:,}, {rr.wall_s:.1f} s"
                )
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    scenarios = parse_scenarios(args.scenarios)
    signal.signal(signal.SIGTERM, _on_sigterm)
    _AGENT_SRC[0] = os.path.abspath(args.agent_src)
    sng = ensure_syslog_ng(allow_install=not args.no_install)
    if args.install_only:
        say(f"syslog-ng ready: {sng} ({syslog_ng_versions(sng)[0]})")
        return 0
    started = time.monotonic()
    head = Header(
        shlex.join([sys.executable, *sys.argv]),
        dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        os.getloadavg(),
        "",
        git_code(_AGENT_SRC[0]),
        "",
    )
    top = tempfile.mkdtemp(prefix="vs-syslogng-")
    receiver = FastReceiver()
    results: dict[str, dict[str, list[RunResult]]] = {}
    complete = False
    try:
        ctx = make_ctx(args, top, receiver, sng)
        head.machine = machine_desc(ctx)
        mean = write_lines(ctx.input_path, ctx.lines)
        head.input_desc = (
            f"Input: {ctx.lines:,} lines, mean {mean:.1f} bytes with the newline; "
            f"runs: {args.runs} per shipper, interleaved; per-run deadline "
            f"{ctx.run_timeout:.0f} s"
        )
        receiver.start()
        preflight(ctx)
        head.capacity = receiver_capacity(ctx)
        say(f"receiver capacity {head.capacity['lines_per_s']:,.0f} lines/s")
        complete = run_all(ctx, scenarios, args.runs, results)
    except KeyboardInterrupt:
        say("interrupted")
    finally:
        receiver.stop()
        cleanup(top, args.keep)
    head.load_after, head.wall_s = os.getloadavg(), time.monotonic() - started
    print_report(head, scenarios, results, complete)
    return 0 if complete else 1


def make_ctx(args: argparse.Namespace, top: str, receiver: FastReceiver, sng: str) -> Ctx:
    agent_python = installed_python(ensure_agent_python(args.python), top)
    compile_agent(agent_python)
    return Ctx(
        lines=args.lines,
        input_path=os.path.join(top, "input.log"),
        top_dir=top,
        receiver=receiver,
        agent_python=agent_python,
        sng_path=sng,
        sng_config_version=syslog_ng_versions(sng)[1],
        run_timeout=args.run_timeout,
        stall_s=min(STALL_S, args.run_timeout / 2),
        keep=args.keep,
        seed=args.seed,
        agent_overrides=parse_overrides(args.agent_config),
    )


def machine_desc(ctx: Ctx) -> str:
    return (
        f"nproc {os.cpu_count()}, {platform.machine()}, Linux {platform.release()}; "
        f"Python {platform.python_version()} (harness), "
        f"{python_version(ctx.agent_python)} (agent: {ctx.agent_python}); "
        f"syslog-ng {syslog_ng_versions(ctx.sng_path)[0]} ({ctx.sng_path})"
    )


if __name__ == "__main__":
    sys.exit(main())
