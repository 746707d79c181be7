"""What the compose-spec schema cannot check in deploy/compose.yaml: that its references hold and nothing secret is
written into it. Run by deploy/lint.sh with the linters' Python (.venv/lint, which has ruamel.yaml); exit 1 with one
line per problem.

    check_compose.py [COMPOSE] [--env-example FILE]   # the checks
    check_compose.py --json FILE                        # FILE (any YAML, merge keys resolved) as JSON, for tests

Checked: every depends_on target exists, `service_healthy` ones have a healthcheck, `service_completed_successfully`
ones are one-shot (restart "no"); every network, volume and secret a service names is declared; env files, bind-mount
sources and build contexts, Dockerfiles and targets exist; every ${VARIABLE} is listed in .env.example; an
environment entry whose name says secret (SECRET, PASSWORD, TOKEN, AUTH) takes its value from ${...}, never a literal.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

HERE = Path(__file__).resolve().parent
# ${NAME}, ${NAME:-default}, ${NAME:?error} and $NAME; `$$` is a literal dollar.
VARIABLE = re.compile(r"(?<!\$)(?:\$\$)*\$(?:\{([A-Za-z_][A-Za-z0-9_]*)|([A-Za-z_][A-Za-z0-9_]*))")
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|AUTH", re.IGNORECASE)
STAGE = re.compile(r"^\s*FROM\s+\S+\s+AS\s+(\S+)", re.IGNORECASE | re.MULTILINE)


def load(path: Path) -> Any:
    """The YAML document in `path`, with merge keys (`<<`) resolved as Compose resolves them."""
    return YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))


def strings(node: Any) -> Iterator[str]:
    """Every string value in `node`, nested ones included (mapping keys are names, not values)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def env_example_names(path: Path) -> set[str]:
    """The variable names an env file assigns (NAME=... lines)."""
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, _ = line.strip().partition("=")
        if sep and not name.startswith("#"):
            names.add(name.strip())
    return names


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(str(item).partition("=")[::2] for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def _names(value: Any) -> list[str]:
    """The names a service lists under networks/secrets (a list, or a mapping keyed by name)."""
    if isinstance(value, dict):
        return list(value)
    return [item if isinstance(item, str) else item.get("source", "") for item in value or []]


def problems(compose_path: Path, env_example: Path) -> list[str]:
    """Every problem found in the compose file at `compose_path` (empty: none)."""
    base = compose_path.parent
    doc = load(compose_path)
    services: dict[str, dict[str, Any]] = doc.get("services") or {}
    found: list[str] = []

    declared = {kind: set((doc.get(kind) or {}).keys()) for kind in ("networks", "volumes", "secrets")}
    known_variables = env_example_names(env_example)
    for text in strings(doc):
        for braced, bare in VARIABLE.findall(text):
            name = braced or bare
            if name not in known_variables:
                found.append(f"${{{name}}} is used but {env_example.name} does not list it")

    for name, service in services.items():
        where = f"services.{name}"
        for dep, condition in _depends_on(service).items():
            target = services.get(dep)
            if target is None:
                found.append(f"{where}: depends_on names {dep!r}, which is not a service")
            elif condition == "service_healthy" and not (target.get("healthcheck") or {}).get("test"):
                found.append(f"{where}: waits for {dep!r} to be healthy, but {dep!r} has no healthcheck")
            elif condition == "service_completed_successfully" and str(target.get("restart", "no")) != "no":
                found.append(f"{where}: waits for {dep!r} to complete, but {dep!r} restarts")
        for network in _names(service.get("networks")):
            if network not in declared["networks"]:
                found.append(f"{where}: network {network!r} is not declared")
        for secret in _names(service.get("secrets")):
            if secret not in declared["secrets"]:
                found.append(f"{where}: secret {secret!r} is not declared")
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith((".", "/")):
                if not (base / source).exists():
                    found.append(f"{where}: bind mount source {source!r} does not exist")
            elif source and source not in declared["volumes"]:
                found.append(f"{where}: volume {source!r} is not declared")
        env_files = service.get("env_file") or []
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            path = env_file if isinstance(env_file, str) else env_file.get("path", "")
            if not (base / path).is_file():
                found.append(f"{where}: env_file {path!r} does not exist")
        build = service.get("build")
        if build:
            context = base / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = context / ("Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile"))
            if not dockerfile.is_file():
                found.append(f"{where}: Dockerfile {dockerfile} does not exist")
            elif isinstance(build, dict) and build.get("target"):
                stages = set(STAGE.findall(dockerfile.read_text(encoding="utf-8")))
                if build["target"] not in stages:
                    found.append(f"{where}: build target {build['target']!r} is not a stage of {dockerfile.name}")
        for key, value in _environment(service).items():
            if SECRET_NAME.search(key) and value and "${" not in value:
                found.append(f"{where}: environment {key} is written in the file; take it from .env (${{{key}}})")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("compose", nargs="?", type=Path, default=HERE / "compose.yaml")
    parser.add_argument("--env-example", type=Path, default=None, help="default: .env.example beside the file")
    parser.add_argument("--json", type=Path, default=None, help="print this YAML file as JSON and exit")
    args = parser.parse_args(argv)
    if args.json is not None:
        json.dump(load(args.json), sys.stdout)
        return 0
    env_example = args.env_example or args.compose.parent / ".env.example"
    found = problems(args.compose, env_example)
    for problem in found:
        print(f"{args.compose}: {problem}")
    if not found:
        print(f"{args.compose}: references, variables and secrets OK")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
