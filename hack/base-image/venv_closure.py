"""The installed distributions an image needs, taken from an existing virtualenv.

hack/build-images.sh makes the local base images offline: instead of letting pip download torch & co. inside
the image build, it copies the distributions already installed in the project's virtualenv. This module
works out which ones: the dependency closure of the project's requirements (pyproject.toml) for the given
extras, evaluated against the installed metadata, plus pip and setuptools so that the Dockerfile's own
`pip install .` can run. It never copies the venv whole: dev tools, test-only packages and the editable
install of the project itself stay out.

Subcommands (paths are relative to the site-packages folder, NUL-separated for tar -T / xargs -0):
  fingerprint  one line per distribution: name, version, sha256 of its RECORD (it lists every file's hash),
               so the base image is rebuilt when, and only when, a needed distribution changes
  files        the files to copy (no __pycache__, no files outside site-packages)
  scripts      console scripts of those distributions in the venv's bin/ (torchrun, accelerate...)
  unmet-build-requires
               pyproject's [build-system] requires that the venv does not satisfy (e.g. its setuptools is
               older than the project's build needs): base.sh installs those from wheels instead, and the
               venv's own copies of them are left out of `files`
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tomllib
from collections.abc import Iterable, Iterator
from importlib.metadata import Distribution, distributions
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # a venv without `packaging` still has pip's vendored copy
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[assignment]

# Always wanted: the Dockerfile runs `pip install .`, which needs pip and the build backend in the image.
TOOLING = ("pip", "setuptools", "wheel")


def canonical(name: str) -> str:
    """PEP 503 name normalisation, so `PyYAML`, `pyyaml` and `py_yaml` meet."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_requirements(pyproject: Path, extras: Iterable[str]) -> tuple[str, list[Requirement]]:
    """The project's name and its requirements for the extras, straight from pyproject.toml."""
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = [Requirement(r) for r in project.get("dependencies", [])]
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"venv_closure: pyproject.toml has no extra {extra!r}")
        reqs.extend(Requirement(r) for r in optional[extra])
    return canonical(project["name"]), reqs


def applies(req: Requirement, extras: frozenset[str]) -> bool:
    """Whether a requirement is active on this platform for a distribution installed with `extras`."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({"extra": e}) for e in (extras or frozenset({""})))


def closure(site: Path, pyproject: Path, extras: list[str]) -> list[Distribution]:
    """The installed distributions the project needs (with `extras`), plus the pip tooling present."""
    installed = {canonical(d.metadata["Name"]): d for d in distributions(path=[str(site)])}
    me, top = project_requirements(pyproject, extras)
    wanted: dict[str, set[str]] = {}
    queue: list[tuple[str, frozenset[str]]] = []
    missing: list[str] = []

    def want(req: Requirement, parent_extras: frozenset[str]) -> None:
        if not applies(req, parent_extras):
            return
        name = canonical(req.name)
        if name == me:  # a self-reference such as `finetune-operator[trainer]`: expand from pyproject
            for r in project_requirements(pyproject, sorted(req.extras))[1]:
                want(r, frozenset())
            return
        if name not in installed:
            missing.append(str(req))
            return
        new = set(req.extras) - wanted.get(name, set())
        if name not in wanted or new:
            wanted.setdefault(name, set()).update(req.extras)
            queue.append((name, frozenset(wanted[name])))

    for req in top:
        want(req, frozenset())
    for tool in TOOLING:
        if tool in installed:
            want(Requirement(tool), frozenset())
    while queue:
        name, dist_extras = queue.pop()
        for spec in installed[name].requires or []:
            want(Requirement(spec), dist_extras)
    if missing:
        raise SystemExit(
            "venv_closure: not installed in the venv, so the image could not have it: " + ", ".join(missing)
        )
    return [installed[n] for n in sorted(wanted)]


def unmet_build_requires(site: Path, pyproject: Path) -> list[Requirement]:
    """Build requirements of the project that the venv's installed versions do not satisfy."""
    installed = {canonical(d.metadata["Name"]): d.version for d in distributions(path=[str(site)])}
    build_system = tomllib.loads(pyproject.read_text()).get("build-system", {})
    reqs = [Requirement(r) for r in build_system.get("requires", [])]
    return [
        r
        for r in reqs
        if applies(r, frozenset())
        and not (canonical(r.name) in installed and r.specifier.contains(installed[canonical(r.name)], True))
    ]


def site_files(dist: Distribution) -> Iterator[str]:
    """The files of a distribution inside site-packages, without bytecode caches."""
    for f in dist.files or []:
        if f.parts[0] == ".." or "__pycache__" in f.parts or f.suffix == ".pyc":
            continue
        if Path(str(dist.locate_file(f))).is_file():
            yield f.as_posix()


def scripts(dist: Distribution) -> Iterator[str]:
    """Names of the distribution's executables in the venv's bin/ (RECORD lists them as ../../../bin/X)."""
    for f in dist.files or []:
        if f.parts[:3] == ("..", "..", "..") and len(f.parts) == 5 and f.parts[3] == "bin":
            yield f.parts[4]


def fingerprint(dist: Distribution) -> str:
    record = dist.read_text("RECORD") or ""
    digest = hashlib.sha256(record.encode()).hexdigest()[:16]
    return f"{canonical(dist.metadata['Name'])} {dist.version} {digest}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["fingerprint", "files", "scripts", "unmet-build-requires"])
    parser.add_argument("--site", type=Path, required=True, help="the venv's site-packages folder")
    parser.add_argument("--pyproject", type=Path, required=True)
    parser.add_argument("--extras", default="", help="comma-separated extras of the project")
    args = parser.parse_args(argv)
    extras = [e for e in args.extras.split(",") if e]
    unmet = unmet_build_requires(args.site, args.pyproject)
    replaced = {canonical(r.name) for r in unmet}
    dists = [d for d in closure(args.site, args.pyproject, extras) if canonical(d.metadata["Name"]) not in replaced]
    out = sys.stdout
    if args.command == "unmet-build-requires":
        out.writelines(f"{r}\n" for r in unmet)
    elif args.command == "fingerprint":
        out.writelines(fingerprint(d) + "\n" for d in dists)
        out.writelines(f"build-requires {r}\n" for r in unmet)
    elif args.command == "files":
        out.writelines(f + "\0" for d in dists for f in site_files(d))
    else:
        out.writelines(s + "\0" for d in dists for s in scripts(d))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
