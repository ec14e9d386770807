"""The deploy files checked without running them: the Compose file against the Compose
Specification and `docker compose config`, the properties the stack promises (closed by default,
no secret defaults, healthchecks, limits, non-root images, pinned versions), and the playbooks
through ansible-playbook --syntax-check and ansible-lint's production profile.
The live deploy is tests/e2e/deploy.sh (`make e2e`)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.compose import compose_config, needs_compose

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
BIN = Path(sys.executable).parent
SECRET = re.compile(r"PASSWORD|TOKEN|SECRET|_KEY")
REQUIRED_ENV = {
    "RAIOX_VERSION": "1.0.0",
    "RAIOX_INFRA_TAG": "abc",
    "RAIOX_MODEL_PATH": "/opt/raiox/models/x",
    "RAIOX_POSTGRES_PASSWORD": "pw",
    "RAIOX_WEBHOOK_TOKEN": "tok",
    "RAIOX_GRAFANA_ADMIN_PASSWORD": "gpw",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose["services"]
    return result


def test_compose_file_follows_the_compose_specification() -> None:
    result = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", COMPOSE_FILE],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_compose
def test_docker_compose_accepts_the_stack(tmp_path: Path) -> None:
    result = compose_config(tmp_path, REQUIRED_ENV)
    assert result.returncode == 0, result.stderr


@needs_compose
@pytest.mark.parametrize(
    "missing", ["RAIOX_POSTGRES_PASSWORD", "RAIOX_WEBHOOK_TOKEN", "RAIOX_GRAFANA_ADMIN_PASSWORD"]
)
def test_the_stack_refuses_to_start_without_a_secret(tmp_path: Path, missing: str) -> None:
    env = {k: v for k, v in REQUIRED_ENV.items() if k != missing}
    result = compose_config(tmp_path, env)
    assert result.returncode != 0
    assert missing in result.stderr


def test_no_secret_has_a_default() -> None:
    text = COMPOSE_FILE.read_text()
    references = re.findall(r"\$\{([A-Z0-9_]+)([^}]*)\}", text)
    secrets = [(name, rest) for name, rest in references if SECRET.search(name)]
    assert secrets, "the stack takes its secrets from the environment"
    for name, rest in secrets:
        assert rest.startswith(":?"), f"${{{name}{rest}}} must be required, not defaulted"


def test_only_the_proxy_publishes_ports(services: dict[str, dict[str, Any]]) -> None:
    publishing = sorted(name for name, svc in services.items() if svc.get("ports"))
    assert publishing == ["proxy"]
    for port in services["proxy"]["ports"]:
        assert port.startswith("${RAIOX_BIND_ADDRESS:-127.0.0.1}:"), port  # closed by default


def test_every_service_is_healthchecked_restarted_and_limited(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, svc in services.items():
        assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert svc.get("restart") == "unless-stopped", name
        limits = svc.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("memory") and limits.get("cpus"), f"{name} has no limits"
        for dependency in (svc.get("depends_on") or {}).values():
            assert dependency["condition"] == "service_healthy", name


def _mib(memory: str) -> int:
    return int(memory[:-1]) * {"M": 1, "G": 1024}[memory[-1]]


def _default_replicas(svc: dict[str, Any]) -> int:
    replicas = str(svc["deploy"].get("replicas", 1))
    match = re.fullmatch(r"\$\{[A-Z_]+:-(\d+)\}", replicas)
    return int(match.group(1)) if match else int(replicas)


def test_limits_fit_a_4_gb_droplet(services: dict[str, dict[str, Any]]) -> None:
    """At the default replica counts (one api, two sync workers)."""
    total = 0
    for svc in services.values():
        if "profiles" in svc:
            continue
        total += _mib(svc["deploy"]["resources"]["limits"]["memory"]) * _default_replicas(svc)
    assert total <= 3584, f"{total} MiB of limits: leave 512 MiB of 4 GiB to the OS and Docker"
    assert _default_replicas(services["api"]) == 1 and _default_replicas(services["sync"]) == 2
    per_replica = _mib(services["api"]["deploy"]["resources"]["limits"]["memory"])
    assert f"{per_replica // 1024} GiB" in (COMPOSE_DIR / ".env.example").read_text()


def test_replicas_are_operator_settings(services: dict[str, dict[str, Any]]) -> None:
    assert services["api"]["deploy"]["replicas"] == "${RAIOX_API_REPLICAS:-1}"
    assert services["sync"]["deploy"]["replicas"] == "${RAIOX_SYNC_REPLICAS:-2}"
    for name in ("api", "sync"):
        assert "container_name" not in services[name], "replicas need Compose's own names"
        assert not services[name].get("ports"), "replicas cannot share a host port"
    # uvicorn drains for up to 30 s after SIGTERM (appliance.server): Docker must wait longer
    assert int(services["api"]["stop_grace_period"].rstrip("s")) > 30


def test_the_proxy_balances_every_replica_with_health_checks(
    services: dict[str, dict[str, Any]],
) -> None:
    upstreams = services["proxy"]["environment"]["RAIOX_API_UPSTREAMS"]
    assert upstreams == "${RAIOX_API_UPSTREAMS:-api:8000}"
    caddyfile = (COMPOSE_DIR / "Caddyfile").read_text()
    main = re.search(r"\treverse_proxy \{\$RAIOX_API_UPSTREAMS\} \{(.*?)\n\t\}", caddyfile, re.S)
    assert main, "the api's reverse_proxy takes the replica list"
    options = dict(
        line.strip().split(" ", 1)
        for line in main.group(1).strip().splitlines()
        if line.strip() and not line.strip().startswith(("transport", "keepalive", "}"))
    )
    assert options["health_uri"] == "/healthcheck"  # active checks (static upstreams: Caddy 2.6)
    assert options["fail_duration"].endswith("s")  # passive: a failed replica is left out
    # no retries: Caddy 2.6 closes the body on a dial error, so the retried upload would fail
    assert "lb_try_duration" not in caddyfile and "lb_retries" not in caddyfile
    assert "keepalive off" in main.group(1)
    # the fallback forwards only "no healthy replica" (503), never e.g. a refused body (413)
    errors = caddyfile[caddyfile.index("handle_errors") :]
    assert "@no_upstream expression {err.status_code} == 503" in errors
    assert "reverse_proxy @no_upstream {$RAIOX_API_UPSTREAMS}" in errors


@pytest.mark.parametrize("replicas", [1, 2, 3])
def test_ansible_names_each_api_replica_for_the_proxy(replicas: int) -> None:
    import jinja2

    template = ROOT / "ansible" / "roles" / "appliance" / "templates" / ".env.j2"
    env = jinja2.Environment(trim_blocks=True, undefined=jinja2.StrictUndefined)  # as Ansible
    env.filters["bool"] = lambda value: str(value).lower() in ("1", "true", "yes", "on")
    text = env.from_string(template.read_text()).render(
        appliance_managed_services=False,
        ansible_managed="x",
        appliance_version="1",
        appliance_infra_tag="t",
        appliance_model_dir="/m",
        appliance_secrets={
            "postgres_password": "p",
            "webhook_token": "w",
            "grafana_admin_password": "g",
        },
        appliance_domain="",
        appliance_http_port=80,
        appliance_https_port=443,
        appliance_api_replicas=replicas,
        appliance_sync_replicas=2,
    )
    lines = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    assert lines["RAIOX_API_REPLICAS"] == str(replicas)
    expected = " ".join(f"raiox-api-{n}:8000" for n in range(1, replicas + 1))
    assert lines["RAIOX_API_UPSTREAMS"] == f'"{expected}"'
    assert lines["RAIOX_SYNC_REPLICAS"] == "2"


def test_migrations_run_once_before_the_api_starts() -> None:
    tasks = yaml.safe_load(
        (ROOT / "ansible" / "roles" / "appliance" / "tasks" / "main.yml").read_text()
    )
    names = [task["name"] for task in tasks]
    migrate = names.index("Apply database migrations before the api starts")
    assert migrate < names.index("Start the stack and wait until every service is healthy")
    run = tasks[migrate]["community.docker.docker_compose_v2_run"]
    assert run["argv"] == ["raiox", "migrate"] and run["cleanup"] is True
    inventory = yaml.safe_load((ROOT / "ansible" / "inventories" / "local.yml").read_text())
    local = inventory["all"]["children"]["raiox"]["hosts"]["localhost"]
    assert local["appliance_api_replicas"] == 2  # the deploy test runs the scale-out


def test_everything_sits_on_the_internal_network(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert compose["networks"]["internal"]["internal"] is True
    for name, svc in services.items():
        assert "internal" in svc["networks"], name
    reaching_out = sorted(n for n, s in services.items() if "outbound" in s["networks"])
    assert reaching_out == ["api", "backup", "proxy", "sync"]  # clients, Jotform, Spaces, ACME


def test_images_are_built_here_or_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        image = svc["image"]
        if image.startswith("raiox/"):
            assert svc["pull_policy"] == "never", name  # never a registry
        else:
            assert "profiles" in svc, f"{name}: an upstream image must be optional"
            tag = image.rsplit(":", 1)[1]
            assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"{name}: {image} is not pinned"


def test_redis_is_a_bounded_cache_without_persistence(
    services: dict[str, dict[str, Any]],
) -> None:
    command = services["redis"]["command"]
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--maxmemory-policy"] == "allkeys-lru"
    assert options["--maxmemory"].endswith("mb")
    assert options["--save"] == "" and options["--appendonly"] == "no"
    assert not services["redis"].get("volumes")


def test_the_model_is_mounted_read_only(services: dict[str, dict[str, Any]]) -> None:
    mounts = [m for m in services["api"]["volumes"] if m.endswith(":/models/current:ro")]
    assert mounts


def test_env_example_documents_every_variable() -> None:
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    example = (COMPOSE_DIR / ".env.example").read_text()
    documented = set(re.findall(r"^#? ?([A-Z0-9_]+)=", example, re.MULTILINE))
    assert used - documented == set()


DOCKERFILES = sorted(COMPOSE_DIR.glob("*.Dockerfile"))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_a_user_from_a_pinned_base(dockerfile: Path) -> None:
    lines = [line.strip() for line in dockerfile.read_text().splitlines()]
    assert "ARG BASE=debian:trixie-slim" in lines
    assert all(
        line in ("FROM ${BASE}", "FROM runtime") or " AS " in line
        for line in lines
        if line.startswith("FROM ")
    )
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), f"{dockerfile.name} runs as root"
    assert any(line.startswith("HEALTHCHECK") for line in lines)


def test_appliance_image_has_no_build_tools() -> None:
    lines = (COMPOSE_DIR / "appliance.Dockerfile").read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    for forbidden in ("torch", "gcc", "build-essential", "python3-dev"):
        assert forbidden not in text
    assert "--no-index" in text  # pip never reaches a network inside the build


@pytest.mark.parametrize("playbook", ["site.yml", "upgrade.yml"])
def test_playbooks_pass_the_syntax_check(playbook: str) -> None:
    result = subprocess.run(
        [BIN / "ansible-playbook", "-i", "inventories/local.yml", "--syntax-check", playbook],
        cwd=ROOT / "ansible",
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ansible_lint_production_profile() -> None:
    result = subprocess.run(
        [BIN / "ansible-lint", "--offline", "--profile", "production", "--nocolor"],
        cwd=ROOT / "ansible",
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
