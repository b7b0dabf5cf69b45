"""The deployment files, checked without a Docker engine: compose, Dockerfile, .env.example, the lock."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from bot.cli import build_parser
from bot.config import Settings
from tests.ops import lockfile

ROOT = Path(__file__).resolve().parents[2]
CLINICBOT = Path(sys.executable).with_name("clinicbot")
INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?:(?P<op>:?[-?])(?P<default>[^}]*))?\}")
DEV_ONLY = {"pytest", "hypothesis", "ruff", "playwright", "schemathesis", "time-machine"}


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))


def interpolate(value: str) -> str:
    """Substitute ${VAR-default} / ${VAR:-default} with the default, as compose does with VAR unset."""
    return INTERPOLATION.sub(lambda m: m["default"] if m["op"] in {"-", ":-"} else "x", value)


def command_of(service: dict[str, Any]) -> list[str]:
    command = service["command"]
    if isinstance(command, str):
        return shlex.split(interpolate(command))
    return [interpolate(part) for part in command]


def env_names() -> list[str]:
    """Return the environment variable of every setting the app reads (prefix or alias)."""
    names = []
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.extend(str(choice) for choice in alias.choices)
        else:
            names.append(f"CLINICBOT_{name}".upper())
    return names


def test_compose_file_declares_the_services_with_their_roles() -> None:
    services = compose()["services"]
    assert sorted(services) == ["actions", "app", "migrate", "postgres", "rasa", "redis", "scheduler"]
    # Replicas need generated names and one published port range on the app only.
    assert [name for name, service in services.items() if "container_name" in service] == []
    assert [name for name, service in services.items() if "ports" in service] == ["app"]
    assert services["app"]["ports"] == ["${CLINICBOT_HTTP_BIND:-127.0.0.1}:8000-8009:8000"]
    assert services["app"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["scheduler"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    assert services["migrate"]["restart"] == "no"
    assert command_of(services["migrate"]) == ["init", "--demo"]
    assert command_of(services["app"]) == ["serve", "--host", "0.0.0.0", "--port", "8000", "--no-scheduler"]
    assert command_of(services["scheduler"]) == ["scheduler", "run"]
    assert services["rasa"]["profiles"] == ["rasa"]
    assert services["rasa"]["image"].startswith("rasa/rasa:3.")


def test_postgres_has_a_volume_and_a_readiness_healthcheck_and_is_never_published() -> None:
    document = compose()
    postgres = document["services"]["postgres"]
    assert postgres["volumes"] == ["pgdata:/var/lib/postgresql/data"]
    assert "pgdata" in document["volumes"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert postgres["networks"] == ["backend"]
    assert document["services"]["migrate"]["depends_on"]["postgres"] == {"condition": "service_healthy"}


def test_app_replicas_count_rate_limits_in_one_unpublished_redis() -> None:
    document = compose()
    redis, app = document["services"]["redis"], document["services"]["app"]
    assert "ports" not in redis and redis["networks"] == ["backend"]
    assert "ping" in redis["healthcheck"]["test"]
    assert app["environment"]["CLINICBOT_RATE_LIMIT_STORAGE_URL"] == "redis://redis:6379/0"
    assert app["depends_on"]["redis"] == {"condition": "service_healthy"}
    # The app's own environment replaces the shared block's: the database URL must still be there.
    assert app["environment"]["CLINICBOT_DATABASE_URL"] == document["x-clinicbot"]["environment"]["CLINICBOT_DATABASE_URL"]
    settings = Settings(_env_file=None, rate_limit_storage_url=app["environment"]["CLINICBOT_RATE_LIMIT_STORAGE_URL"])
    assert settings.rate_limit_storage_url.get_secret_value().startswith("redis://")


def test_action_server_is_on_an_internal_network_only_and_never_published() -> None:
    document = compose()
    actions = document["services"]["actions"]
    assert "ports" not in actions and "expose" not in actions
    assert actions["networks"] == ["backend"]
    assert document["networks"]["backend"] == {"internal": True}
    assert actions["entrypoint"] == ["python", "-m", "rasa_sdk"]
    assert actions["command"] == ["--actions", "actions", "--port", "5055"]
    rasa = document["services"]["rasa"]
    assert "ports" not in rasa and rasa["networks"] == ["backend"]
    assert "http://actions:5055/webhook" in rasa["command"][0]


@pytest.mark.parametrize("service", ["migrate", "app", "scheduler"])
def test_every_clinicbot_command_in_compose_exists(service: str) -> None:
    command = command_of(compose()["services"][service])
    # Every option is known to the parser (parse only; nothing runs) ...
    args = build_parser().parse_args(command)
    assert callable(args.func)
    # ... and the installed console script answers --help for the same sub-command.
    words = [word for word in command if not word.startswith("-")][: 2 if service == "scheduler" else 1]
    result = subprocess.run([str(CLINICBOT), *words, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for option in (word for word in command if word.startswith("--")):
        assert option in result.stdout, (service, option)


def test_action_server_command_exists_and_serves_the_actions_package() -> None:
    actions = compose()["services"]["actions"]
    result = subprocess.run(
        [sys.executable, *actions["entrypoint"][1:], "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "--actions" in result.stdout and "--port" in result.stdout
    from rasa_sdk.executor import ActionExecutor

    import actions as package

    executor = ActionExecutor()
    executor.register_package(package.__name__)
    assert len(executor.actions) >= 5


def test_env_example_lists_every_setting_with_a_comment() -> None:
    lines = (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    for name in env_names():
        found = [i for i, line in enumerate(lines) if re.fullmatch(rf"(# )?{name}=.*", line)]
        assert len(found) == 1, f"{name} is not in .env.example exactly once"
        above = lines[found[0] - 1]
        assert above.startswith("# ") and "=" not in above.split()[1], f"{name} has no comment above it"


def test_env_example_lists_every_variable_compose_reads() -> None:
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    used = {match["name"] for match in INTERPOLATION.finditer(text)}
    assert used == {
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "POSTGRES_DB",
        "CLINICBOT_INIT_FLAGS",
        "CLINICBOT_HTTP_BIND",
    }
    for name in used:
        assert re.search(rf"^(# )?{name}=", example, re.MULTILINE), name


def test_env_example_values_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in env_names():
        monkeypatch.delenv(name, raising=False)
    active = {}
    for line in (ROOT / ".env.example").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            active[name] = value
    for name, value in active.items():
        monkeypatch.setenv(name, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.public_url, settings.twilio_enabled, settings.telegram_enabled) == (
        "http://127.0.0.1:8000",
        False,
        False,
    )


def test_dockerfile_is_slim_non_root_pinned_and_health_checked() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert bases and all(re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base) for base in bases), bases
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert "pip install -r requirements.lock" in text
    assert "pip install --no-deps -c requirements.lock -e ." in text
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["clinicbot"\]$', text, re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert {".env", ".venv", "var", ".git"} <= set(ignored)


def test_lock_pins_exactly_the_runtime_dependencies_as_installed() -> None:
    pinned = lockfile.read()
    installed = lockfile.runtime_closure()
    assert pinned == installed, "requirements.lock is stale: run `python -m tests.ops.lockfile`"
    assert not DEV_ONLY & set(pinned)
    assert {"fastapi", "uvicorn", "psycopg", "psycopg-binary", "prometheus-client", "rasa-sdk"} <= set(pinned)
