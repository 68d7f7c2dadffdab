"""A governed registry version exported as a self-contained edge artifact.

Layout of the folder: `model.so` (the compiled booster), `src/` (its C sources, to rebuild for
another target), `predict.py` (the standalone runner, standard library only) and `manifest.json`
(which version, from where, its input contract and blessing, the build, the parity check).

Only versions whose blessing and infra validation are recorded as passed are exported (by alias:
also the alias move must be in the history, as the service requires). Before an artifact is kept
its library scores probe rows built on every split threshold (and one float step either side),
every category and missing values; it must equal the booster within TOLERANCE or the export fails.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlops_assets.compiled_trees import numeric_splits
from mlops_assets.compiled_trees import probe_matrix as compiled_probe
from mlops_assets.edge import runner
from mlops_assets.edge.compile import compile_booster
from mlops_assets.scoring_model import ScoringModel
from mlops_assets.serving.governance import alias_version, not_found, ungoverned
from mlops_assets.serving.models import load_version

# Thresholds and leaves stay float64 and trees are summed in LightGBM's order, so scores are equal
# (observed max |diff| 0); the bound leaves room for another libm's exp() (sigmoid, softmax) on the target.
TOLERANCE = 1e-9
PROBE_ROWS = 2000
KEPT_TAGS = ("training_set_hash", "project", "project_hash", "code_version", "mlflow_run_id", "blessed",
             "blessing_reasons", "infra_valid", "infra_reasons", "train_window", "validation_window")


class ExportError(Exception):
    """An export refused or failed: one line for the user."""


def resolve(client: MlflowClient, name: str, version: str | None, alias: str | None) -> str:
    """The version to export: as given, or the one the alias points at (governed for that alias)."""
    if alias:
        found = alias_version(client, name, alias)
        if found is None:
            raise ExportError(f"{name} has no alias {alias!r}")
        reason = ungoverned(client, name, alias, found)
        if reason:
            raise ExportError(f"refusing to export: {reason}")
        return found
    if not version:
        raise ExportError("name a version (--version N) or an alias (--alias champion)")
    return str(version)


def governed_tags(client: MlflowClient, name: str, version: str) -> dict[str, str]:
    """The version's tags, if its blessing and infra validation are recorded as passed."""
    try:
        tags = dict(client.get_model_version(name, version).tags)
    except MlflowException as exc:
        if not_found(exc):
            raise ExportError(f"{name} has no version {version}") from None
        raise
    if tags.get("blessed") != "true":
        raise ExportError(f"refusing to export {name} v{version}: not blessed "
                          f"({tags.get('blessing_reasons') or 'no verdict recorded'})")
    if tags.get("infra_valid") != "true":
        raise ExportError(f"refusing to export {name} v{version}: infra validation not passed "
                          f"({tags.get('infra_reasons') or 'not run'})")
    return tags


def public_uri(uri: str) -> str:
    """A store URI without its password (the manifest travels with the artifact)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}@{host}" if parts.username else host
    return urlunsplit(parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")))


def probe_matrix(model: ScoringModel, rows: int = PROBE_ROWS, seed: int = 0) -> np.ndarray:
    """Rows that exercise every split: each threshold and its float neighbours, each category, NaN."""
    counts = {j: len(model.categorical_levels[n]) for j, n in enumerate(model.features) if n in model.categorical_levels}
    return compiled_probe(numeric_splits(model.booster), len(model.features), counts, rows, seed, edge_cases=False)


def max_difference(folder: Path, model: ScoringModel, matrix: np.ndarray) -> float:
    """Largest |library - booster| over the outputs of `matrix`'s rows."""
    edge = runner.EdgeModel(folder)
    values = runner.array("d", np.ascontiguousarray(matrix, dtype=np.float64).ravel().tolist())
    ours = np.asarray(edge.predict_matrix(values, len(matrix)), dtype=np.float64)
    theirs = np.asarray(model.predict_matrix(matrix), dtype=np.float64).reshape(ours.shape)
    return float(np.max(np.abs(ours - theirs))) if ours.size else 0.0


def registry_client(tracking_uri: str, registry_uri: str | None = None) -> MlflowClient:
    """Both URIs explicit (never MLflow's implicit store); a SQLite store must exist (MLflow would
    create an empty one and report every version missing)."""
    for uri in {tracking_uri, registry_uri or tracking_uri}:
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            raise ExportError(f"no MLflow store at {uri.removeprefix('sqlite:///')}: run the pipeline first "
                              "or name the store with --tracking-uri")
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)


def export_version(tracking_uri: str, registry_uri: str | None, name: str, version: str, out: Path,
                   threshold: float = 0.5, log_to_run: bool = False) -> dict[str, Any]:
    """Export one governed version into the folder `out` (which must not exist); the manifest."""
    client = registry_client(tracking_uri, registry_uri)
    uris = {"registry_uri": public_uri(registry_uri or tracking_uri), "tracking_uri": public_uri(tracking_uri)}
    tags = governed_tags(client, name, version)
    out = Path(out)
    if out.exists():
        raise ExportError(f"{out} already exists: export into a new folder")
    model = load_version(client, name, version)
    out.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name each time: the check loads the library, and the dynamic loader hands back a library
    # already loaded from the same path instead of reading a new file there.
    partial = Path(tempfile.mkdtemp(prefix=f"{out.name}.partial-", dir=out.parent))
    partial.chmod(0o755)  # mkdtemp's 0700 would travel with the artifact
    try:
        manifest = _build(partial, uris, name, version, model, tags, threshold)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    run_id = client.get_model_version(name, version).run_id
    if log_to_run and run_id:
        client.log_artifacts(run_id, str(out), "edge")
    return manifest


def _build(folder: Path, uris: dict[str, str], name: str, version: str, model: ScoringModel,
           tags: dict[str, str], threshold: float) -> dict[str, Any]:
    library = compile_booster(model.booster, folder)
    shutil.copyfile(Path(runner.__file__), folder / "predict.py")
    manifest: dict[str, Any] = {
        "format": runner.FORMAT, "model_name": name, "version": version,
        **uris,
        "exported_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "input": "feature vectors keyed by feature name (computed upstream, as batch scoring does), not "
                 "service requests",
        "features": list(model.features), "categorical_levels": model.categorical_levels,
        "problem": model.problem, "classes": model.classes, "threshold": float(threshold),
        "tolerance": TOLERANCE, "training_set_hash": tags.get("training_set_hash"),
        "tags": {k: tags[k] for k in KEPT_TAGS if k in tags}, "library": library,
        "runtime": "CPython 3.10+ standard library (ctypes); no numpy, no LightGBM",
    }
    _write(folder, manifest)
    worst = max_difference(folder, model, probe_matrix(model))
    if not worst <= TOLERANCE:
        raise ExportError(f"the compiled model differs from the booster by {worst:.3g} (> {TOLERANCE:g})")
    manifest["export_check"] = {"probe_rows": PROBE_ROWS, "max_abs_diff": worst}
    _write(folder, manifest)
    return manifest


def _write(folder: Path, manifest: dict[str, Any]) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def artifact_bytes(folder: Path) -> dict[str, int]:
    """Sizes: the compiled library alone and the whole folder (sources, runner and manifest included)."""
    total = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {"library": (folder / "model.so").stat().st_size, "total": total}
