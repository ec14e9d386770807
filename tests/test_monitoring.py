"""monitoring/ checked with the real tools: promtool on the Prometheus config, the rules and
their unit tests; Grafana's published schema (npm @grafana/schema, tsc) on the dashboards; and
every metric a panel or rule uses against monitoring/METRICS.md, the contract the live test
(test_metrics_live.py) holds the running appliance to."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.prometheus import (
    DASHBOARDS,
    MONITORING,
    ROOT,
    load_dashboard,
    metric_names,
    panel_expressions,
    promtool,
)

PROMETHEUS = MONITORING / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
TYPECHECK = MONITORING / "grafana" / "typecheck"


def declared_metrics() -> dict[str, str]:
    """name -> type from METRICS.md's tables (first column a `raiox_...` name)."""
    declared = {}
    for line in (MONITORING / "METRICS.md").read_text().splitlines():
        match = re.match(r"\|\s*`(raiox_\w+)`\s*\|\s*(\w+)", line)
        if match:
            declared[match.group(1)] = match.group(2)
    return declared


def exporter_metrics() -> set[str]:
    lines = (MONITORING / "exporter-metrics.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def rules() -> list[dict[str, Any]]:
    found = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            found.extend(group["rules"])
    return found


def known_names() -> set[str]:
    names = set(exporter_metrics())
    for name, kind in declared_metrics().items():
        names.add(name)
        if kind == "histogram":
            names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    names.update(rule["record"] for rule in rules() if "record" in rule)
    return names


def test_metrics_md_declares_the_issue_s_metrics() -> None:
    declared = declared_metrics()
    assert len(declared) >= 20
    for name, kind in declared.items():
        assert kind in {"counter", "gauge", "histogram"}, name
        assert name.endswith("_total") == (kind == "counter"), f"{name}: _total iff counter"
    assert "raiox_backup_last_success_timestamp_seconds" in declared


def test_prometheus_config_and_its_rules_are_valid() -> None:
    result = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: _targets(job) for job in config["scrape_configs"]}
    assert jobs == {
        "prometheus": ["localhost:9090"],
        "api": ["dns A api:8000"],  # every replica its own target
        "sync": ["dns A sync:9200"],
        "postgres-exporter": ["postgres-exporter:9187"],
        "redis-exporter": ["redis-exporter:9121"],
        "node-exporter": ["node-exporter:9100"],
    }


def _targets(job: dict[str, Any]) -> list[str]:
    if "static_configs" in job:
        return list(job["static_configs"][0]["targets"])
    return [
        f"dns {sd['type']} {name}:{sd['port']}"
        for sd in job["dns_sd_configs"]
        for name in sd["names"]
    ]


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_unit_tests_pass() -> None:
    result = promtool("test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_test() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts - fires == set(), "alerts no test makes fire"
    assert alerts - quiet == set(), "alerts no test keeps quiet"
    assert {"RaioxApiDown", "RaioxBackupTooOld", "RaioxUntrainedModel"} <= alerts


def test_rules_use_only_exported_metrics() -> None:
    known = known_names()
    for rule in rules():
        unknown = metric_names(rule["expr"]) - known
        assert not unknown, f"{rule.get('alert') or rule.get('record')} uses {unknown}"


def test_panel_expressions_parse() -> None:
    """promtool parses every panel query, as the body of a recording rule."""
    exprs = [expr for path in DASHBOARDS for _, expr in panel_expressions(load_dashboard(path))]
    assert len(exprs) > 30
    rules_file = ROOT / "build" / "dashboard-queries.rules.yml"
    rules_file.parent.mkdir(exist_ok=True)
    rules_file.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "dashboard-queries",
                        "rules": [{"record": f"panel_{i}", "expr": e} for i, e in enumerate(exprs)],
                    }
                ]
            }
        )
    )
    result = promtool("check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_panels_use_only_exported_metrics(path: Path) -> None:
    known = known_names()
    for title, expr in panel_expressions(load_dashboard(path)):
        unknown = metric_names(expr) - known
        assert not unknown, f"panel {title!r} queries {unknown}"


def test_metric_name_extraction() -> None:
    """The extraction the two tests above rely on."""
    expr = (
        'sum by (stage, le) (rate(raiox_stage_duration_seconds_bucket{stage="encode"}[5m])) '
        "/ on (stage) group_left sum without (x) (stage:raiox_x:rate5m offset 1h) "
        'and up{job="api"} > 0.5 or time() - raiox_backup_last_success_timestamp_seconds'
    )
    assert metric_names(expr) == {
        "raiox_stage_duration_seconds_bucket",
        "stage:raiox_x:rate5m",
        "up",
        "raiox_backup_last_success_timestamp_seconds",
    }


def test_dashboards_cover_the_issue() -> None:
    used: set[str] = set()
    for path in DASHBOARDS:
        for _, expr in panel_expressions(load_dashboard(path)):
            used |= metric_names(expr)
    for needed in [
        "source:raiox_identifications:rate5m",
        "stage:raiox_stage_duration_seconds:p95_5m",
        "raiox_encoder_queue_depth",
        "raiox_replication_oldest_pending_age_seconds",
        "raiox_catalog_implants",
        "raiox_model_info",
        "node_filesystem_avail_bytes",
        "pg_up",
        "redis_memory_used_bytes",
    ]:
        assert needed in used
    assert {p.stem for p in DASHBOARDS} == {"overview", "resources"}


def typecheck_dir() -> Path:
    """@grafana/schema and typescript as pinned by the committed lockfile, installed once per
    lockfile under build/."""
    lock = (TYPECHECK / "package-lock.json").read_bytes()
    target = ROOT / "build" / f"grafana-typecheck-{hashlib.sha1(lock).hexdigest()[:12]}"
    if (target / "node_modules" / ".bin" / "tsc").exists():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to type-check the dashboards (apt-get install npm)")
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(TYPECHECK / "package.json", target)
    shutil.copy(TYPECHECK / "package-lock.json", target)
    subprocess.run(
        [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
        cwd=target,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return target


def write_typed_dashboards(target: Path, dashboards: dict[str, dict[str, Any]]) -> Path:
    check = target / "check"
    shutil.rmtree(check, ignore_errors=True)
    check.mkdir()
    template = (TYPECHECK / "dashboard.ts.in").read_text()
    for name, data in dashboards.items():
        source = template.replace("__DASHBOARD__", json.dumps(data, indent=2))
        (check / f"{name}.ts").write_text(source)
    (check / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "strict": True,
                    "noEmit": True,
                    "target": "es2022",
                    "module": "esnext",
                    "moduleResolution": "bundler",
                    "skipLibCheck": True,
                    "types": [],
                },
                "include": ["*.ts"],
            }
        )
    )
    return check


def tsc(target: Path, check: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(target / "node_modules" / ".bin" / "tsc"), "-p", str(check / "tsconfig.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dashboards_match_grafana_schema() -> None:
    target = typecheck_dir()
    dashboards = {path.stem: load_dashboard(path) for path in DASHBOARDS}
    # A misspelt key and a bad enum value must each fail, or the check is blind.
    misspelt = json.loads(json.dumps(dashboards["overview"]))
    misspelt["panels"][1]["gridpos"] = misspelt["panels"][1].pop("gridPos")
    bad_enum = json.loads(json.dumps(dashboards["overview"]))
    bad_enum["panels"][1]["options"]["colorMode"] = "valu"
    check = write_typed_dashboards(target, {"misspelt": misspelt, "bad_enum": bad_enum})
    result = tsc(target, check)
    errors = result.stdout + result.stderr
    assert result.returncode != 0
    assert "misspelt.ts(" in errors and "'\"gridpos\"' does not exist" in errors
    assert "bad_enum.ts(" in errors and '"valu"' in errors

    check = write_typed_dashboards(target, dashboards)
    result = tsc(target, check)
    assert result.returncode == 0, result.stdout + result.stderr
