"""Running it for real: the systemd unit, install.sh, the wheel, the Windows service, modes."""

from __future__ import annotations

import configparser
import io
import os
import shutil
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest

from ila_agent import winservice
from ila_agent.version import __version__

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "ops" / "systemd" / "ila-agent.service"
BIN = Path(sys.executable).parent


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def unit_service_section(path: Path) -> dict[str, str]:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment, method-assign]
    cp.read(path)
    return dict(cp["Service"])


class TestSystemdUnit:
    def test_hardening_keys_present(self) -> None:
        """The unit runs as its own user with the hardening the issue asks for."""
        svc = unit_service_section(UNIT)
        expected = {
            "User": "ila-agent",
            "NoNewPrivileges": "yes",
            "ProtectSystem": "strict",
            "ProtectHome": "yes",
            "PrivateTmp": "yes",
            "CapabilityBoundingSet": "",
            "Restart": "on-failure",
            "StateDirectory": "ila-agent",
            "ConfigurationDirectory": "ila-agent",
        }
        assert {k: svc.get(k) for k in expected} == expected
        assert "adm" in svc["SupplementaryGroups"].split()
        assert set(svc["ReadWritePaths"].split()) == {"/var/lib/ila-agent", "/var/log/ila-agent"}
        assert float(svc["TimeoutStopSec"]) >= 15  # the agent's own shutdown takes ≤ 10 s
        assert "run --config /etc/ila-agent/config.json" in svc["ExecStart"]
        assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"  # systemctl reload: SIGHUP
        assert int(svc["LimitNOFILE"]) >= 65536  # thousands of log files

    def test_systemd_analyze_verify(self, tmp_path: Path) -> None:
        """systemd-analyze verify passes (the binary path pointed at an installed ila-agent)."""
        if shutil.which("systemd-analyze") is None:
            pytest.skip("systemd-analyze not installed (ops/test.sh installs it with apt)")
        unit = tmp_path / "ila-agent.service"
        unit.write_text(UNIT.read_text().replace("/opt/ila-agent/venv/bin", str(BIN)))
        out = subprocess.run(
            ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert "ila-agent.service" not in out.stderr, out.stderr  # no warning about our unit


class TestInstallScript:
    def test_install_twice_keeps_config_and_buffer_then_uninstall(self, tmp_path: Path) -> None:
        """install.sh --prefix: works, is idempotent, keeps config and buffer; --uninstall
        removes what it installed and nothing else."""
        root = tmp_path / "root"
        (root / "etc").mkdir(parents=True)
        (root / "etc" / "hosts.keep").write_text("not ours\n")
        env = {**os.environ, "PYTHON": sys.executable}

        def install(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["bash", str(ROOT / "ops" / "install.sh"), "--prefix", str(root), *args],
                capture_output=True, text=True, timeout=300, env=env,
            )  # fmt: skip

        out = install()
        assert out.returncode == 0, out.stderr
        exe = root / "opt/ila-agent/venv/bin/ila-agent"
        config = root / "etc/ila-agent/config.json"
        assert oct(config.stat().st_mode & 0o777) == "0o640"
        v = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
        assert v.stdout.strip() == f"ila-agent {__version__}"
        check = subprocess.run(
            [str(exe), "check-config", "--config", str(config)], capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
        assert check.returncode == 0, check.stderr
        assert str(root / "var/lib/ila-agent/log_buffer.db") in check.stdout
        unit = root / "etc/systemd/system/ila-agent.service"
        assert f"ExecStart={exe} run --config {config}" in unit.read_text()
        groups = [g for g in ("adm", "systemd-journal") if _group_exists(g)]
        rendered = [x for x in unit.read_text().splitlines() if x.startswith("Supplementary")]
        assert rendered == ([f"SupplementaryGroups={' '.join(groups)}"] if groups else [])
        if shutil.which("systemd-analyze"):  # the unit as installed, its binary real
            verify = subprocess.run(
                ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                timeout=60,
            )  # fmt: skip
            assert verify.returncode == 0, verify.stderr

        config.write_text(config.read_text().replace('"server_url": null', '"hostname": "edited"'))
        edited = config.read_text()
        buffer = root / "var/lib/ila-agent/log_buffer.db"
        buffer.write_bytes(b"pretend buffer")
        out = install()
        assert out.returncode == 0, out.stderr
        assert config.read_text() == edited and buffer.read_bytes() == b"pretend buffer"
        assert "keeping" in out.stdout

        out = install("--uninstall")
        assert out.returncode == 0, out.stderr
        assert not (root / "opt/ila-agent").exists() and not unit.exists()
        assert config.read_text() == edited and buffer.exists()
        assert (root / "etc/hosts.keep").read_text() == "not ours\n"

        out = install("--uninstall", "--purge")
        assert out.returncode == 0, out.stderr
        assert not (root / "etc/ila-agent").exists() and not buffer.exists()
        assert (root / "etc/hosts.keep").exists()


class TestWheel:
    def test_wheel_installs_into_a_fresh_venv(self, tmp_path: Path) -> None:
        """python -m build makes an sdist and a wheel; the wheel installs in a fresh venv and
        ila-agent --help runs."""
        dist = tmp_path / "dist"
        out = subprocess.run(
            [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-2000:]
        wheels = list(dist.glob("ila_soc_agent-*.whl"))
        assert len(wheels) == 1 and __version__ in wheels[0].name
        assert len(list(dist.glob(f"ila_soc_agent-{__version__}.tar.gz"))) == 1
        venv = tmp_path / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        pip = subprocess.run(
            [str(venv / "bin/pip"), "install", "--quiet", str(wheels[0])],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert pip.returncode == 0, pip.stderr[-2000:]
        helped = subprocess.run(
            [str(venv / "bin/ila-agent"), "--help"], capture_output=True, text=True, timeout=60
        )
        assert helped.returncode == 0 and "exit codes" in helped.stdout
        listed = subprocess.run(
            [str(venv / "bin/pip"), "list", "--format=freeze"], capture_output=True, text=True,
            timeout=60,
        ).stdout.lower()  # fmt: skip
        assert "pywin32" not in listed  # the windows extra stays off Linux


# -- Windows service, on a fake of the pywin32 boundary (it cannot run here) -----------------


class FakeFramework:
    """Stands in for win32serviceutil.ServiceFramework: records status reports."""

    def __init__(self, args: object) -> None:
        self.args = args
        self.reported: list[int] = []

    def ReportServiceStatus(
        self, status: int, waitHint: int = 5000, win32ExitCode: int = 0, svcExitCode: int = 0
    ) -> None:
        self.reported.append(status)
        self.exit_codes = (win32ExitCode, svcExitCode)


def fake_pywin32(options: dict[str, str]) -> tuple[winservice.Pywin32, list[tuple]]:
    calls: list[tuple] = []
    su = types.ModuleType("win32serviceutil")
    su.ServiceFramework = FakeFramework  # type: ignore[attr-defined]
    su.GetServiceCustomOption = lambda name, opt, default=None: options.get(opt, default)  # type: ignore[attr-defined]
    su.SetServiceCustomOption = lambda name, opt, value: (  # type: ignore[attr-defined]
        calls.append(("set", name, opt, value)),
        options.__setitem__(opt, value),
    )
    for verb in ("StartService", "StopService", "RemoveService"):
        setattr(su, verb, lambda name, _v=verb: calls.append((_v, name)))
    su.InstallService = lambda cls, name, display, **kw: calls.append(  # type: ignore[attr-defined]
        ("InstallService", cls, name, display, kw)
    )
    su.QueryServiceStatus = lambda name: (16, 4, 0, 0, 0, 0, 0)  # type: ignore[attr-defined]
    ws = types.ModuleType("win32service")
    ws.SERVICE_STOPPED = 1  # type: ignore[attr-defined]
    ws.SERVICE_STOP_PENDING = 3  # type: ignore[attr-defined]
    ws.SERVICE_AUTO_START = 2  # type: ignore[attr-defined]
    sm = types.ModuleType("servicemanager")
    sm.LogInfoMsg = lambda msg: calls.append(("info", msg))  # type: ignore[attr-defined]
    sm.LogErrorMsg = lambda msg: calls.append(("error", msg))  # type: ignore[attr-defined]
    return winservice.Pywin32(su, ws, sm), calls


class TestWindowsService:
    """Verified here on a fake pywin32 only; see SERVICE_INSTALL.md for what is untested."""

    def test_start_run_stop_is_a_graceful_shutdown(self, tmp_path: Path) -> None:
        """SvcDoRun runs the agent loop; SvcStop reports STOP_PENDING and the loop exits 0."""
        log = tmp_path / "app.log"
        log.write_text("x\n")
        cfg = tmp_path / "config.json"
        cfg.write_text(
            '{"log_sources": ["app.log"], "buffer_db": "b.db", "agent_log_file": "a.log",'
            ' "start_position": "beginning", "poll_interval": 0.1}'
        )
        pw, calls = fake_pywin32({"config": str(cfg)})
        svc = winservice.service_class(pw)(["ila-agent"])
        runner = threading.Thread(target=svc.SvcDoRun)
        runner.start()
        buffer = tmp_path / "b.db"
        deadline = threading.Event()
        for _ in range(200):
            if buffer.exists() and (tmp_path / "b.db.agent-id").exists():
                break
            deadline.wait(0.05)
        svc.SvcStop()
        runner.join(15)
        assert not runner.is_alive()
        assert svc.reported == [3]
        assert svc.exit_code == 0
        assert svc.SvcShutdown.__name__ == "SvcStop"  # the OS shutdown is a graceful stop
        assert calls[0] == ("info", f"ila-agent: starting with {cfg}")
        assert calls[-1] == ("info", "ila-agent: stopped (exit 0)")

    def test_config_error_is_logged_not_retried(self, tmp_path: Path) -> None:
        """A broken config: an error in the event log, exit code 2, no crash."""
        cfg = tmp_path / "config.json"
        cfg.write_text('{"batch_size": "many"}')
        pw, calls = fake_pywin32({"config": str(cfg)})
        svc = winservice.service_class(pw)(["ila-agent"])
        svc.SvcDoRun()
        assert svc.exit_code == 2
        assert calls[-1][0] == "error" and "batch_size" in calls[-1][1]
        assert svc.reported == [1] and svc.exit_codes == (1066, 2)  # a failure, not a stop

    def test_command_line_actions(self, tmp_path: Path) -> None:
        """install stores the config path; start/stop/remove/status call the service manager."""
        pw, calls = fake_pywin32({})
        out = io.StringIO()
        cfg = tmp_path / "c.json"
        ran: list[list[str]] = []

        def run(cmd: list[str], check: bool) -> types.SimpleNamespace:
            ran.append(cmd)
            return types.SimpleNamespace(returncode=0)

        for action in ("install", "start", "stop", "status", "remove"):
            assert winservice.service_command(action, str(cfg), pw, out=out, run=run) == 0
        assert ran == [["sc.exe", "failure", "ila-agent", *winservice.FAILURE_ACTIONS]]
        names = [c[0] for c in calls]
        assert names == ["InstallService", "set", "StartService", "StopService", "RemoveService"]
        assert calls[0][1] == "ila_agent.winservice.AgentService"
        assert calls[0][4]["startType"] == 2
        assert calls[1] == ("set", "ila-agent", "config", str(cfg))
        assert "ila-agent: running" in out.getvalue()

    def test_off_windows_the_command_says_what_to_use(self) -> None:
        """On Linux `ila-agent service` exits 1 and points to install.sh."""
        out = subprocess.run(
            [sys.executable, "-m", "ila_agent", "service", "status"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 1 and "install.sh" in out.stderr

    def test_default_paths_under_programdata(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The config defaults to %ProgramData%\\ila-agent\\config.json."""
        monkeypatch.setenv("PROGRAMDATA", "/pd")
        assert winservice.default_config_path() == os.path.join("/pd", "ila-agent", "config.json")


class TestPermissions:
    def test_world_writable_config_or_buffer_is_refused(self, tmp_path: Path) -> None:
        """The agent refuses to start with a config or buffer any user can write."""
        cfg = tmp_path / "config.json"
        cfg.write_text('{"log_sources": [], "buffer_db": "b.db"}')
        os.chmod(cfg, 0o666)
        run = [sys.executable, "-m", "ila_agent", "run", "--config", str(cfg)]
        out = subprocess.run(run, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "can be written by any user" in out.stderr
        assert str(cfg) in out.stderr
        os.chmod(cfg, 0o600)
        (tmp_path / "b.db").write_bytes(b"")
        os.chmod(tmp_path / "b.db", 0o646)
        out = subprocess.run(run, capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and "buffer" in out.stderr

    def test_key_in_a_world_readable_config_warns(self, tmp_path: Path) -> None:
        """A config holding the key that all can read: a warning (the key is not printed)."""
        from ila_agent.config import load_config
        from ila_agent.permissions import check_permissions

        cfg = tmp_path / "config.json"
        cfg.write_text('{"server_url": "http://127.0.0.1:9", "api_key": "k-secret-123"}')
        os.chmod(cfg, 0o644)
        warnings = check_permissions(load_config(cfg))
        assert len(warnings) == 1 and "any user can read" in warnings[0]
        assert "k-secret-123" not in warnings[0]
        os.chmod(cfg, 0o640)
        assert check_permissions(load_config(cfg)) == []
