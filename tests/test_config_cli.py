"""The configuration contract and the command line, through the real `ila-agent` program."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ila_agent.config import load_config
from ila_core.errors import ConfigError

PY = sys.executable

FIRST_AGENT_CONFIG = {
    "server_url": "http://localhost:5000",
    "api_key": "ila-soc-agent-key-2024",
    "agent_id": None,
    "heartbeat_interval": 60,
    "batch_interval": 5,
    "batch_size": 50,
    "log_sources": {
        "linux": ["/var/log/syslog", "/var/log/auth.log", "/var/log/secure"],
        "windows": ["Security", "System", "Application"],
    },
    "buffer_db": "log_buffer.db",
    "agent_log_file": "agent.log",
    "retry_interval": 30,
    "max_retries": 5,
}


def cli(*args: str, cwd: Path | None = None, env: dict | None = None):
    full_env = {k: v for k, v in os.environ.items() if k != "ILA_AGENT_API_KEY"}
    full_env.update(env or {})
    return subprocess.run(
        [PY, "-m", "ila_agent", *args], capture_output=True, text=True, timeout=30, cwd=cwd,
        env=full_env,
    )  # fmt: skip


def write(tmp: Path, obj: object, name: str = "config.json") -> Path:
    p = tmp / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


class TestConfigErrors:
    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing config file: exit 2, the file named, no traceback."""
        for cmd in ("check-config", "run"):
            out = cli(cmd, "--config", str(tmp_path / "nope.json"))
            assert out.returncode == 2
            assert "nope.json" in out.stderr and "not found" in out.stderr
            assert "Traceback" not in out.stderr

    def test_bad_json(self, tmp_path: Path) -> None:
        """Broken JSON: exit 2 with the line and column."""
        p = write(tmp_path, '{"server_url": "http://x",\n "batch_size": }')
        out = cli("check-config", "--config", str(p))
        assert out.returncode == 2
        assert str(p) in out.stderr and "line 2" in out.stderr
        assert "Traceback" not in out.stderr

    @pytest.mark.parametrize(
        ("key", "value", "words"),
        [
            ("batch_size", "50", "must be an integer"),
            ("batch_size", 0, "at least 1"),
            ("heartbeat_interval", "60", "must be a number"),
            ("heartbeat_interval", True, "must be a number"),
            ("start_position", "middle", "must be one of"),
            ("server_url", "ftp://soc.example", "http:// or https://"),
            ("server_url", 5000, "must be a string"),
            ("buffer_full_policy", "drop_newest", "must be one of"),
            ("log_sources", "/var/log/syslog", "must be an object or a list"),
            ("heartbeat_interval", float("nan"), "finite"),
            ("retry_interval", float("inf"), "finite"),
            ("api_key", "two\nlines", "control or non-Latin-1"),
        ],
    )
    def test_wrong_values_name_file_and_key(
        self, tmp_path: Path, key: str, value: object, words: str
    ) -> None:
        """Each invalid value: exit 2 from check-config and run, naming file, key and problem."""
        cfg = {**FIRST_AGENT_CONFIG, key: value, "log_sources": []}
        if key == "log_sources":
            cfg["log_sources"] = value
        p = write(tmp_path, cfg)
        for cmd in ("check-config", "run"):
            out = cli(cmd, "--config", str(p))
            assert out.returncode == 2, out
            assert str(p) in out.stderr and f"{key}:" in out.stderr and words in out.stderr
            assert "Traceback" not in out.stderr

    def test_key_never_printed(self, tmp_path: Path) -> None:
        """check-config prints the effective config with the key redacted."""
        p = write(tmp_path, {**FIRST_AGENT_CONFIG, "api_key": "s3cr3t-value-xyz"})
        out = cli("check-config", "--config", str(p))
        assert out.returncode == 0
        assert "s3cr3t-value-xyz" not in out.stdout + out.stderr
        assert "***redacted***" in out.stdout


class TestConfigLoading:
    def test_first_agent_config_loads_unchanged(self, tmp_path: Path) -> None:
        """The first agent's config.json is valid as it is, with its defaults."""
        p = write(tmp_path, FIRST_AGENT_CONFIG)
        cfg = load_config(p, platform="linux")
        assert cfg.server_url == "http://localhost:5000"
        assert cfg.batch_size == 50 and cfg.heartbeat_interval == 60.0
        assert [s.pattern for s in cfg.file_sources] == [
            "/var/log/syslog", "/var/log/auth.log", "/var/log/secure",
        ]  # fmt: skip
        assert cfg.ignored_sources == ("Windows-Security", "Windows-System", "Windows-Application")
        assert cfg.buffer_db == str(tmp_path / "log_buffer.db")
        assert "max_retries" not in cfg.unknown_keys  # accepted (and unused: never give up)
        assert cli("check-config", "--config", str(p)).returncode == 0

    def test_relative_paths_resolve_against_config_dir(self, tmp_path: Path) -> None:
        """Relative paths are relative to the config file's folder, not the working folder."""
        sub = tmp_path / "etc"
        sub.mkdir()
        p = write(sub, {"log_sources": ["logs/*.log", {"path": "a.log", "source": "app"}],
                        "buffer_db": "state/b.db", "agent_log_file": "agent.log"})  # fmt: skip
        cfg = load_config(p)
        assert cfg.buffer_db == str(sub / "state/b.db")
        patterns = [s.pattern for s in cfg.file_sources]
        assert patterns == [str(sub / "logs/*.log"), str(sub / "a.log")]
        assert cfg.file_sources[1].name == "app"

    def test_no_server_url_is_collect_only(self, tmp_path: Path) -> None:
        """No server_url: valid, collect-only mode, said by check-config."""
        p = write(tmp_path, {"log_sources": []})
        out = cli("check-config", "--config", str(p))
        assert out.returncode == 0
        assert "collect-only" in out.stdout

    def test_api_key_sources(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """api_key_file is stripped; ILA_AGENT_API_KEY wins; no key with a server is an error."""
        keyfile = tmp_path / "key"
        keyfile.write_text("  from-file-key\n")
        monkeypatch.delenv("ILA_AGENT_API_KEY", raising=False)
        p = write(tmp_path, {"server_url": "https://soc", "api_key_file": "key"})
        assert load_config(p).api_key == "from-file-key"
        monkeypatch.setenv("ILA_AGENT_API_KEY", "from-env")
        assert load_config(p).api_key == "from-env"
        monkeypatch.delenv("ILA_AGENT_API_KEY")
        p2 = write(tmp_path, {"server_url": "https://soc"}, "c2.json")
        with pytest.raises(ConfigError, match="api_key"):
            load_config(p2)

    def test_under_systemd_default_paths_go_to_its_directories(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Left out, buffer_db and agent_log_file go to StateDirectory/LogsDirectory."""
        monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/ila-agent")
        monkeypatch.setenv("LOGS_DIRECTORY", "/var/log/ila-agent")
        cfg = load_config(write(tmp_path, {"log_sources": []}))
        assert cfg.buffer_db == "/var/lib/ila-agent/log_buffer.db"
        assert cfg.agent_log_file == "/var/log/ila-agent/agent.log"
        given = load_config(write(tmp_path, {"log_sources": [], "buffer_db": "b.db"}, "c2.json"))
        assert given.buffer_db == str(tmp_path / "b.db")

    def test_agent_id_kept_with_read_only_config(self, tmp_path: Path) -> None:
        """agent_id is generated once and kept beside the buffer, even if config is read-only."""
        from ila_agent.wiring import resolve_agent_id

        p = write(tmp_path, {"log_sources": []})
        os.chmod(p, 0o444)
        cfg = load_config(p)
        first = resolve_agent_id(cfg)
        assert first == resolve_agent_id(load_config(p))
        assert json.loads(p.read_text()) == {"log_sources": []}

    def test_version_and_help(self) -> None:
        """--version prints the version; --help documents exit codes."""
        from ila_agent.version import __version__

        out = cli("--version")
        assert out.returncode == 0 and __version__ in out.stdout
        helptext = cli("--help").stdout
        assert "exit codes" in helptext and "2  configuration error" in helptext


class TestUsage:
    def test_nested_unknown_keys_are_warned(self, tmp_path: Path) -> None:
        """A typo inside a log_sources item is named, like a top-level one."""
        p = write(tmp_path, {"log_sources": [{"path": "a.log", "sourc": "x"}], "batch_sise": 5})
        out = cli("check-config", "--config", str(p))
        assert out.returncode == 0
        assert "unknown keys ignored: batch_sise, log_sources[0].sourc" in out.stdout

    def test_impossible_command_lines_exit_2(self, tmp_path: Path) -> None:
        """Bad option values and impossible requests: exit 2, a clear line, no traceback."""
        p = write(tmp_path, {"log_sources": []})
        for args in (
            ("inspect", "--limit", "0"),
            ("inspect", "--since", "yesterday"),
            ("replay",),  # collect-only: no server to replay to
            ("replay", "--acked", "--server-url", "http://127.0.0.1:9"),
            ("export", str(tmp_path / "no" / "such" / "dir" / "b.bundle")),
        ):
            out = cli(*args, "--config", str(p))
            assert out.returncode == 2, (args, out.stderr)
            assert "Traceback" not in out.stderr and out.stderr.strip()
        out = cli("export", str(tmp_path / "nodir" / "b"), "--config", str(p))
        assert "the folder" in out.stderr and "does not exist" in out.stderr
        assert ".tmp" not in out.stderr  # no internal temporary file names
