"""The Dockerfile passes hadolint and checkov, and agrees with the project it packages.

No container engine runs here, so the images are never built in tests: these checks hold the
Dockerfile to what pyproject.toml, the runtime and the operator's manifests expect of it.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

from hack.lint.tools import checkov, lint_tool
from sas_operator.render import CONFIG_DIR, CONFIG_FILE, render
from sas_operator.settings import OperatorSettings
from sas_operator.spec import SparseAttentionServiceSpec
from sas_runtime.config import ServerConfig
from sas_runtime.kernels.build import LIBRARY_NAME

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DIGEST_PINNED = re.compile(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")
FINAL_STAGES = ("operator", "runtime")
BUILD_TOOLS = ("gcc", "g++", "build-essential", "python3-dev", "nvcc", "ninja", "cutlass", "pip ")


@dataclass
class Stage:
    """One FROM ... AS name stage: its base and its instructions as (keyword, arguments)."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def arguments(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def env(self) -> dict[str, str]:
        pairs: dict[str, str] = {}
        for args in self.arguments("ENV"):
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                pairs[key] = value
        return pairs

    def exec_form(self, keyword: str) -> list[str]:
        (args,) = self.arguments(keyword)
        parsed: list[str] = json.loads(args)
        return parsed


def parse_stages(text: str) -> dict[str, Stage]:
    """Stages by name; continuation lines joined, comments dropped."""
    logical = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")),
    )
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in logical.splitlines():
        if not line.strip():
            continue
        keyword, _, args = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            current = stages.setdefault(name.strip(), Stage(name.strip(), base.strip()))
        elif current is not None:
            current.instructions.append((keyword, args.strip()))
    return stages


STAGES = parse_stages(DOCKERFILE.read_text())


def resolve_base(stage: Stage) -> str:
    """The pinned image a stage finally builds on, through stage aliases."""
    while stage.base in STAGES:
        stage = STAGES[stage.base]
    return stage.base


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [str(lint_tool("hadolint")), "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert json.loads(result.stdout) == []
    assert result.returncode == 0


def test_hadolint_reports_a_known_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\n")
    result = subprocess.run(
        [str(lint_tool("hadolint")), "--format", "json", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3006", "DL3008"} <= codes


def test_checkov_passes_with_every_skip_explained() -> None:
    report = checkov(DOCKERFILE, "dockerfile")
    assert report["summary"]["failed"] == 0, report["results"]["failed_checks"]
    assert report["summary"]["passed"] > 50
    for skipped in report["results"]["skipped_checks"]:
        assert len(skipped["check_result"]["suppress_comment"].strip()) > 20, skipped["check_id"]


def test_final_images_have_pinned_bases_non_root_users_and_labels() -> None:
    for name in FINAL_STAGES:
        stage = STAGES[name]
        assert DIGEST_PINNED.match(resolve_base(stage)), resolve_base(stage)
        user = stage.arguments("USER")[-1]
        uid, _, gid = user.partition(":")
        assert int(uid) > 0
        assert int(gid) > 0
        labels = " ".join(stage.arguments("LABEL"))
        for key in ("title", "description", "version", "revision", "licenses"):
            assert f"org.opencontainers.image.{key}=" in labels


def test_final_images_hold_no_build_tools() -> None:
    for name in FINAL_STAGES:
        for command in STAGES[name].arguments("RUN"):
            assert not any(tool in command for tool in BUILD_TOOLS), command
            assert "rm -rf /var/lib/apt/lists/*" in command or "apt-get" not in command
        for source in STAGES[name].arguments("COPY"):
            assert "kernel-build" not in source


def test_build_stages_install_extras_that_exist() -> None:
    extras = PYPROJECT["project"]["optional-dependencies"]
    installed = {
        stage: re.findall(r'"\.\[([\w,-]+)\]"', " ".join(STAGES[stage].arguments("RUN")))
        for stage in ("operator-build", "runtime-build")
    }
    assert installed == {"operator-build": ["operator"], "runtime-build": ["runtime"]}
    assert not any(req.startswith("torch") for req in extras["operator"])
    assert all(extra in extras for names in installed.values() for extra in names)


def test_pins_in_the_dockerfile_match_the_project() -> None:
    kernels_build = {
        req.split("==")[0]: req
        for req in PYPROJECT["project"]["optional-dependencies"]["kernels-build"]
    }
    text = DOCKERFILE.read_text()
    assert f"{kernels_build['nvidia-cutlass']} {kernels_build['ninja']}" in text
    makefile = (REPO / "Makefile").read_text()
    (pip_pin,) = set(re.findall(r"pip==[\d.]+", makefile))
    assert set(re.findall(r"pip==[\d.]+", text)) == {pip_pin}


def test_copied_paths_exist_and_pass_dockerignore() -> None:
    ignore = [
        line
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    for stage in STAGES.values():
        for args in stage.arguments("COPY"):
            if args.startswith("--from="):
                continue
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), source
                assert not dockerignored(source.rstrip("/"), ignore), source


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if fnmatch.fnmatch(path, pattern.lstrip("!").rstrip("/")):
            ignored = not negated
    return ignored


def test_operator_entrypoint_is_the_project_script() -> None:
    (script,) = STAGES["operator"].exec_form("ENTRYPOINT")
    module, _, function = PYPROJECT["project"]["scripts"][script].partition(":")
    assert find_spec(module) is not None
    assert function == "main"


def test_runtime_command_is_what_the_operator_renders() -> None:
    stage = STAGES["runtime"]
    entrypoint, cmd = stage.exec_form("ENTRYPOINT"), stage.exec_form("CMD")
    assert entrypoint[:2] == ["python", "-m"]
    assert find_spec(f"{entrypoint[2]}.__main__") is not None
    assert cmd == ["serve", "--config", f"{CONFIG_DIR}/{CONFIG_FILE}"]
    settings = OperatorSettings()
    spec = SparseAttentionServiceSpec.model_validate({})
    (deployment,) = [
        m
        for m in render("x", "ns", spec, settings, service_monitor_served=False)
        if m["kind"] == "Deployment"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == entrypoint + cmd
    env = stage.env()
    assert env["PATH"].startswith("/opt/venv/bin:")
    for item in container["env"]:
        if item["name"] in env:
            assert env[item["name"]] == item["value"]


def test_runtime_image_users_and_ports_match_the_operator_settings() -> None:
    settings = OperatorSettings()
    assert (
        STAGES["runtime"].arguments("USER")[-1] == f"{settings.runtime_uid}:{settings.runtime_uid}"
    )
    assert STAGES["runtime"].arguments("EXPOSE") == [str(ServerConfig().port)]
    assert STAGES["operator"].arguments("EXPOSE") == [
        f"{settings.health_port} {settings.metrics_port}"
    ]


def test_runtime_image_writes_only_to_mounted_volumes() -> None:
    spec = SparseAttentionServiceSpec.model_validate({})
    (deployment,) = [
        m
        for m in render("x", "ns", spec, OperatorSettings(), service_monitor_served=False)
        if m["kind"] == "Deployment"
    ]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    env = STAGES["runtime"].env()
    assert {env["HOME"], env["TMPDIR"]} <= writable
    (workdir,) = STAGES["runtime"].arguments("WORKDIR")
    assert workdir in writable


def test_kernels_are_built_for_sm90a_and_found_by_the_runtime() -> None:
    build = STAGES["runtime-build"]
    assert build.env()["TORCH_CUDA_ARCH_LIST"] == "9.0a"
    assert "-m sas_runtime.kernels.build" in " ".join(build.arguments("RUN"))
    library = STAGES["runtime"].env()["SAS_KERNEL_LIBRARY"]
    assert Path(library).name == f"{LIBRARY_NAME}.so"
    copies = " ".join(STAGES["runtime"].arguments("COPY"))
    assert f"--from=runtime-build {library} {library}" in copies
