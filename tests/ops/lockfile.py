"""Pin the runtime dependencies for the Docker image: `python -m tests.ops.lockfile` rewrites requirements.lock.

The pins are the versions installed in this virtualenv (where the suite passes), limited to the
project's runtime dependencies and everything they pull in (dev tools stay out of the image).
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
HEADER = (
    "# Runtime pins for the Docker image (pip install -c requirements.lock).\n"
    "# Generated from a working virtualenv by `python -m tests.ops.lockfile`; tests/ops/test_compose.py checks it.\n"
)


def runtime_closure(project: str = "clinicbot") -> dict[str, str]:
    """Return {canonical name: installed version} for the project's runtime requirements, transitively."""
    pins: dict[str, str] = {}
    pending: list[tuple[str, frozenset[str]]] = [(project, frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue  # an optional dependency this platform does not install
        key = canonicalize_name(dist.metadata["Name"])
        if key != canonicalize_name(project):
            pins[key] = dist.version
        for raw in dist.requires or []:
            requirement = Requirement(raw)
            environments = [{"extra": extra} for extra in extras] or [{"extra": ""}]
            if requirement.marker is not None and not any(
                requirement.marker.evaluate(env) for env in environments
            ):
                continue
            pending.append((requirement.name, frozenset(requirement.extras)))
    return pins


def render(pins: dict[str, str]) -> str:
    """Return the lock file's text: a header and one `name==version` per line, sorted."""
    return HEADER + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def read(path: Path = LOCK) -> dict[str, str]:
    """Return the pins written in a lock file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    return pins


if __name__ == "__main__":
    LOCK.write_text(render(runtime_closure()), encoding="utf-8")
    print(f"wrote {LOCK} ({len(read())} pins)", file=sys.stderr)
