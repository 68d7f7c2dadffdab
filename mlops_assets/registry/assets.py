"""Registry: every candidate becomes a version; blessing and infra validation gate the aliases."""

import dagster as dg
from mlflow.exceptions import MlflowException

from mlops_assets.alerts import AlertSink
from mlops_assets.lake import EXPECTED, read_canary, read_record, write_record
from mlops_assets.registry import registry, review
from mlops_assets.registry.infra import expected_array, validate_serving
from mlops_assets.registry.model_card import model_card
from mlops_assets.resources import InfraProbeResource, LakeResource, ProjectResource
from mlops_assets.rollout.registry_steps import start_rollout
from mlops_assets.tracking import MlflowResource, code_version, log_bytes

GROUP = "registry"
BLESSED = "challenger_is_blessed"
INFRA = "serving_infra_validation"
HELD_TAG = "held_by"  # the holds (shifted data) a version's approval releases


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
    same_data = versions_trained_on(client, spec.model_name, candidate["training_set_hash"],
                                    candidate.get("project_hash", ""))
    if same_data:
        return unchanged_training_set(store, spec.model_name, same_data[-1], candidate, mlflow_tracking)
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


def versions_trained_on(client, name: str, training_set_hash: str, project_hash: str) -> list[str]:
    """Registered versions trained on the same data under the same project file (oldest first)."""
    try:
        found = client.search_model_versions(f"name='{name}' and tags.training_set_hash='{training_set_hash}' "
                                             f"and tags.project_hash='{project_hash}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    return sorted((str(v.version) for v in found), key=int)


def unchanged_training_set(store, name: str, version: str, candidate: dict,
                           tracking: MlflowResource) -> dg.MaterializeResult:
    """The same data as a registered version: no new version; promotion has nothing new to judge."""
    tags = tracking.client().get_model_version(name, version).tags
    outcome = (f"training set {candidate['training_set_hash'][:12]} and project file are unchanged since version "
               f"{version}: no new version registered")
    write_record(store, "registered_model_version", {**candidate, "name": name, "version": version, "reused": True})
    return dg.MaterializeResult(
        metadata={"model": name, "version": version, "new_version": False, "outcome": outcome,
                  "registry": dg.MetadataValue.url(tracking.model_url(name, version))},
        check_results=[dg.AssetCheckResult(
            check_name=BLESSED, passed=tags.get("blessed") == "true",
            description=f"{outcome}; its verdict stands: {tags.get('blessing_reasons', 'none recorded')}")],
    )


@dg.asset_check(asset="registered_model_version", name=INFRA, blocking=True,
                description="Loads the version from the registry in a fresh process; canary predictions and latency.")
def serving_infra_validation(lake: LakeResource, project: ProjectResource, mlflow_tracking: MlflowResource,
                             infra_probe: InfraProbeResource) -> dg.AssetCheckResult:
    spec, store = project.get().spec, lake.get()
    registered = read_record(store, "registered_model_version")
    if registered.get("reused"):
        tags = mlflow_tracking.client().get_model_version(registered["name"], registered["version"]).tags
        return dg.AssetCheckResult(passed=tags.get("infra_valid") == "true",
                                   description=f"version {registered['version']} was infra-validated when it was "
                                               f"registered: {tags.get('infra_reasons', 'no verdict recorded')}")
    canary = read_canary(store)
    expected = expected_array(canary.pop(EXPECTED))
    uri = f"models:/{registered['name']}/{registered['version']}"
    report = validate_serving(uri, canary, expected, mlflow_tracking.env(), spec.infra.latency_budget_ms,
                              spec.infra.timeout_seconds, infra_probe.take())
    client = mlflow_tracking.client()
    client.set_model_version_tag(registered["name"], registered["version"], "infra_valid", str(report.passed).lower())
    client.set_model_version_tag(registered["name"], registered["version"], "infra_reasons", "; ".join(report.reasons) or "ok")
    verdict = "; ".join(report.reasons) or f"{uri} serves identically"
    return dg.AssetCheckResult(passed=report.passed, description="; ".join([verdict, *report.warnings]),
                               metadata={**report.figures, "model_uri": uri, "load_warnings": len(report.warnings)})


@dg.asset(group_name=GROUP, deps=["registered_model_version"], kinds={"mlflow"})
def champion_model(context: dg.AssetExecutionContext, lake: LakeResource, project: ProjectResource,
                   mlflow_tracking: MlflowResource, alerts: AlertSink) -> dg.MaterializeResult:
    """Aliases after the gates: `challenger` on the blessed version, `champion` by the promotion policy."""
    spec, store = project.get().spec, lake.get()
    registered = read_record(store, "registered_model_version")
    name, version = registered["name"], registered["version"]
    client = mlflow_tracking.client()
    if registered.get("reused"):
        outcome = f"training set unchanged since version {version}: aliases left as they are"
        context.log.info(outcome)
        return champion_metadata(client, name, outcome, mlflow_tracking)
    registry.assert_promotable(client, name, version)
    registry.move_alias(client, name, registry.CHALLENGER, version, "bless", "continuous_training_job",
                        "blessed and infra-validated", context.run.run_id)
    holds = store.deliveries.open_holds()
    if holds:
        client.set_model_version_tag(name, version, HELD_TAG, ",".join(str(h.id) for h in holds))
        why = "; ".join(f"{h.source} {h.period}: {h.reason}" for h in holds)
        outcome = (f"version {version} awaits approval: run approve_model with version {version}. "
                   f"Held because the data it learned from looks shifted ({why[:1500]})")
        alerts.send("WARN", "registry:champion_model", outcome, {"version": version, "holds": [h.id for h in holds]})
    elif spec.promotion == "rollout" and registry.alias_version(client, name, registry.CHAMPION) is not None:
        review.assert_no_changes_requested(client, name, version)
        start_rollout(client, name, version, spec.rollout.steps[0], context.run.run_id)
        outcome = (f"version {version} serves {spec.rollout.steps[0]:.0%} of traffic as challenger; rollout_step "
                   "widens, rolls back or promotes it as the labels of each period arrive")
        alerts.send("WARN", "rollout", outcome, {"version": version, "share": spec.rollout.steps[0]})
    elif spec.promotion in ("auto", "rollout"):
        review.assert_no_changes_requested(client, name, version)
        registry.promote(client, name, version, "promote", "continuous_training_job (policy: auto)",
                         "blessed and infra-validated", context.run.run_id)
        outcome = f"version {version} is the champion"
    else:
        outcome = f"version {version} awaits approval: run approve_model with version {version}"
    context.log.info(outcome)
    result = champion_metadata(client, name, outcome, mlflow_tracking)
    return dg.MaterializeResult(metadata={
        **(result.metadata or {}),
        "holds": dg.MetadataValue.md("\n\n".join(h.report for h in holds) or "no open holds")})


def champion_metadata(client, name: str, outcome: str, tracking: MlflowResource) -> dg.MaterializeResult:
    champion = registry.alias_version(client, name, registry.CHAMPION)
    return dg.MaterializeResult(metadata={
        "outcome": outcome, "champion_version": champion or "none",
        "challenger_version": registry.alias_version(client, name, registry.CHALLENGER) or "none",
        "alias_history": dg.MetadataValue.md(registry.history_markdown(registry.alias_history(client, name))),
        "registry": dg.MetadataValue.url(tracking.model_url(name, champion or "1")),
    })
