"""The pinned environment: requirements.lock against pyproject.toml, environment.yml and the venv.

(a) the lock was compiled from the current pyproject.toml (each declared dependency, the `dev`
    extra included, is locked at a version its range admits; nothing else is locked as a direct
    dependency; every locked package is reachable from them), proven able to fail on doctored
    copies; (b) environment.yml installs from the lock and names nothing the lock lacks; (c) the
    running interpreter has exactly the locked versions (Quickstart line 2's fresh venv on CI);
    (d) the drift comparison on a hand-made lock and made-up installed versions.
"""

from __future__ import annotations

import platform
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement

from jacreg import lockfile
from jacreg.lockfile import (
    LockedPackage,
    canonical_name,
    compare,
    describe,
    lock_status,
    lock_target,
    locked_versions,
    parse_lock,
)

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
CONSTRAINTS = ROOT / "lock-constraints.txt"
ENVIRONMENT_YML = ROOT / "environment.yml"
PROJECT_VIA = "jacreg (pyproject.toml)"
LOCKED_EXTRAS = ("dev",)  # scripts/update-lock.sh: --extra dev


def _tomllib():
    return pytest.importorskip("tomllib")  # Python 3.11+


def declared_requirements(pyproject: dict[str, Any]) -> list[Requirement]:
    """``[project] dependencies`` plus the locked extras, as parsed requirements."""
    project = pyproject["project"]
    lines = list(project.get("dependencies", []))
    for extra in LOCKED_EXTRAS:
        lines += project.get("optional-dependencies", {}).get(extra, [])
    return [Requirement(line) for line in lines]


def lock_problems(pyproject: dict[str, Any], lock_text: str,
                  constraints_text: str = "") -> list[str]:
    """Every way in which ``lock_text`` disagrees with ``pyproject`` (empty: they agree)."""
    packages = parse_lock(lock_text)
    locked = {p.name: p for p in packages}
    problems = []
    declared = declared_requirements(pyproject)
    names = {canonical_name(r.name) for r in declared}
    for req in declared:
        entry = locked.get(canonical_name(req.name))
        if entry is None:
            problems.append(f"{req.name}: in pyproject.toml, not in the lock")
        elif not req.specifier.contains(entry.version, prereleases=True):
            problems.append(f"{req.name}: locked {entry.version} is outside {req}")
    for package in packages:
        if PROJECT_VIA in package.via and package.name not in names:
            problems.append(f"{package.name}: locked as a dependency of pyproject.toml, "
                            "which no longer names it")
    for line in constraints_text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            entry = locked.get(canonical_name(req.name))
            if entry is not None and not req.specifier.contains(entry.version, prereleases=True):
                problems.append(f"{req.name}: locked {entry.version}, lock-constraints.txt "
                                f"says {req.specifier}")
    # reachability: walk the `# via` graph down from the declared names
    dependents: dict[str, set[str]] = {}
    for package in packages:
        for parent in package.via:
            if not parent.startswith("-") and parent != PROJECT_VIA:
                dependents.setdefault(canonical_name(parent.split()[0]), set()).add(package.name)
    seen, todo = set(), [n for n in names if n in locked]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(dependents.get(name, ()))
    for package in packages:
        if package.name not in seen:
            problems.append(f"{package.name}: locked, but nothing in pyproject.toml needs it")
        if not package.hashes:
            problems.append(f"{package.name}: locked without a hash")
    return problems


# ---------------------------------------------------------------------------------------------
# (a) pyproject.toml and the lock agree


def test_lock_agrees_with_pyproject() -> None:
    pyproject = _tomllib().loads(PYPROJECT.read_text())
    problems = lock_problems(pyproject, LOCK.read_text(), CONSTRAINTS.read_text())
    assert not problems, ("requirements.lock is out of date with pyproject.toml; run "
                          "scripts/update-lock.sh:\n  " + "\n  ".join(problems))


def test_lock_is_what_the_update_script_writes() -> None:
    text = LOCK.read_text()
    header = text.split("\n", 2)[:2]
    assert "uv pip compile" in header[1] and "--generate-hashes" in header[1], header
    assert lock_target(text) == {"python-version": "3.11",
                                 "python-platform": "x86_64-unknown-linux-gnu"}
    script = (ROOT / "scripts" / "update-lock.sh").read_text()
    for flag in ("--extra dev", "--constraint lock-constraints.txt", "--generate-hashes",
                 "--python-version 3.11", "--python-platform x86_64-unknown-linux-gnu",
                 "--output-file requirements.lock"):
        assert flag in header[1] and flag in script, flag
    # torch's CUDA libraries are markers on Linux x86_64: the lock names them
    names = {p.name for p in parse_lock(text)}
    assert {"torch", "torchvision", "triton", "nvidia-cublas", "nvidia-cudnn-cu13"} <= names


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return _tomllib().loads(PYPROJECT.read_text())


@pytest.fixture(scope="module")
def lock_text() -> str:
    return LOCK.read_text()


def test_a_dependency_added_to_pyproject_only_fails(pyproject, lock_text) -> None:
    doctored = {**pyproject, "project": {**pyproject["project"], "dependencies": [
        *pyproject["project"]["dependencies"], "requests-toolbelt>=1.0"]}}
    assert lock_problems(doctored, lock_text) == [
        "requests-toolbelt: in pyproject.toml, not in the lock"]


def test_a_dev_dependency_added_to_pyproject_only_fails(pyproject, lock_text) -> None:
    extras = {**pyproject["project"]["optional-dependencies"]}
    extras["dev"] = [*extras["dev"], "hypothesis>=6"]
    doctored = {**pyproject, "project": {**pyproject["project"],
                                         "optional-dependencies": extras}}
    assert lock_problems(doctored, lock_text) == ["hypothesis: in pyproject.toml, not in the lock"]


def test_a_dependency_removed_from_pyproject_only_fails(pyproject, lock_text) -> None:
    deps = [d for d in pyproject["project"]["dependencies"] if not d.startswith("mlxtend")]
    doctored = {**pyproject, "project": {**pyproject["project"], "dependencies": deps}}
    problems = lock_problems(doctored, lock_text)
    assert "mlxtend: locked as a dependency of pyproject.toml, which no longer names it" in problems
    # and what only mlxtend needed is now unreachable
    assert "mlxtend: locked, but nothing in pyproject.toml needs it" in problems


def test_a_package_removed_from_the_lock_only_fails(pyproject, lock_text) -> None:
    doctored = re.sub(r"^tqdm==.*?(?=^\S)", "", lock_text, count=1, flags=re.M | re.S)
    assert "tqdm==" not in doctored
    assert lock_problems(pyproject, doctored) == ["tqdm: in pyproject.toml, not in the lock"]


def test_a_range_the_locked_version_misses_fails(pyproject, lock_text) -> None:
    deps = [("numpy>=99" if d.startswith("numpy") else d)
            for d in pyproject["project"]["dependencies"]]
    doctored = {**pyproject, "project": {**pyproject["project"], "dependencies": deps}}
    (problem,) = lock_problems(doctored, lock_text)
    assert problem.startswith("numpy: locked ") and "outside numpy>=99" in problem


def test_a_constraint_the_lock_misses_fails(pyproject, lock_text) -> None:
    (problem,) = lock_problems(pyproject, lock_text, "torch==2.15.0\n")
    assert problem.startswith("torch: locked 2.14.1, lock-constraints.txt says ==2.15.0")


# ---------------------------------------------------------------------------------------------
# (b) environment.yml is single-sourced through the lock


def environment_yml_problems(env: dict[str, Any], lock_text: str) -> list[str]:
    """How a parsed environment.yml strays from the lock (empty: it installs exactly the lock)."""
    locked = {p.name for p in parse_lock(lock_text)}
    problems = []
    pip_lines: list[str] = []
    for dep in env.get("dependencies", []):
        if isinstance(dep, dict):
            pip_lines += [str(line) for line in dep.get("pip", [])]
            continue
        name = canonical_name(re.split(r"[=<>!~ ]", str(dep), maxsplit=1)[0])
        if name == "python":
            want = f"python={lock_target(lock_text).get('python-version')}"
            if dep != want:
                problems.append(f"conda dependency {dep!r}: the lock is for {want}")
        elif name != "pip" and name not in locked:
            problems.append(f"conda dependency {dep!r}: requirements.lock lacks it")
    if "-r requirements.lock" not in pip_lines:
        problems.append("the pip section does not install -r requirements.lock")
    for line in pip_lines:
        if line.startswith("-"):
            if line != "-r requirements.lock":
                problems.append(f"pip line {line!r}: only -r requirements.lock belongs there")
        elif canonical_name(Requirement(line).name) not in locked:
            problems.append(f"pip dependency {line!r}: requirements.lock lacks it")
    return problems


def test_environment_yml_installs_from_the_lock_and_names_nothing_else(lock_text) -> None:
    env = yaml.safe_load(ENVIRONMENT_YML.read_text())
    assert environment_yml_problems(env, lock_text) == []


def test_environment_yml_check_can_fail(lock_text) -> None:
    """The same check on doctored copies of environment.yml."""
    env = yaml.safe_load(ENVIRONMENT_YML.read_text())
    conda_extra = {**env, "dependencies": ["scikit-image", *env["dependencies"]]}
    assert environment_yml_problems(conda_extra, lock_text) == [
        "conda dependency 'scikit-image': requirements.lock lacks it"]
    pip_extra = {**env, "dependencies": [*env["dependencies"], {"pip": [
        "-r requirements.lock", "-e .[dev]", "lightning>=2"]}]}
    assert environment_yml_problems(pip_extra, lock_text) == [
        "pip line '-e .[dev]': only -r requirements.lock belongs there",
        "pip dependency 'lightning>=2': requirements.lock lacks it"]
    loose = {**env, "dependencies": ["python=3.12", "pip", {"pip": ["-e .[dev]"]}]}
    assert environment_yml_problems(loose, lock_text) == [
        "conda dependency 'python=3.12': the lock is for python=3.11",
        "the pip section does not install -r requirements.lock",
        "pip line '-e .[dev]': only -r requirements.lock belongs there"]


# ---------------------------------------------------------------------------------------------
# (c) exactly the locked versions are installed


def test_running_environment_has_exactly_the_locked_versions(lock_text) -> None:
    """Quickstart lines 1 and 2 install from the lock: importlib.metadata must agree with it."""
    status = lock_status(LOCK)
    if not status["on_target"]:
        pytest.skip(f"requirements.lock is for {status['target']}; this is "
                    f"{sys.implementation.name} {platform.python_version()} on "
                    f"{sys.platform} {platform.machine()}")
    assert status["matches_lock"], (
        "this environment is not the locked one (reinstall with Quickstart line 2): "
        + describe(status, limit=50))
    assert status["differences"] == []
    assert describe(status) == "matches the lock (requirements.lock)"


def test_metrics_environment_records_the_lock_status() -> None:
    from jacreg.runtime import environment_info

    lock = environment_info()["lock"]
    assert set(lock) >= {"lock_file", "matches_lock", "differences"}
    assert lock["lock_file"] == "requirements.lock"
    assert isinstance(lock["matches_lock"], bool)


# ---------------------------------------------------------------------------------------------
# (d) the drift comparison on a hand-made lock

HAND_MADE = """\
# This file was autogenerated by uv via the following command:
#    uv pip compile --python-version 3.11 --python-platform x86_64-unknown-linux-gnu
--index-url https://pypi.org/simple
Alpha_Pkg==1.0 \\
    --hash=sha256:AAAA \\
    --hash=sha256:bbbb
    # via jacreg (pyproject.toml)
beta==2.0.0 \\
    --hash=sha256:cccc
    # via
    #   alpha-pkg
    #   gamma
    #   viable
gamma[extra]==3.1 ; sys_platform == 'linux' \\
    --hash=sha256:dddd
    # via jacreg (pyproject.toml)
winonly==1.0 ; sys_platform == 'win32' \\
    --hash=sha256:eeee
    # via gamma
torch==2.14.1 \\
    --hash=sha256:ffff
    # via
    #   -c lock-constraints.txt
    #   jacreg (pyproject.toml)
"""
LINUX = {"sys_platform": "linux", "platform_machine": "x86_64"}


def test_parse_lock_reads_names_versions_markers_hashes_and_via() -> None:
    packages = parse_lock(HAND_MADE)
    assert [p.name for p in packages] == ["alpha-pkg", "beta", "gamma", "winonly", "torch"]
    assert packages[0] == LockedPackage("alpha-pkg", "1.0", None, ("sha256:aaaa", "sha256:bbbb"),
                                        ("jacreg (pyproject.toml)",))
    assert packages[1].via == ("alpha-pkg", "gamma", "viable")
    assert packages[2].marker == "sys_platform == 'linux'"
    assert packages[4].via == ("-c lock-constraints.txt", "jacreg (pyproject.toml)")
    assert lock_target(HAND_MADE) == {"python-version": "3.11",
                                      "python-platform": "x86_64-unknown-linux-gnu"}


def test_parse_lock_refuses_an_unpinned_requirement() -> None:
    with pytest.raises(ValueError, match="not a pinned requirement"):
        parse_lock("numpy>=1.24 \\\n    --hash=sha256:abcd\n")


def test_markers_that_do_not_hold_here_are_ignored() -> None:
    packages = parse_lock(HAND_MADE)
    assert locked_versions(packages, LINUX) == {"alpha-pkg": "1.0", "beta": "2.0.0",
                                                "gamma": "3.1", "torch": "2.14.1"}
    on_windows = locked_versions(packages, {"sys_platform": "win32"})
    assert "winonly" in on_windows and "gamma" not in on_windows


def test_compare_lists_every_difference() -> None:
    locked = locked_versions(parse_lock(HAND_MADE), LINUX)
    installed = {"alpha_pkg": "1.0", "beta": "2.0", "gamma": "3.2", "torch": "2.14.1+cpu",
                 "extra-tool": "0.1", "jacreg": "0.1.0", "pip": "23.2.1"}
    assert compare(locked, installed) == [
        {"name": "extra-tool", "locked": None, "installed": "0.1"},
        {"name": "gamma", "locked": "3.1", "installed": "3.2"},
        {"name": "torch", "locked": "2.14.1", "installed": "2.14.1+cpu"},
    ]  # alpha_pkg is alpha-pkg, 2.0 is 2.0.0; the project and pip are not compared
    del installed["beta"]
    assert {"name": "beta", "locked": "2.0.0", "installed": None} in compare(locked, installed)


def test_lock_status_and_describe(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text(HAND_MADE)
    same = {"alpha-pkg": "1.0", "beta": "2.0.0", "gamma": "3.1", "torch": "2.14.1",
            "jacreg": "0.1.0"}
    status = lock_status(lock, installed=same, environment=LINUX)
    assert status["matches_lock"] is True and status["differences"] == []
    assert status["target"] == "python 3.11, x86_64-unknown-linux-gnu"
    assert len(status["lock_sha256"]) == 64
    assert describe(status).startswith("matches the lock (")

    drifted = {**same, "gamma": "3.2"}
    del drifted["beta"]
    status = lock_status(lock, installed=drifted, environment=LINUX)
    assert status["matches_lock"] is False
    assert status["differences"] == [{"name": "beta", "locked": "2.0.0", "installed": None},
                                     {"name": "gamma", "locked": "3.1", "installed": "3.2"}]
    text = describe(status)
    assert "differs from the lock" in text and "in 2 packages" in text
    assert "beta 2.0.0→not installed, gamma 3.1→3.2" in text
    assert describe(status, limit=1).endswith(", … 1 more" if status["on_target"] else
                                              "… 1 more; the lock is for python 3.11, "
                                              "x86_64-unknown-linux-gnu, not this interpreter")
    elsewhere = {**status, "on_target": False}
    assert describe(elsewhere).endswith("; the lock is for python 3.11, "
                                        "x86_64-unknown-linux-gnu, not this interpreter")


@pytest.mark.parametrize(("target", "python", "system", "machine", "expected"), [
    ({"python-version": "3.11", "python-platform": "x86_64-unknown-linux-gnu"},
     (3, 11, 7), "linux", "x86_64", True),
    ({"python-version": "3.11", "python-platform": "x86_64-unknown-linux-gnu"},
     (3, 12, 1), "linux", "x86_64", False),
    ({"python-version": "3.11", "python-platform": "x86_64-unknown-linux-gnu"},
     (3, 11, 7), "linux", "aarch64", False),
    ({"python-version": "3.11", "python-platform": "x86_64-unknown-linux-gnu"},
     (3, 11, 7), "darwin", "arm64", False),
    ({"python-version": "3.11.7", "python-platform": "linux"}, (3, 11, 7), "linux", "aarch64",
     True),
    ({}, (3, 11, 7), "linux", "x86_64", None),
])
def test_on_target(monkeypatch, target, python, system, machine, expected) -> None:
    monkeypatch.setattr(sys, "version_info", (*python, "final", 0))
    monkeypatch.setattr(sys, "platform", system)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert lockfile.on_target(target) is expected


def test_no_lock_file_is_reported_as_not_checked(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(lockfile.LOCK_ENV, str(tmp_path / "missing.lock"))
    status = lock_status()
    assert status["matches_lock"] is None and status["differences"] == []
    assert describe(status).startswith("not checked: no lock file")
