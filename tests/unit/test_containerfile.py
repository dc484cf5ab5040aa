"""The Containerfile, checked without a container engine (none runs on these machines).

What the image runs is tested elsewhere as plain commands (``tests/system/test_container_run.py``
runs ``spreadwatch run`` with the image's environment and its ``HEALTHCHECK`` command); here the
file itself: the base image is an argument, the final stage installs wheels only and runs as a
non-root user, every ``ENV`` it sets is a valid configuration key with the value it means, the
data directory is a volume, and the commands it names exist.
"""

from __future__ import annotations

import json
import pathlib
import re
import shlex
import tomllib

import pytest

from engine.cli import build_parser
from engine.config import load_config

REPO = pathlib.Path(__file__).resolve().parents[2]
TEXT = (REPO / "Containerfile").read_text()


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(
        r"\\\n\s*",
        " ",
        "\n".join(line for line in TEXT.splitlines() if not line.lstrip().startswith("#")),
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in stage:
        if word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_the_base_image_is_an_argument_used_by_both_stages() -> None:
    (arg,) = [rest for word, rest in _instructions() if word == "ARG"]
    assert arg.startswith("PYTHON_IMAGE=") and "slim" in arg
    froms = [rest for word, rest in _instructions() if word == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]


def test_the_final_stage_installs_wheels_only_and_runs_as_a_user() -> None:
    final = _stages()[-1]
    runs = " ".join(rest for word, rest in final if word == "RUN")
    assert "pip install --no-index" in runs
    assert not re.search(r"apt-get|apk |gcc|build-essential", runs)
    assert not [rest for word, rest in final if word == "COPY"], "no source tree in the image"
    (user,) = [rest for word, rest in final if word == "USER"]
    assert user not in {"root", "0"}
    assert f"useradd --create-home --uid 10001 --user-group {user}" in runs


def test_every_env_is_a_configuration_key_with_the_meaning_intended() -> None:
    env = _env(_stages()[-1])
    ours = {k: v for k, v in env.items() if k.startswith("SPREADWATCH_")}
    config = load_config(environ=ours)  # an unknown key or a bad value raises
    assert config.database.data_dir == pathlib.Path("/data/pgdata")
    assert config.database.url is None  # the embedded database, unless DATABASE_URL is given
    assert (config.http.host, config.http.port) == ("127.0.0.1", 8787)
    assert config.engine.shutdown_timeout_seconds == 20
    volumes = [json.loads(rest) for word, rest in _instructions() if word == "VOLUME"]
    assert volumes == [["/data"]]
    assert [rest for word, rest in _instructions() if word == "EXPOSE"] == [str(config.http.port)]


def test_the_commands_it_runs_exist() -> None:
    (cmd,) = [json.loads(rest) for word, rest in _instructions() if word == "CMD"]
    (health,) = [rest for word, rest in _instructions() if word == "HEALTHCHECK"]
    health_cmd = json.loads(health.split(" CMD ", 1)[1])
    assert cmd == ["spreadwatch", "run"]
    assert health_cmd == ["spreadwatch", "health"]
    for argv in (cmd, health_cmd):
        args = build_parser(argv[1]).parse_args(argv[1:])
        assert callable(args.handler)
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["spreadwatch"] == "engine.cli:main"


def test_every_package_directory_is_copied_into_the_build() -> None:
    build = _stages()[0]
    copied = {rest.split()[0] for word, rest in build if word == "COPY"}
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = project["tool"]["setuptools"]["packages"]["find"]["include"]
    needed = {pattern.rstrip("*") for pattern in packages}
    assert needed <= copied
    assert {"pyproject.toml", "README.md"} <= set(
        " ".join(rest for word, rest in build if word == "COPY").split()
    )


@pytest.mark.parametrize("stage", [0, 1])
def test_pip_keeps_no_cache(stage: int) -> None:
    assert _env(_stages()[stage])["PIP_NO_CACHE_DIR"] == "1"
