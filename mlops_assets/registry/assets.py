"""Registry: every candidate becomes a version; blessing and infra validation gate the aliases."""

import dagster as dg

from mlops_assets.lake import EXPECTED, read_canary, read_record, write_record
from mlops_assets.registry import registry
from mlops_assets.registry.infra import expected_array, validate_serving
from mlops_assets.registry.model_card import model_card
from mlops_assets.resources import LakeResource, ProjectResource
from mlops_assets.tracking import MlflowResource, code_version, log_bytes

GROUP = "registry"
BLESSED = "challenger_is_blessed"
INFRA = "serving_infra_validation"


def version_tags(candidate: dict, evaluation: dict, run_id: str, project_name: str) -> dict[str, str]:
    """Provenance, the training window (the next evaluation compares this version only after it) and the verdict."""
    overall, baseline = evaluation["challenger"]["overall"], evaluation["baseline"]["overall"]
    return {
        "training_set_hash": candidate["training_set_hash"], "project": project_name,
        "project_hash": candidate.get("project_hash", ""), "problem": candidate.get("problem", ""),
        "train_window": candidate.get("train_window", ""), "validation_window": candidate.get("validation_window", ""),
        "blessed": str(evaluation["blessed"]).lower(),
        "blessing_reasons": "; ".join(evaluation["reasons"])[:4000] or "passed the floors, baseline and comparisons",
        "blessing_notes": "; ".join(evaluation.get("notes", []))[:4000],
        "dagster_run_id": run_id, "code_version": code_version(), "mlflow_run_id": candidate["run_id"],
        **{f"metric.{k}": f"{v:.6f}" for k, v in overall.items()},
        **{f"baseline.{k}": f"{v:.6f}" for k, v in baseline.items() if k != "rows"},
    }


@dg.asset(group_name=GROUP, deps=["model_evaluation"], kinds={"mlflow"},
          check_specs=[dg.AssetCheckSpec(BLESSED, asset="registered_model_version", blocking=True,
                                         description="Floors, beats the trivial baseline, worst slice, "
                                                     "no regression vs champion on unseen periods.")])
def registered_model_version(context: dg.AssetExecutionContext, lake: LakeResource, project: ProjectResource,
                             mlflow_tracking: MlflowResource) -> dg.MaterializeResult:
    """The candidate as a new registry version, tagged with data, metrics, verdict and provenance."""
    spec, store = project.get().spec, lake.get()
    candidate, evaluation = read_record(store, "candidate_model"), read_record(store, "model_evaluation")
    client = mlflow_tracking.client()
    tags = version_tags(candidate, evaluation, context.run.run_id, spec.name)
    version = registry.register_version(client, spec.model_name, candidate["model_uri"], candidate["run_id"],
                                        tags, description=f"{spec.description.strip()} Verdict: {tags['blessed']}.")
    card = model_card(spec, version, candidate, evaluation, tags["code_version"])
    log_bytes(candidate["run_id"], card, "model_card.md")
    write_record(store, "registered_model_version", {"name": spec.model_name, "version": version, **candidate})
    return dg.MaterializeResult(
        metadata={"model": spec.model_name, "version": version, "blessed": evaluation["blessed"],
                  "registry": dg.MetadataValue.url(mlflow_tracking.model_url(spec.model_name, version)),
                  "model_card": dg.MetadataValue.md(card)},
        check_results=[dg.AssetCheckResult(
            check_name=BLESSED, passed=bool(evaluation["blessed"]),
            description="; ".join(evaluation["reasons"]) or "blessed",
            metadata={"reasons": dg.MetadataValue.json(evaluation["reasons"])},
        )],
    )


@dg.asset_check(asset="registered_model_version", name=INFRA, blocking=True,
                description="Loads the version from the registry in a fresh process; canary predictions and latency.")
def serving_infra_validation(lake: LakeResource, project: ProjectResource,
                             mlflow_tracking: MlflowResource) -> dg.AssetCheckResult:
    spec, store = project.get().spec, lake.get()
    registered = read_record(store, "registered_model_version")
    canary = read_canary(store)
    expected = expected_array(canary.pop(EXPECTED))
    uri = f"models:/{registered['name']}/{registered['version']}"
    report = validate_serving(uri, canary, expected, mlflow_tracking.env(), spec.infra.latency_budget_ms,
                              spec.infra.timeout_seconds)
    client = mlflow_tracking.client()
    client.set_model_version_tag(registered["name"], registered["version"], "infra_valid", str(report.passed).lower())
    client.set_model_version_tag(registered["name"], registered["version"], "infra_reasons", "; ".join(report.reasons) or "ok")
    return dg.AssetCheckResult(passed=report.passed, description="; ".join(report.reasons) or f"{uri} serves identically",
                               metadata={**report.figures, "model_uri": uri})


@dg.asset(group_name=GROUP, deps=["registered_model_version"], kinds={"mlflow"})
def champion_model(context: dg.AssetExecutionContext, lake: LakeResource, project: ProjectResource,
                   mlflow_tracking: MlflowResource) -> dg.MaterializeResult:
    """Aliases after the gates: `challenger` on the blessed version, `champion` by the promotion policy."""
    spec, store = project.get().spec, lake.get()
    registered = read_record(store, "registered_model_version")
    name, version = registered["name"], registered["version"]
    client = mlflow_tracking.client()
    registry.assert_promotable(client, name, version)
    registry.move_alias(client, name, registry.CHALLENGER, version, "bless", "continuous_training_job",
                        "blessed and infra-validated", context.run.run_id)
    if spec.promotion == "auto":
        registry.promote(client, name, version, "promote", "continuous_training_job (policy: auto)",
                         "blessed and infra-validated", context.run.run_id)
        outcome = f"version {version} is the champion"
    else:
        outcome = f"version {version} awaits approval: run approve_model with version {version}"
    context.log.info(outcome)
    return champion_metadata(client, name, outcome, mlflow_tracking)


def champion_metadata(client, name: str, outcome: str, tracking: MlflowResource) -> dg.MaterializeResult:
    champion = registry.alias_version(client, name, registry.CHAMPION)
    return dg.MaterializeResult(metadata={
        "outcome": outcome, "champion_version": champion or "none",
        "challenger_version": registry.alias_version(client, name, registry.CHALLENGER) or "none",
        "alias_history": dg.MetadataValue.md(registry.history_markdown(registry.alias_history(client, name))),
        "registry": dg.MetadataValue.url(tracking.model_url(name, champion or "1")),
    })
