"""Progressive delivery replayed over real flights months with real models, A/B statistics and registry."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from mlflow import MlflowClient

from mlops_assets.backtest.assets import labelled_examples
from mlops_assets.batch_scoring.scoring import score
from mlops_assets.contract import PERIOD
from mlops_assets.features.repository import model_features
from mlops_assets.project.spec import RolloutSpec
from mlops_assets.registry import registry
from mlops_assets.rollout.policy import Step
from mlops_assets.rollout.registry_steps import SHARE_TAG, apply_step, current_share, start_rollout
from mlops_assets.rollout.replay import replay_rollout
from mlops_assets.training.tuning import train_candidate
from mlops_assets_tests.pipeline_env import PipelineEnv

SERVED = ["2013-05", "2013-06", "2013-07"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("rollout")
    env = PipelineEnv(root, root / "project.yaml", dg.DagsterInstance.ephemeral())
    env.write_project("flights")
    assert env.ingest("2013-01", "2013-07").success
    assert env.run("feature_repository_job").success
    loaded = env.resources["project"].get()
    frame = labelled_examples(env.resources["lake"].get(), loaded)
    fit, valid = frame.filter(pl_in(["2013-01", "2013-02", "2013-03"])), frame.filter(pl_in(["2013-04"]))
    good = train_candidate(fit, valid, loaded.spec, model_features(loaded.spec)).model
    weak = train_candidate(fit, valid, loaded.spec, ["distance"]).model
    return loaded.spec, frame, good, weak


def pl_in(periods: list[str]):
    import polars as pl

    return pl.col(PERIOD).is_in(periods)


def test_a_worse_challenger_is_rolled_back_before_half_the_traffic(models) -> None:
    spec, frame, good, weak = models
    steps = replay_rollout(spec, frame, SERVED, champion=good, challenger=weak, score=score)
    assert steps[-1].step.action == "rollback" and "regression at 95%" in steps[-1].step.reason
    assert max(s.share for s in steps) < 0.5 and steps[-1].challenger_rows >= spec.rollout.min_rows


def test_a_better_challenger_widens_step_by_step_to_all_traffic(models) -> None:
    spec, frame, good, weak = models
    steps = replay_rollout(spec, frame, SERVED, champion=weak, challenger=good, score=score)
    assert [(s.share, s.step.action) for s in steps] == [(0.05, "widen"), (0.25, "widen"), (0.5, "promote")]


def test_too_few_labelled_rows_hold_the_step(models) -> None:
    spec, frame, good, weak = models
    strict = spec.model_copy(update={"rollout": RolloutSpec(min_rows=1_000_000)})
    steps = replay_rollout(strict, frame, SERVED[:1], champion=good, challenger=weak, score=score)
    assert steps[0].step.action == "hold" and steps[0].step.share == 0.05


def test_every_step_is_recorded_in_the_registry_history(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m")
    for _ in range(2):
        version = client.create_model_version("m", str(tmp_path), tags={"blessed": "true", "infra_valid": "true"})
    registry.promote(client, "m", "1", "promote", "pipeline", "first")
    start_rollout(client, "m", version.version, 0.05)
    assert current_share(client, "m") == 0.05
    apply_step(client, "m", "2", Step("widen", 0.25, "no regression"))
    assert current_share(client, "m") == 0.25
    assert apply_step(client, "m", "2", Step("hold", 0.25, "too few rows")) is None
    apply_step(client, "m", "2", Step("promote", 1.0, "no regression at 50%"))
    assert registry.alias_version(client, "m", registry.CHAMPION) == "2" and current_share(client, "m") is None
    history = [(e["action"], e["alias"], e["actor"]) for e in registry.alias_history(client, "m")]
    assert history[-3:] == [("rollout_start", "challenger", "rollout controller"),
                            ("rollout_widen", "challenger", "rollout controller"),
                            ("rollout_promote", "champion", "rollout controller")]
    assert client.get_registered_model("m").tags.get(SHARE_TAG, "") == ""


def test_the_service_follows_the_share_in_the_registry_without_a_restart(tmp_path: Path, models) -> None:
    """The registry watcher (the service's poll loop) reads the rollout tag each poll; requests are split at it."""
    from mlops_assets.serving.experiment import choose_arm
    from mlops_assets.serving.metrics import Metrics
    from mlops_assets.serving.models import ModelSlot, RegistryWatcher

    spec = models[0]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(spec.model_name)
    slot = ModelSlot(spec.used_views)
    watcher = RegistryWatcher(client, spec, slot, Metrics(), ("champion", "challenger"), poll_seconds=60)
    watcher.refresh()
    assert slot.arms.rollout_share is None
    for share in (0.05, 0.25):
        client.set_registered_model_tag(spec.model_name, SHARE_TAG, f"{share:g}")
        watcher.refresh()
        assert slot.arms.rollout_share == share
        arms = [choose_arm("canary", slot.arms.rollout_share, f"request-{i}", "salt", True) for i in range(20_000)]
        assert abs(arms.count("challenger") / len(arms) - share) < 0.01
    client.set_registered_model_tag(spec.model_name, SHARE_TAG, "")
    watcher.refresh()
    assert slot.arms.rollout_share is None
