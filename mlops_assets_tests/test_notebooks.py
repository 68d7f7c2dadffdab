"""The experimentation notebooks, executed in a real kernel against real pipeline state, so they never rot.

Per example project: the real ingestion and feature repository jobs on three months, then the
notebook (jupytext percent file -> notebook in memory -> nbclient) on that state, then what it
left behind: exploration runs in the pipeline's experiment, plots, and the promoted project file.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass

import dagster as dg
import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

from mlops_assets import experimentation as ex
from mlops_assets.evaluation.metrics import higher_is_better
from mlops_assets.lake import Lake, read_training_set
from mlops_assets.project.loading import load_project
from mlops_assets.project.spec import Project
from mlops_assets.settings import DATA_DIR, PROJECT_ROOT
from mlops_assets_tests.pipeline_env import PipelineEnv

CASES = {
    "flights": ("2013-01..2013-03", {"split.test": 1, "split.min_rows": 300, "gate.min_slice_rows": 300}),
    "weather": ("2012-01..2012-03", {"split.test": 1, "split.validation": 1, "split.min_rows": 25,
                                     "gate.min_slice_rows": 20}),
}


@dataclass(frozen=True)
class Executed:
    name: str
    env: PipelineEnv
    before_text: str
    before: Project
    notebook: nbformat.NotebookNode


def execute(env: PipelineEnv, name: str, periods: str) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel that sees only this platform's stores; a failing cell raises."""
    notebook = jupytext.read(PROJECT_ROOT / "notebooks" / f"{name}.py")
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_"))}
    kernel_env = {**inherited, "MLOPS_PROJECT": str(env.project_file), "MLOPS_STATE_DIR": str(env.root / "state"),
                  "MLOPS_MLFLOW_TRACKING_URI": f"sqlite:///{env.root / 'mlflow.db'}", "MLOPS_NOTEBOOK_PERIODS": periods}
    client = NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(env.root)}})
    client.execute(env=kernel_env)
    return notebook


@pytest.fixture(scope="module", params=sorted(CASES))
def executed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Executed:
    name = request.param
    periods, overrides = CASES[name]
    root = tmp_path_factory.mktemp(f"notebook-{name}")
    env = PipelineEnv(root, root / "project.yaml", dg.DagsterInstance.ephemeral())
    env.write_project(name, **overrides)
    first, last = periods.split("..")
    assert env.ingest(first, last).success
    assert env.run("feature_repository_job").success
    before_text = env.project_file.read_text()
    return Executed(name, env, before_text, load_project(env.project_file).spec, execute(env, name, periods))


def exploration_runs(executed: Executed) -> list:
    tracking = executed.env.resources["mlflow_tracking"]
    runs = tracking.client().search_runs([tracking.configure()])
    return [r for r in runs if r.data.tags.get(ex.EXPLORATION_TAG) == "true"]


def test_the_notebooks_tries_are_exploration_runs_on_the_pipelines_training_set(executed: Executed) -> None:
    runs = exploration_runs(executed)
    assert sorted(r.data.tags["exploration_name"] for r in runs)[0] == "project-file" and len(runs) == 2
    lake = Lake(root=executed.env.root / "state", data_dir=DATA_DIR)
    digest = read_training_set(lake)[1]
    client = executed.env.resources["mlflow_tracking"].client()
    for run in runs:
        assert run.data.tags["project"] == executed.name and run.data.tags["training_set_hash"] == digest
        assert f"test_{executed.before.primary_metric}" in run.data.metrics
        assert "plots/evaluation.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert any("plots/exploration.png" in {a.path for a in client.list_artifacts(r.info.run_id, "plots")}
               for r in runs)


def test_the_notebook_shows_its_plots_and_tables(executed: Executed) -> None:
    outputs = [o for cell in executed.notebook.cells for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type in ("display_data", "execute_result") and "image/png" in o.data]
    assert len(images) >= 2
    tables = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("exploration-project-file" in t for t in tables)


def test_the_winner_is_promoted_and_nothing_else_changes(executed: Executed) -> None:
    metric = f"test_{executed.before.primary_metric}"
    ranked = sorted(exploration_runs(executed), key=lambda r: r.data.metrics[metric],
                    reverse=higher_is_better(executed.before.primary_metric))
    after = load_project(executed.env.project_file).spec
    assert after.tuning.start_params == {k: pytest.approx(float(v)) for k, v in ranked[0].data.params.items()
                                         if k != "best_iteration"}
    assert after.model_copy(update={"tuning": executed.before.tuning}) == executed.before
    assert after.tuning.model_copy(update={"start_params": None}) == executed.before.tuning
    diff = list(difflib.ndiff(executed.before_text.splitlines(), executed.env.project_file.read_text().splitlines()))
    changed = [line for line in diff if line[:1] in "+-"]
    assert len(changed) == 1 and changed[0].startswith("+   start_params: {learning_rate: ")
