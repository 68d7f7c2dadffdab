"""`python -m mlops_assets.edge export --version N|--alias champion --out DIR`: one governed version
as an edge artifact. Bad input or a refused version is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from mlflow.exceptions import MlflowException

from mlops_assets.edge.compile import CompileError
from mlops_assets.edge.export import ExportError, artifact_bytes, export_version, registry_client, resolve
from mlops_assets.project.loading import ProjectError, load_project
from mlops_assets.settings import default_tracking_uri, project_path


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m mlops_assets.edge", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="export a governed registry version as an edge artifact")
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", help="the registry version number")
    which.add_argument("--alias", help="the alias whose version to export (e.g. champion)")
    export.add_argument("--out", type=Path, required=True, help="a new folder for the artifact")
    export.add_argument("--project", help="project folder or file (default: MLOPS_PROJECT)")
    export.add_argument("--tracking-uri", help="MLflow tracking URI (default: the project's state folder's)")
    export.add_argument("--registry-uri", help="MLflow registry URI (default: the tracking URI)")
    export.add_argument("--log-to-run", action="store_true", help="also log the artifact to the version's run")
    return top


def project_tracking_uri(project: Path | None) -> str:
    """The platform's default store for `project` (its state folder), MLOPS_PROJECT's when none is named."""
    if not project:
        return default_tracking_uri()
    saved = os.environ.get("MLOPS_PROJECT")
    os.environ["MLOPS_PROJECT"] = str(Path(project).resolve())
    try:
        return default_tracking_uri()
    finally:
        if saved is None:
            os.environ.pop("MLOPS_PROJECT")
        else:
            os.environ["MLOPS_PROJECT"] = saved


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        loaded = load_project(args.project or project_path())
        spec = loaded.spec
        tracking = args.tracking_uri or project_tracking_uri(loaded.path if args.project else None)
        version = resolve(registry_client(tracking, args.registry_uri), spec.model_name, args.version, args.alias)
        manifest = export_version(tracking, args.registry_uri, spec.model_name, version, args.out,
                                  threshold=spec.threshold, log_to_run=args.log_to_run)
    except (ExportError, CompileError, ProjectError, MlflowException, OSError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"edge export: {message}", file=sys.stderr)
        return 2
    sizes = artifact_bytes(args.out)
    print(json.dumps({"model": spec.model_name, "version": version, "out": str(args.out),
                      "library_bytes": sizes["library"], "artifact_bytes": sizes["total"],
                      "max_abs_diff": manifest["export_check"]["max_abs_diff"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
