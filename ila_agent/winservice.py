"""The agent as a Windows service (pywin32's service framework).

`ila-agent service install|start|stop|remove|status` manages it. The service runs the same
agent loop as `ila-agent run`; the service manager's stop control is a graceful shutdown
(stop reading, let the batch in flight settle, exit). pywin32 is passed in as a small bundle
of modules so the start/stop logic can be tested on Linux against a fake of that boundary.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ila_core.errors import AgentError, ConfigError

SERVICE_NAME = "ila-agent"
DISPLAY_NAME = "ILA-SOC agent"
DESCRIPTION = "Ships security logs to the ILA-SOC server; never loses a line."
CONFIG_OPTION = "config"
CLASS_PATH = "ila_agent.winservice.AgentService"
ERROR_SERVICE_SPECIFIC_ERROR = 1066
# Restart after 5 s, 5 s, then 60 s; the failure count resets after a day without failures.
FAILURE_ACTIONS = ["reset=", "86400", "actions=", "restart/5000/restart/5000/restart/60000"]


def default_config_path() -> str:
    """%ProgramData%\\ila-agent\\config.json."""
    base = os.environ.get("PROGRAMDATA", r"C:\ProgramData")  # Windows env is case-blind
    return os.path.join(base, "ila-agent", "config.json")


@dataclass(frozen=True)
class Pywin32:
    win32serviceutil: ModuleType
    win32service: ModuleType
    servicemanager: ModuleType


def load_pywin32() -> Pywin32:
    """The real pywin32 modules; a clear error off Windows or without the extra."""
    if not sys.platform.startswith("win"):
        raise AgentError(
            "`ila-agent service` manages a Windows service; on Linux use ops/install.sh "
            "(systemd), see SERVICE_INSTALL.md"
        )
    try:
        import servicemanager
        import win32service
        import win32serviceutil
    except ImportError:
        raise AgentError("pywin32 is not installed: pip install 'ila-soc-agent[windows]'") from None
    return Pywin32(win32serviceutil, win32service, servicemanager)


def service_class(pw: Pywin32) -> type:
    """The ServiceFramework subclass, built on the given pywin32 modules."""

    class AgentService(pw.win32serviceutil.ServiceFramework):  # type: ignore[misc,name-defined]
        _svc_name_ = SERVICE_NAME
        _svc_display_name_ = DISPLAY_NAME
        _svc_description_ = DESCRIPTION

        def __init__(self, args: Any) -> None:
            super().__init__(args)
            self.stop_event = threading.Event()
            self.exit_code: int | None = None

        def SvcStop(self) -> None:
            """The stop control: a graceful shutdown of the agent loop."""
            self.ReportServiceStatus(pw.win32service.SERVICE_STOP_PENDING)
            self.stop_event.set()

        def _failed(self, code: int) -> None:
            """Stopped by a failure, not a stop control: recovery actions (restart, set at
            install) only act on a service-specific error code."""
            self.exit_code = code
            self.ReportServiceStatus(
                pw.win32service.SERVICE_STOPPED,
                win32ExitCode=ERROR_SERVICE_SPECIFIC_ERROR,
                svcExitCode=code,
            )

        # Accept the OS shutdown control too (pywin32 offers it when SvcShutdown exists):
        # otherwise the agent is killed at shutdown instead of stopping gracefully.
        SvcShutdown = SvcStop

        def SvcDoRun(self) -> None:
            """Run the agent until SvcStop; a config error is reported, not retried."""
            from ila_agent.agent import Agent
            from ila_agent.config import load_config
            from ila_agent.logging_setup import setup_logging

            sm = pw.servicemanager
            path = pw.win32serviceutil.GetServiceCustomOption(
                self._svc_name_, CONFIG_OPTION, default_config_path()
            )
            sm.LogInfoMsg(f"{SERVICE_NAME}: starting with {path}")
            try:
                cfg = load_config(path)
            except ConfigError as exc:
                sm.LogErrorMsg(f"{SERVICE_NAME}: configuration error: {exc}")
                self._failed(2)
                return
            setup_logging(cfg.agent_log_file, level=cfg.log_level, secret=cfg.api_key,
                          console=False)  # fmt: skip
            try:
                self.exit_code = Agent(cfg, stop=self.stop_event).run()
            except AgentError as exc:
                sm.LogErrorMsg(f"{SERVICE_NAME}: {exc}")
                self.exit_code = 1
            if self.exit_code:
                sm.LogErrorMsg(f"{SERVICE_NAME}: stopped with exit code {self.exit_code}")
                self._failed(self.exit_code)
                return
            sm.LogInfoMsg(f"{SERVICE_NAME}: stopped (exit 0)")

    return AgentService


STATE_NAMES = {
    1: "stopped",
    2: "start pending",
    3: "stop pending",
    4: "running",
    5: "continue pending",
    6: "pause pending",
    7: "paused",
}


def service_command(
    action: str,
    config_path: str | None,
    pw: Pywin32,
    *,
    out: Any,
    run: Any = subprocess.run,
) -> int:
    """install | start | stop | remove | status."""
    su = pw.win32serviceutil
    if action == "install":
        path = os.path.abspath(config_path) if config_path else default_config_path()
        su.InstallService(
            CLASS_PATH,
            SERVICE_NAME,
            DISPLAY_NAME,
            startType=pw.win32service.SERVICE_AUTO_START,
            description=DESCRIPTION,
        )
        su.SetServiceCustomOption(SERVICE_NAME, CONFIG_OPTION, path)
        # Like systemd's Restart=on-failure: sc.exe sets the recovery actions.
        done = run(["sc.exe", "failure", SERVICE_NAME, *FAILURE_ACTIONS], check=False)
        if getattr(done, "returncode", 1) != 0:
            print("warning: could not set restart-on-failure (sc.exe failure)", file=out)
        print(f"service {SERVICE_NAME} installed (automatic start), config {path}", file=out)
        return 0
    simple = {
        "start": (su.StartService, "starting"),
        "stop": (su.StopService, "stopping"),
        "remove": (su.RemoveService, "removed (config and buffer kept)"),
    }
    if action in simple:
        call, said = simple[action]
        call(SERVICE_NAME)
        print(f"service {SERVICE_NAME} {said}", file=out)
        return 0
    if action == "status":
        state = su.QueryServiceStatus(SERVICE_NAME)[1]
        print(f"service {SERVICE_NAME}: {STATE_NAMES.get(state, str(state))}", file=out)
        return 0
    raise AgentError(f"unknown service action {action!r}")


if sys.platform.startswith("win"):  # pragma: no cover - only on Windows with pywin32
    # Without pywin32 there is no service class; `ila-agent service` says how to install it.
    with contextlib.suppress(AgentError):
        AgentService = service_class(load_pywin32())
