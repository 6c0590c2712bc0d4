"""infra/: the manifests parse and their commands parse with the real `trufor-scan` argument parser."""
from __future__ import annotations

import shlex
import tomllib
from pathlib import Path

import yaml

from jobs.cli import build_parser

INFRA = Path(__file__).resolve().parents[1] / "infra"
REPO = INFRA.parent


def _parse_command(cmd: str):
    argv = shlex.split(cmd)
    assert argv[0] == "trufor-scan", argv
    return build_parser().parse_args(argv[1:])


def test_console_script_is_declared():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"trufor-scan": "jobs.cli:main"}


def test_rayjob_manifest():
    doc = yaml.safe_load((INFRA / "kuberay" / "rayjob-scan.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    args = _parse_command(doc["spec"]["entrypoint"])
    assert args.command == "sweep" and args.input.startswith("s3://") and args.output.startswith("s3://")
    assert args.gpus_per_actor == 1 and args.allow_download is False
    spec = doc["spec"]["rayClusterSpec"]
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
    assert gpu_groups, "the RayJob needs a GPU worker group"
    assert args.actors <= sum(g["maxReplicas"] for g in gpu_groups)
    text = (INFRA / "kuberay" / "rayjob-scan.yaml").read_text().lower()
    assert "aws_secret_access_key" not in text and "secretref" in text  # credentials from a secret only


def test_rayjob_train_manifest():
    path = INFRA / "kuberay" / "rayjob-train-noiseprint.yaml"
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    args = _parse_command(doc["spec"]["entrypoint"])
    assert args.cmd.name == "noiseprint train" and args.use_gpu
    assert all(u.startswith("s3://") for u in (args.corpus, args.output, args.init))
    gpu_workers = sum(g["minReplicas"] for g in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
                      if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu"))
    assert args.workers <= gpu_workers  # every Train worker gets its GPU
    text = path.read_text().lower()
    assert "aws_secret_access_key" not in text and "secretref" in text


def test_cluster_launcher_config():
    doc = yaml.safe_load((INFRA / "cluster-launcher" / "trufor-aws.yaml").read_text())
    assert doc["head_node_type"] in doc["available_node_types"]
    assert doc["provider"]["type"] == "aws" and doc["docker"]["image"]
    assert any("trufor-scan" in c for c in doc["setup_commands"])
    header = [ln for ln in (INFRA / "cluster-launcher" / "trufor-aws.yaml").read_text().splitlines() if "--" in ln]
    submit = " ".join(ln.lstrip("# ").rstrip("\\ ") for ln in header[:2])
    args = _parse_command(submit.split(" -- ", 1)[1])
    assert args.command == "scan" and args.gpus_per_actor == 1


def test_dockerfile_installs_the_project_with_pinned_torch():
    text = (INFRA / "Dockerfile").read_text()
    assert "-c constraints.txt torch==2.13.0" in text and "pip install -c constraints.txt ." in text
    import tomllib

    found = tomllib.loads((INFRA.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {p.rstrip("*").split(".")[0] for p in found["include"]}  # the top-level packages (with their subpackages)
    for pkg in sorted(packages):  # every package the project installs is in the image
        assert f"COPY {pkg}" in text, pkg
    assert "trufor-scan --help" in text
