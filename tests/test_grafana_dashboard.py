"""ops/grafana-dashboard.json: valid, importable, and built only on the metrics the contract lists.

Beyond the structure (a ``${DS_PROMETHEUS}`` input, an instance variable, panels that do not
overlap), every query is checked three ways: its metric and label names are the contract's;
``promtool check rules`` parses it; and ``promtool test rules`` evaluates it on series shaped
as the contract describes them, so a query that could never return data (a misspelt label, a
wrong aggregation) fails here rather than on an operator's empty panel.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "ops" / "grafana-dashboard.json"

# The contract's metrics ("Metrics and health") and the labels each one carries besides the
# scrape's own (instance, job).
METRICS: dict[str, set[str]] = {
    "ila_agent_pending_entries": set(),
    "ila_agent_pending_bytes": set(),
    "ila_agent_oldest_pending_age_seconds": set(),
    "ila_agent_entries_committed_total": {"source"},
    "ila_agent_entries_delivered_total": set(),
    "ila_agent_dropped_total": set(),
    "ila_agent_filtered_total": set(),
    "ila_agent_dead_letter_entries": set(),
    "ila_agent_send_failures_total": {"reason"},
    "ila_agent_requests_in_flight": set(),
    "ila_agent_request_duration_seconds": set(),
    "ila_agent_source_lag_bytes": {"source"},
    "ila_agent_input_dropped_total": {"source"},
}
HISTOGRAMS = {"ila_agent_request_duration_seconds"}
SCRAPE_LABELS = {"instance", "job"}
# PromQL words that are not metric names: aggregations and functions are followed by "(".
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
            "unless", "bool", "offset", "inf", "nan"}  # fmt: skip


def series_names() -> dict[str, set[str]]:
    """Every series name a query may select, with the labels it carries."""
    names = {m: labels | SCRAPE_LABELS for m, labels in METRICS.items() if m not in HISTOGRAMS}
    for h in HISTOGRAMS:
        names[h + "_bucket"] = METRICS[h] | SCRAPE_LABELS | {"le"}
        names[h + "_sum"] = METRICS[h] | SCRAPE_LABELS
        names[h + "_count"] = METRICS[h] | SCRAPE_LABELS
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text(encoding="utf-8")))


def panels(d: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in d["panels"]:
        yield p
        yield from p.get("panels", [])  # a collapsed row holds its panels


def exprs(d: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression) of every query target."""
    return [(p["title"], t["expr"]) for p in panels(d) for t in p.get("targets", [])]


def selectors(expr: str) -> list[tuple[str, str]]:
    """(name, label matchers) of each series selector; names without braces get ''."""
    out = []
    strings: list[str] = []

    def hide(m: re.Match[str]) -> str:  # strings hold no names; they come back in the matchers
        strings.append(m.group(0))
        return f'"{len(strings) - 1}"'

    code = re.sub(r'"(?:[^"\\]|\\.)*"', hide, expr)
    code = re.sub(r"\[[^\]]*\]", "", code)  # range durations, $__rate_interval
    # Grouping clauses name labels, not series.
    code = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", code)
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{[^}]*\})?\s*(\()?", code):
        name, braces, call = m.group(1), m.group(2), m.group(3)
        if call and not braces:
            continue  # a function or an aggregation
        if name.lower() in KEYWORDS:
            continue
        braces = re.sub(r'"(\d+)"', lambda s: strings[int(s.group(1))], braces or "")
        out.append((name, braces))
    return out


def grouping_labels(expr: str) -> set[str]:
    found: set[str] = set()
    for m in re.finditer(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        found |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    return found


def substitute(expr: str) -> str:
    """Grafana's variables, as Grafana would fill them in (all hosts selected)."""
    return (
        expr.replace("$__rate_interval", "1m").replace("$__range", "10m")
        .replace("$instance", ".*")
    )  # fmt: skip


class TestStructure:
    def test_an_importable_dashboard_of_a_recent_grafana(self, dashboard: dict[str, Any]) -> None:
        assert dashboard["schemaVersion"] >= 39  # Grafana 11
        assert dashboard["uid"] and dashboard["title"]
        [ds] = dashboard["__inputs"]
        assert (ds["name"], ds["type"], ds["pluginId"]) == (
            "DS_PROMETHEUS", "datasource", "prometheus"
        )  # fmt: skip
        required = {(r["type"], r["id"]) for r in dashboard["__requires"]}
        kinds = {p["type"] for p in panels(dashboard) if p["type"] != "row"}
        assert {("grafana", "grafana"), ("datasource", "prometheus")} <= required
        assert {("panel", k) for k in kinds} <= required

    def test_every_query_uses_the_input_datasource(self, dashboard: dict[str, Any]) -> None:
        uid = "${DS_PROMETHEUS}"
        for p in panels(dashboard):
            if p["type"] == "row":
                continue
            assert p["datasource"]["uid"] == uid, p["title"]
            assert p["targets"], p["title"]
            for t in p["targets"]:
                assert t["datasource"]["uid"] == uid, p["title"]
        [var] = [v for v in dashboard["templating"]["list"] if v["name"] == "instance"]
        assert var["datasource"]["uid"] == uid

    def test_an_instance_variable_filters_every_selector(self, dashboard: dict[str, Any]) -> None:
        [var] = [v for v in dashboard["templating"]["list"] if v["name"] == "instance"]
        assert var["type"] == "query" and var["multi"] and var["includeAll"]
        assert re.fullmatch(r"label_values\((ila_agent_\w+), instance\)", var["definition"])
        assert var["query"]["query"] == var["definition"]
        for title, expr in exprs(dashboard):
            for name, braces in selectors(expr):
                assert 'instance=~"$instance"' in braces, f"{title}: {name}{braces}"

    def test_panels_have_unique_ids_and_do_not_overlap(self, dashboard: dict[str, Any]) -> None:
        ids = [p["id"] for p in panels(dashboard)]
        assert len(ids) == len(set(ids))
        cells: dict[tuple[int, int], str] = {}
        for p in panels(dashboard):
            g = p["gridPos"]
            assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = p["title"]


class TestQueries:
    def test_only_the_contracts_metrics_and_labels(self, dashboard: dict[str, Any]) -> None:
        allowed = series_names()
        all_labels = set().union(*allowed.values())
        for title, expr in exprs(dashboard):
            found = selectors(expr)
            assert found, f"{title}: no metric in {expr}"
            for name, braces in found:
                assert name in allowed, f"{title}: {name} is not a contract metric"
                used = set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", braces))
                assert used <= allowed[name], f"{title}: {name} has no label {used - allowed[name]}"
            assert grouping_labels(expr) <= all_labels, f"{title}: {expr}"

    def test_every_contract_metric_is_shown(self, dashboard: dict[str, Any]) -> None:
        used = {name for _, expr in exprs(dashboard) for name, _ in selectors(expr)}
        bases = {re.sub(r"_(bucket|sum|count)$", "", n) if n.startswith(tuple(HISTOGRAMS)) else n
                 for n in used}  # fmt: skip
        assert bases == set(METRICS)

    def test_the_panels_the_operator_needs(self, dashboard: dict[str, Any]) -> None:
        """Backlog, drain rate, drops, dead letters, failures by reason, lag per source, in
        flight and duration quantiles: each has a panel built on its metric."""
        by_title = {p["title"]: " ".join(t["expr"] for t in p.get("targets", []))
                    for p in panels(dashboard)}  # fmt: skip

        def panel_with(pattern: str) -> list[str]:
            return [t for t, e in by_title.items() if re.search(pattern, e)]

        assert panel_with(r"ila_agent_pending_entries")
        assert panel_with(r"rate\(ila_agent_entries_delivered_total")
        assert panel_with(r"rate\(ila_agent_dropped_total")
        assert panel_with(r"ila_agent_dead_letter_entries")
        assert panel_with(r"sum by \(reason\) \(rate\(ila_agent_send_failures_total")
        assert panel_with(r"by \(instance, source\) \(ila_agent_source_lag_bytes")
        assert panel_with(r"ila_agent_requests_in_flight")
        quantiles = panel_with(r"histogram_quantile\(0\.99, sum by \(le\)")
        assert quantiles and panel_with(r"histogram_quantile\(0\.5,")

    def test_the_contract_lists_these_metrics(self) -> None:
        """The list above is the contract's, when the contract is beside the repository."""
        contract = ROOT.parent / "shared" / "agent-contract.md"
        if not contract.exists():
            pytest.skip(f"{contract} is not here (only the list in this test is checked)")
        text = contract.read_text(encoding="utf-8")
        section = text.split("## Metrics and health", 1)[1].split("\n## ", 1)[0]
        assert set(re.findall(r"`(ila_agent_[a-z_]+)", section)) == set(METRICS)


# -- promtool: the queries parse, and return data on series shaped as the contract says ---------


@pytest.fixture(scope="module")
def promtool(tmp_path_factory: pytest.TempPathFactory) -> str:
    """promtool from PATH, or taken out of Debian's prometheus package (downloaded with
    apt-get, unpacked with dpkg-deb: nothing is installed and no daemon is started)."""
    found = shutil.which("promtool")
    if found:
        return found
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        pytest.skip("no promtool, and no apt-get/dpkg-deb to fetch Debian's prometheus package")
    where = tmp_path_factory.mktemp("promtool")

    def download() -> bool:
        done = subprocess.run(
            ["apt-get", "download", "-qq", "prometheus"], cwd=where, capture_output=True,
            timeout=300, check=False,
        )  # fmt: skip
        return done.returncode == 0 and any(where.glob("prometheus_*.deb"))

    if not download() and os.geteuid() == 0:
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300, check=False)
        download()
    debs = sorted(where.glob("prometheus_*.deb"))
    if not debs:
        pytest.skip("promtool: Debian's prometheus package could not be downloaded")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(where / "x")], check=True, timeout=120)
    tool = where / "x" / "usr" / "bin" / "promtool"
    if not tool.exists():
        pytest.skip("promtool is not in Debian's prometheus package")
    return str(tool)


def synthetic_series() -> list[dict[str, str]]:
    """Two hosts, every contract metric with its labels, counters that grow, a histogram."""
    series = []
    for host in ("host-a:9464", "host-b:9464"):
        base = f'instance="{host}", job="ila-agent"'

        def add(name: str, values: str, base: str = base, **labels: str) -> None:
            extra = "".join(f', {k}="{v}"' for k, v in labels.items())
            series.append({"series": f"{name}{{{base}{extra}}}", "values": values})

        add("ila_agent_pending_entries", "100+5x60")
        add("ila_agent_pending_bytes", "10000+500x60")
        add("ila_agent_oldest_pending_age_seconds", "1+15x60")
        add("ila_agent_dead_letter_entries", "2x60")
        add("ila_agent_requests_in_flight", "3x60")
        for counter in ("entries_delivered", "dropped", "filtered"):
            add(f"ila_agent_{counter}_total", "0+20x60")
        for source in ("auth", "syslog"):
            add("ila_agent_entries_committed_total", "0+25x60", source=source)
            add("ila_agent_source_lag_bytes", "4096x60", source=source)
            add("ila_agent_input_dropped_total", "0+1x60", source=source)
        for reason in ("connection", "http_503"):
            add("ila_agent_send_failures_total", "0+2x60", reason=reason)
        for le, step in (("0.05", 5), ("0.25", 15), ("1", 19), ("+Inf", 20)):
            add("ila_agent_request_duration_seconds_bucket", f"0+{step}x60", le=le)
        add("ila_agent_request_duration_seconds_sum", "0+4x60")
        add("ila_agent_request_duration_seconds_count", "0+20x60")
    return series


def test_promtool_parses_every_query(
    dashboard: dict[str, Any], promtool: str, tmp_path: Path
) -> None:
    rules = [
        {"record": f"dashboard:query_{i}", "expr": substitute(expr)}
        for i, (_, expr) in enumerate(exprs(dashboard))
    ]
    rules.append({"record": "dashboard:variable", "expr": "ila_agent_pending_entries"})
    path = tmp_path / "queries.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))  # YAML ⊇ JSON
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_query_returns_data_on_the_contracts_series(
    dashboard: dict[str, Any], promtool: str, tmp_path: Path
) -> None:
    """``absent(q)`` is empty exactly when ``q`` returns something: each query, evaluated at
    the end of 15 minutes of synthetic series, must return something."""
    tests = [
        {"expr": f"absent({substitute(expr)})", "eval_time": "10m", "exp_samples": []}
        for _, expr in exprs(dashboard)
    ]
    spec = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [{"interval": "15s", "input_series": synthetic_series(),
                   "promql_expr_test": tests}],
    }  # fmt: skip
    path = tmp_path / "dashboard_test.yml"
    path.write_text(json.dumps(spec))
    done = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # The check can fail: a query on a label the series do not carry returns nothing.
    spec["tests"][0]["promql_expr_test"] = [  # type: ignore[index]
        {"expr": 'absent(ila_agent_send_failures_total{source="x"})', "eval_time": "10m",
         "exp_samples": []}
    ]  # fmt: skip
    path.write_text(json.dumps(spec))
    done = subprocess.run(
        [promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
