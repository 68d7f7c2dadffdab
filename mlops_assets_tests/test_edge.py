"""Edge inference: a governed registry version exported as a compiled artifact and scored without the platform.

Models are the serving fixtures' real LightGBM versions in a real SQLite registry (flights binary,
weather regression, weather multiclass). The artifact's `predict.py` runs in a clean interpreter
(`python -I -S`: no site-packages at all, so neither numpy, LightGBM nor mlops_assets can be
imported; no PYTHONPATH; cwd outside the repository) and must score real feature rows as the
registered pyfunc does, within the manifest's tolerance.
"""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import pytest

from mlops_assets.edge import __main__ as edge_cli
from mlops_assets.edge.compile import CompileError
from mlops_assets.edge.export import TOLERANCE, export_version
from mlops_assets.scoring_model import ScoringModel
from mlops_assets.settings import PROJECT_ROOT
from mlops_assets_tests.serving_fixtures import Platform, build_flights, build_weather

ROWS = 300


@pytest.fixture(scope="module")
def flights(tmp_path_factory: pytest.TempPathFactory) -> Platform:
    """The flights champion (v1) and challenger in their own registry."""
    return build_flights(tmp_path_factory.mktemp("edge_flights"))


@pytest.fixture(scope="module")
def weather(flights: Platform) -> tuple[Platform, Platform]:
    """The weather regression champion and its multiclass twin (in the same registry: other model names)."""
    return build_weather(flights.root)


def export_cli(platform: Platform, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m mlops_assets.edge export ...` in its own process, against the platform's registry."""
    command = [sys.executable, "-m", "mlops_assets.edge", "export", "--project", str(platform.project_file),
               "--tracking-uri", platform.tracking_uri, *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})


def clean_predict(artifact: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The artifact's runner in an isolated interpreter without site-packages, outside the repository."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(artifact.parent)}
    return subprocess.run([sys.executable, "-I", "-S", str(artifact / "predict.py"), *args], input=stdin,
                          capture_output=True, text=True, cwd=artifact.parent, env=env, timeout=120)


def feature_rows(platform: Platform, model: ScoringModel, n: int = ROWS) -> list[dict[str, object]]:
    """Real feature vectors of served rows (model inputs as the service computes them), a seeded sample."""
    served = platform.served()
    return served.sample(n=min(n, served.height), seed=3).select(model.features).to_dicts()


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def answers(done: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def pyfunc_scores(platform: Platform, version: str, rows: list[dict[str, object]]) -> np.ndarray:
    """The registered pyfunc's predictions, loaded from the registry as serving loads it."""
    source = platform.client().get_model_version_download_uri(platform.model_name, version)
    return np.asarray(mlflow.pyfunc.load_model(source).predict(pd.DataFrame(rows)))


def export_main(platform: Platform, *args: str) -> int:
    """The same command in this process (refusals need no new interpreter)."""
    return edge_cli.main(["export", "--project", str(platform.project_file), "--tracking-uri",
                          platform.tracking_uri, *args])


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


def test_exported_champion_scores_like_the_registered_pyfunc_in_a_clean_process(flights: Platform,
                                                                               tmp_path: Path) -> None:
    artifact = tmp_path / "champion"
    done = export_cli(flights, "--alias", "champion", "--out", str(artifact), "--log-to-run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)  # one JSON line: the compilers' own logging is kept off stdout
    assert summary["version"] == "1" and summary["max_abs_diff"] <= TOLERANCE
    manifest = json.loads((artifact / "manifest.json").read_text())
    model = flights.models["1"]
    assert manifest["features"] == model.features and manifest["categorical_levels"] == model.categorical_levels
    assert (manifest["model_name"], manifest["version"], manifest["problem"]) == (flights.model_name, "1", "binary")
    assert manifest["tags"]["blessed"] == "true" and manifest["tags"]["infra_valid"] == "true"
    assert manifest["registry_uri"] == flights.tracking_uri and manifest["threshold"] == flights.spec.threshold

    rows = feature_rows(flights, model)
    rows[0]["dest"], rows[1]["manufacturer"], rows[2]["carrier"] = "ZZZ", "NEW MAKER", None  # unseen, missing
    rows[3]["temp"] = None
    del rows[4]["distance"]
    scored = answers(clean_predict(artifact, str(write_jsonl(tmp_path / "rows.jsonl", rows))))
    expected = pyfunc_scores(flights, "1", rows)
    ours = np.array([a["probability"] for a in scored])
    assert len(ours) == len(rows) and np.max(np.abs(ours - expected)) <= TOLERANCE
    assert [a["decision"] for a in scored] == [bool(p >= flights.spec.threshold) for p in expected]

    csv_path = tmp_path / "rows.csv"
    with csv_path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=model.features)
        writer.writeheader()
        writer.writerows(rows)
    assert answers(clean_predict(artifact, str(csv_path))) == scored
    stdin = (tmp_path / "rows.jsonl").read_text()
    assert answers(clean_predict(artifact, stdin=stdin)) == scored

    logged = {a.path for a in flights.client().list_artifacts(flights.client().get_model_version(
        flights.model_name, "1").run_id, "edge")}
    assert {"edge/predict.py", "edge/manifest.json", "edge/model.so"} <= logged


@pytest.mark.parametrize("which", ["regression", "multiclass"])
def test_regression_and_multiclass_versions_export_with_parity(weather: tuple[Platform, Platform], which: str,
                                                               tmp_path: Path) -> None:
    platform = weather[0] if which == "regression" else weather[1]
    model = platform.models["1"]
    artifact = tmp_path / which
    manifest = export_version(platform.tracking_uri, None, platform.model_name, "1", artifact)
    assert manifest["problem"] == which and manifest["export_check"]["max_abs_diff"] <= TOLERANCE
    rows = feature_rows(platform, model)
    if which == "multiclass":  # trained on Seattle only: New York is a category it never saw (missing)
        assert any(r["location"] not in model.categorical_levels["location"] for r in rows)
    scored = answers(clean_predict(artifact, str(write_jsonl(tmp_path / "rows.jsonl", rows))))
    expected = pyfunc_scores(platform, "1", rows)
    if which == "regression":
        ours = np.array([a["prediction"] for a in scored])
    else:
        ours = np.array([[a["probabilities"][c] for c in model.classes or []] for a in scored])
        assert [a["predicted_class"] for a in scored] == [(model.classes or [])[i] for i in expected.argmax(axis=1)]
        assert all(math.isclose(sum(a["probabilities"].values()), 1.0, rel_tol=1e-12) for a in scored)
    assert ours.shape == expected.shape and np.max(np.abs(ours - expected)) <= TOLERANCE
    if which == "regression":  # what another target does: rebuild from the shipped sources, same answers
        (artifact / "model.so").unlink()
        rebuilt = clean_predict(artifact, "--rebuild")
        assert rebuilt.returncode == 0 and "rebuilt model.so" in rebuilt.stdout, rebuilt.stderr
        assert json.loads((artifact / "manifest.json").read_text())["library"]["rebuilt"] is True
        assert answers(clean_predict(artifact, str(tmp_path / "rows.jsonl"))) == scored


def test_only_governed_versions_are_exported(flights: Platform, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    model = flights.models["1"]
    unblessed = flights.log_version(model, tags={"blessed": "false", "infra_valid": "true",
                                                 "blessing_reasons": "worse than the champion"})
    untested = flights.log_version(model, tags={"blessed": "true", "infra_valid": "false"})
    flights.client().set_registered_model_alias(flights.model_name, "sideways", "1")  # not through the platform
    (tmp_path / "taken").mkdir()
    capsys.readouterr()  # logging the versions warned
    cases = [(("--version", unblessed), ("not blessed", "worse than the champion")),
             (("--version", untested), ("infra validation not passed",)),
             (("--version", "999"), ("no version 999",)),
             (("--alias", "sideways"), ("not in the alias history",)),
             (("--alias", "nobody"), ("no alias 'nobody'",))]
    for which, words in cases:
        out = tmp_path / f"out_{which[1]}"
        assert export_main(flights, *which, "--out", str(out)) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and all(w in err for w in words), err
        assert not out.exists() and not list(tmp_path.glob(f"{out.name}.partial*"))
    assert export_main(flights, "--version", "1", "--out", str(tmp_path / "taken")) == 2
    assert "already exists" in capsys.readouterr().err
    absent = f"sqlite:///{tmp_path / 'absent.db'}"
    assert edge_cli.main(["export", "--project", str(flights.project_file), "--tracking-uri", absent,
                          "--version", "1", "--out", str(tmp_path / "a")]) == 2
    assert "no MLflow store" in capsys.readouterr().err and not (tmp_path / "absent.db").exists()


def test_no_c_compiler_is_a_clear_error_and_leaves_no_folder(weather: tuple[Platform, Platform], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    platform = weather[0]
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CompileError, match="no C compiler found"):
        export_version(platform.tracking_uri, None, platform.model_name, "1", tmp_path / "out")
    assert not list(tmp_path.glob("out*"))


def test_bad_input_and_a_tampered_artifact_are_one_line_errors(weather: tuple[Platform, Platform],
                                                               tmp_path: Path) -> None:
    platform = weather[0]
    artifact = tmp_path / "weather"
    export_version(platform.tracking_uri, None, platform.model_name, "1", artifact)
    one_line_error(clean_predict(artifact, stdin='{"wind": 3}\nnot json\n'), "line 2 is not JSON")
    one_line_error(clean_predict(artifact, stdin='[1, 2]\n'), "line 1 must be a JSON object")
    one_line_error(clean_predict(artifact, stdin='{"wind": "gusty"}\n'), "'wind' must be a number")
    one_line_error(clean_predict(artifact, "--format", "csv", stdin="a,b\n1,2\n"), "names none of the model's")
    one_line_error(clean_predict(artifact, str(tmp_path / "absent.jsonl")), "absent.jsonl")
    assert answers(clean_predict(artifact, stdin='{"wind": 3}\n\n'))[0]["prediction"] is not None
    manifest_path = artifact / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "library": {**manifest["library"], "platform": "linux-riscv64"}}))
    one_line_error(clean_predict(artifact, stdin='{"wind": 3}\n'), "built for linux-riscv64", "--rebuild")
    manifest_path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "format"}))
    one_line_error(clean_predict(artifact, stdin='{"wind": 3}\n'), "is not a mlops_assets.edge/1 manifest")
    manifest_path.write_text(json.dumps(manifest))
    library = artifact / "model.so"
    tampered = library.with_name("model.so.tampered")
    tampered.write_bytes(library.read_bytes() + b"\0")
    os.replace(tampered, library)  # a new file: the export's check mapped the old one into this process
    one_line_error(clean_predict(artifact, stdin='{"wind": 3}\n'), "does not match the manifest")
