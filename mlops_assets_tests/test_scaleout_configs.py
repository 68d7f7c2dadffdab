"""The scale-out examples in deploy/ are loaded by the code that will read them, not by eye.

Kubernetes: dagster.yaml goes through Dagster's instance loading (schema, then each configurable
class built from its own schema) with a dummy kubeconfig and a loopback PostgreSQL URL that is
never dialled; run_config.yaml is validated against every job's config schema with
MLOPS_EXECUTOR=k8s; the run pod manifest is rendered from the launcher and run_tags.yaml; the Helm
values are key-checked (no helm binary here). MLflow: deploy/mlflow/serve.py starts a real server
(SQLite, or PostgreSQL when MLOPS_TEST_POSTGRES_URL is set) that the project's MlflowResource uses.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import mlflow
import pytest
import yaml
from dagster._config import process_config, resolve_to_config_type
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.ref import InstanceRef
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.job import construct_dagster_k8s_job, get_user_defined_k8s_config
from dagster_postgres import DagsterPostgresStorage

from mlops_assets.cli import DAGSTER_YAML
from mlops_assets.definitions import EXECUTORS, build_definitions
from mlops_assets.registry.registry import CHAMPION, alias_version, move_alias, register_version
from mlops_assets.settings import PROJECT_ROOT, executor_name
from mlops_assets.tracking import MlflowResource, log_bytes

K8S_DIR = PROJECT_ROOT / "deploy" / "kubernetes"
MLFLOW_DIR = PROJECT_ROOT / "deploy" / "mlflow"
DUMMY_DAGSTER_URL = "postgresql+psycopg2://mlops@127.0.0.1:1/mlops_dagster"
RUN_CONFIG_ENV = {"MLOPS_MLFLOW_TRACKING_URI": "http://mlflow.mlops.svc:5000", "MLOPS_MLFLOW_UI_URL": "https://mlflow.example.org"}
# The manual registry jobs also need their op config at launch; run_config.yaml is merged with it.
LAUNCH_OPS = {
    "approve_model": {"approve_version": {"config": {"version": "3", "reason": "review", "approver": "ops"}}},
    "rollback_champion": {"rollback_to_previous": {"config": {"reason": "incident", "requested_by": "ops"}}},
    "request_changes": {"request_version_changes": {"config": {"version": "3", "reason": "slice too weak",
                                                               "reviewer": "ops"}}},
}
KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: nowhere, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: nobody, user: {token: not-a-token}}]
contexts: [{name: nowhere, context: {cluster: nowhere, user: nobody}}]
current-context: nowhere
"""


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _project_run_queue() -> dict[str, Any]:
    """The queue limits of the project's generated dagster.yaml: the one source the examples follow."""
    return yaml.safe_load(DAGSTER_YAML)["run_queue"]


def _instance_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   edit: dict[str, Any] | None = None) -> Path:
    """deploy/kubernetes/dagster.yaml in a temp DAGSTER_HOME, pointed at a kubeconfig outside a cluster.

    Only `load_incluster_config`/`kubeconfig_file` change (outside a pod there is no service-account
    token); `edit` merges extra top-level sections in, for the typo checks.
    """
    config = _load(K8S_DIR / "dagster.yaml")
    launcher = config["run_launcher"]["config"]
    assert launcher["load_incluster_config"] is True, "the cluster config must use the pod's service account"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(KUBECONFIG)
    launcher.update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))
    for key, value in (edit or {}).items():
        config[key] = value
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    monkeypatch.setenv("MLOPS_DAGSTER_POSTGRES_URL", DUMMY_DAGSTER_URL)
    return home


def test_k8s_instance_config_loads_as_dagster_reads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Schema first (InstanceRef.from_dir), then each configurable class built from its own schema."""
    ref = InstanceRef.from_dir(str(_instance_home(tmp_path, monkeypatch)))

    storage = ref.storage_data
    assert storage is not None and (storage.module_name, storage.class_name) == ("dagster_postgres",
                                                                                  "DagsterPostgresStorage")
    resolved = process_config(resolve_to_config_type(DagsterPostgresStorage.config_type()), storage.config_dict)
    assert resolved.success, resolved.errors
    assert resolved.value["postgres_url"] == DUMMY_DAGSTER_URL

    coordinator = ref.run_coordinator
    assert isinstance(coordinator, dg.QueuedRunCoordinator)
    queue = _project_run_queue()
    assert coordinator.get_run_queue_config().max_concurrent_runs == queue["max_concurrent_runs"] == 4
    assert coordinator.inst_data.config_dict["tag_concurrency_limits"] == queue["tag_concurrency_limits"]

    launcher = ref.run_launcher
    assert isinstance(launcher, K8sRunLauncher)
    assert launcher.env_secrets == ["mlops-assets-env"] and launcher.env_config_maps == ["mlops-assets-config"]
    assert launcher.image_pull_policy == "IfNotPresent" and launcher.job_namespace == "mlops"
    assert launcher.resources["requests"] == {"cpu": "500m", "memory": "1Gi"}
    assert ref.local_artifact_storage.base_dir == "/mlops-state/dagster_storage"


def test_k8s_run_pod_manifest_from_launcher_and_tags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Job the launcher would submit for a training run: tag resources win, volume and env wired."""
    launcher = InstanceRef.from_dir(str(_instance_home(tmp_path, monkeypatch))).run_launcher
    assert isinstance(launcher, K8sRunLauncher)
    tags = {key: json.dumps(value) for key, value in _load(K8S_DIR / "run_tags.yaml")["continuous_training_job"].items()}
    run = dg.DagsterRun(job_name="continuous_training_job", run_id="0123abcd-0000-4000-8000-000000000000", tags=tags)
    context = launcher.get_container_context_for_run(run)
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(job_image="ghcr.io/your-org/mlops-assets:test", run_launcher=launcher),
        args=["dagster", "api", "execute_run"], job_name="dagster-run-0123abcd", pod_name="dagster-run-0123abcd",
        component="run_worker", user_defined_k8s_config=context.run_k8s_config,
    )
    pod = job.spec.template.spec
    container = pod.containers[0]
    assert container.resources.requests == {"cpu": "1", "memory": "2Gi"}
    assert container.resources.limits == {"cpu": "2", "memory": "4Gi"}
    assert pod.node_selector == {"mlops/pool": "training"}
    assert [m.mount_path for m in container.volume_mounts] == ["/mlops-state"]
    assert {(e.name, e.value) for e in container.env} >= {("DAGSTER_HOME", "/opt/dagster/dagster_home")}
    assert any(v.persistent_volume_claim and v.persistent_volume_claim.claim_name == "mlops-state" for v in pod.volumes)
    sources = {(s.secret_ref or s.config_map_ref).name for s in container.env_from}
    assert sources == {"mlops-assets-env", "mlops-assets-config"}
    assert container.image_pull_policy == "IfNotPresent" and pod.service_account_name == "dagster"


@dg.op
def _noop() -> None:
    """A step for a run record; never executed."""


@dg.job
def _noop_job() -> None:
    _noop()


def test_k8s_postgres_instance_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a real server the whole instance is built: the storages create their tables and keep a run."""
    server = os.environ.get("MLOPS_TEST_POSTGRES_URL")
    if not server:
        pytest.skip("MLOPS_TEST_POSTGRES_URL not set (.ci/run sets it)")
    home = _instance_home(tmp_path, monkeypatch)
    with _postgres_databases(server, ["dagster"]) as (url,):
        monkeypatch.setenv("MLOPS_DAGSTER_POSTGRES_URL", url.replace("postgresql://", "postgresql+psycopg2://", 1))
        instance = dg.DagsterInstance.from_config(str(home))
        try:
            assert isinstance(instance.run_launcher, K8sRunLauncher)
            assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
            run = instance.create_run_for_job(_noop_job, tags={"mlops/stage": "training"})
            stored = instance.get_run_by_id(run.run_id)
            assert stored is not None and stored.tags["mlops/stage"] == "training"
            assert instance.run_coordinator.get_run_queue_config().max_concurrent_runs == 4
        finally:
            instance.dispose()


@pytest.mark.parametrize(("edit", "where"), [
    ({"run_cordinator": {"module": "dagster", "class": "QueuedRunCoordinator"}}, "instance"),
    ({"run_coordinator": {"module": "dagster", "class": "QueuedRunCoordinator",
                          "config": {"max_concurent_runs": 4}}}, "run_coordinator"),
    ({"storage": {"postgres": {"postgres_uri": {"env": "MLOPS_DAGSTER_POSTGRES_URL"}}}}, "storage"),
])
def test_k8s_instance_config_typos_are_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                edit: dict[str, Any], where: str) -> None:
    home = _instance_home(tmp_path, monkeypatch, edit)
    with pytest.raises(DagsterInvalidConfigError):
        ref = InstanceRef.from_dir(str(home))
        if where == "run_coordinator":
            ref.run_coordinator  # noqa: B018  (building it validates its own schema)
        if where == "storage":
            ref.storage  # noqa: B018


def test_k8s_launcher_config_typo_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _load(K8S_DIR / "dagster.yaml")["run_launcher"]
    config["config"]["env_secret"] = config["config"].pop("env_secrets")
    ref = InstanceRef.from_dir(str(_instance_home(tmp_path, monkeypatch, {"run_launcher": config})))
    with pytest.raises(DagsterInvalidConfigError, match="env_secret"):
        ref.run_launcher  # noqa: B018


def _k8s_jobs(monkeypatch: pytest.MonkeyPatch) -> list[dg.JobDefinition]:
    monkeypatch.setenv("MLOPS_EXECUTOR", "k8s")
    for name, value in RUN_CONFIG_ENV.items():
        monkeypatch.setenv(name, value)
    defs = build_definitions()
    return [defs.resolve_job_def(job.name) for job in defs.resolve_all_job_defs()
            if not job.name.startswith("__ASSET_JOB")]


def test_run_config_fits_every_job_on_the_k8s_executor(monkeypatch: pytest.MonkeyPatch) -> None:
    run_config = _load(K8S_DIR / "run_config.yaml")
    jobs = _k8s_jobs(monkeypatch)
    assert {j.name for j in jobs} >= {"continuous_training_job", "landed_period_job", "ingestion_job", "approve_model"}
    step_names: set[str] = set()
    for job in jobs:
        assert job.executor_def is k8s_job_executor, job.name
        resolved = dg.validate_run_config(job, {**run_config, **({"ops": LAUNCH_OPS[job.name]} if job.name in LAUNCH_OPS else {})})
        assert resolved["execution"]["k8s"]["max_concurrent"] == 4
        if "mlflow_tracking" in resolved["resources"]:
            assert resolved["resources"]["mlflow_tracking"]["config"]["tracking_uri"] == RUN_CONFIG_ENV["MLOPS_MLFLOW_TRACKING_URI"]
        step_names |= {node.name for node in job.graph.nodes}
    per_step = run_config["execution"]["config"]["per_step_k8s_config"]
    assert set(per_step) <= step_names, f"per_step_k8s_config names no step: {set(per_step) - step_names}"


def test_run_config_typo_and_wrong_executor_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    run_config = _load(K8S_DIR / "run_config.yaml")
    job = next(j for j in _k8s_jobs(monkeypatch) if j.name == "continuous_training_job")
    typo = copy.deepcopy(run_config)
    typo["execution"]["config"]["per_step_k8s_confg"] = typo["execution"]["config"].pop("per_step_k8s_config")
    with pytest.raises(DagsterInvalidConfigError, match="per_step_k8s_confg"):
        dg.validate_run_config(job, typo)
    monkeypatch.setenv("MLOPS_EXECUTOR", "in_process")
    in_process = build_definitions().resolve_job_def("continuous_training_job")
    with pytest.raises(DagsterInvalidConfigError):
        dg.validate_run_config(in_process, run_config)


def test_run_tags_are_valid_k8s_config_and_typos_fail() -> None:
    for job, tags in _load(K8S_DIR / "run_tags.yaml").items():
        parsed = get_user_defined_k8s_config({k: json.dumps(v) for k, v in tags.items()})
        assert parsed.container_config["resources"]["requests"], job
    with pytest.raises(DagsterInvalidConfigError):
        get_user_defined_k8s_config({"dagster-k8s/config": json.dumps({"container_confg": {}})})


def test_k8s_executor_selection_and_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLOPS_EXECUTOR", "kubernetes")
    with pytest.raises(ValueError, match="k8s"):
        executor_name()
    monkeypatch.setitem(sys.modules, "dagster_k8s", None)  # as if the extra were not installed
    with pytest.raises(ImportError, match=r"mlops_assets\[k8s\]"):
        EXECUTORS["k8s"]()


def test_helm_values_deploy_the_mlops_assets_code_location() -> None:
    values = _load(K8S_DIR / "values.yaml")
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert values["dagster-user-deployments"]["enabled"] is True
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "mlops_assets.definitions"]
    pyproject = (PROJECT_ROOT / "pyproject.toml").read_text()
    assert 'module_name = "mlops_assets.definitions"' in pyproject  # the module `dagster dev` loads too
    assert deployment["image"]["repository"] == "ghcr.io/your-org/mlops-assets"
    assert "postgresqlPassword" not in values["postgresql"] or not values["postgresql"]["postgresqlPassword"]
    assert values["generatePostgresqlPasswordSecret"] is False and values["global"]["postgresqlSecretName"]
    assert values["postgresql"]["enabled"] is False

    instance = _load(K8S_DIR / "dagster.yaml")
    launcher, k8s = instance["run_launcher"]["config"], values["runLauncher"]["config"]["k8sRunLauncher"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert [s["name"] for s in k8s["envSecrets"]] == launcher["env_secrets"]
    assert [c["name"] for c in k8s["envConfigMaps"]] == launcher["env_config_maps"]
    assert [c["name"] for c in deployment["envConfigMaps"]] == launcher["env_config_maps"]
    assert k8s["resources"] == launcher["resources"] and k8s["imagePullPolicy"] == launcher["image_pull_policy"]
    assert [m["mountPath"] for m in k8s["volumeMounts"]] == [m["mount_path"] for m in launcher["volume_mounts"]]
    assert values["additionalInstanceConfig"]["local_artifact_storage"] == instance["local_artifact_storage"]

    coordinator = values["dagsterDaemon"]["runCoordinator"]
    queue = _project_run_queue()
    assert coordinator["enabled"] is True and coordinator["type"] == "QueuedRunCoordinator"
    assert coordinator["config"]["queuedRunCoordinator"]["maxConcurrentRuns"] == queue["max_concurrent_runs"]
    assert coordinator["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"] == queue["tag_concurrency_limits"]


def test_dockerfile_installs_the_cluster_extras() -> None:
    """Not built here (no docker engine): the image must carry the k8s/postgres extras and the data."""
    lines = (K8S_DIR / "Dockerfile").read_text().splitlines()
    assert any("pip install" in line and "[postgres,k8s]" in line for line in lines)
    copied = [line.split()[1] for line in lines if line.startswith("COPY ") and "--from" not in line]
    assert all((PROJECT_ROOT / path).exists() for path in copied), copied


# --- MLflow tracking server ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _execute_on(server: str, statement: str) -> None:
    import psycopg2

    conn = psycopg2.connect(f"{server.rstrip('/')}/postgres")
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(statement)
    conn.close()


@contextmanager
def _postgres_databases(server: str, purposes: list[str]) -> Iterator[list[str]]:
    """Throwaway databases on the test server (unique names), dropped on exit; yields their URLs."""
    names = [f"mlops_scaleout_{purpose}_{secrets.token_hex(4)}" for purpose in purposes]
    try:
        for name in names:
            _execute_on(server, f'CREATE DATABASE "{name}"')
        yield [f"{server.rstrip('/')}/{name}" for name in names]
    finally:
        for name in names:
            _execute_on(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _server_env(tmp_path: Path, backend: str, auth_db: str, password: str) -> dict[str, str]:
    return {**os.environ, "MLOPS_MLFLOW_BACKEND_URL": backend, "MLOPS_MLFLOW_AUTH_DB_URL": auth_db,
            "MLOPS_MLFLOW_ARTIFACTS": str(tmp_path / "artifacts"), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
            "MLOPS_MLFLOW_SERVER_DIR": str(tmp_path / "server_state")}


@pytest.fixture()
def mlflow_server(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """serve.py on a free loopback port; yields (url, admin password, server state dir); always stopped."""
    password = "T3st-" + secrets.token_urlsafe(18)
    server = os.environ.get("MLOPS_TEST_POSTGRES_URL")
    with ExitStack() as cleanup:
        if server:
            backend, auth_db = cleanup.enter_context(_postgres_databases(server, ["mlflow", "auth"]))
        else:
            backend, auth_db = f"sqlite:///{tmp_path / 'mlflow.db'}", f"sqlite:///{tmp_path / 'auth.db'}"
        log = cleanup.enter_context((tmp_path / "server.log").open("w"))
        port = _free_port()
        proc = subprocess.Popen([sys.executable, str(MLFLOW_DIR / "serve.py"), "--port", str(port), "--workers", "1"],
                                env=_server_env(tmp_path, backend, auth_db, password), cwd=tmp_path,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        cleanup.callback(_stop_group, proc)  # runs first: the server stops before its databases go
        yield _wait_until_up(proc, f"http://127.0.0.1:{port}", tmp_path / "server.log"), password, tmp_path / "server_state"


def _wait_until_up(proc: subprocess.Popen, url: str, log: Path) -> str:
    """Poll /health (exempt from auth and host checks); fail with the server log if it dies."""
    deadline = time.monotonic() + 45
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "mlflow server did not come up in 45 s"
        time.sleep(0.25)


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the server's own process group (mlflow server + its uvicorn worker), nothing else."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_mlflow_server_refuses_to_start_without_admin_password(tmp_path: Path) -> None:
    env = _server_env(tmp_path, f"sqlite:///{tmp_path / 'm.db'}", f"sqlite:///{tmp_path / 'a.db'}", "")
    out = subprocess.run([sys.executable, str(MLFLOW_DIR / "serve.py"), "--port", str(_free_port())],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "MLFLOW_AUTH_ADMIN_PASSWORD" in out.stderr
    assert not (tmp_path / "server_state").exists()


def test_mlflow_server_with_basic_auth_serves_the_project(mlflow_server: tuple[str, str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    url, password, server_state = mlflow_server
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert httpx.get(search).status_code == 401
    assert httpx.get(search, auth=("admin", password)).status_code == 200
    assert httpx.get(search, auth=("admin", "wrong-" + password)).status_code == 401
    rebound = httpx.get(search, auth=("admin", password), headers={"Host": "attacker.example.com"})
    assert rebound.status_code == 403

    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(name, raising=False)  # restored after the test; configure() sets them
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        # The resource creates its experiment itself and leaves the artifact root to the server.
        resource = MlflowResource(tracking_uri=url, registry_uri=url, experiment="scaleout_check")
        client = resource.client()
        experiment = client.get_experiment_by_name("scaleout_check")
        assert experiment.artifact_location.startswith("mlflow-artifacts:/")
        run = client.create_run(experiment.experiment_id)
        client.log_metric(run.info.run_id, "roc_auc", 0.71)
        log_bytes(run.info.run_id, "flavors: {}\n", "model/MLmodel")
        client.set_terminated(run.info.run_id)
        version = register_version(client, "scaleout_model", f"runs:/{run.info.run_id}/model", run.info.run_id,
                                   tags={"check": "scaleout"}, description="registered through the auth server")
        move_alias(client, "scaleout_model", CHAMPION, version, action="promote", actor="test", reason="scale-out check")
        assert alias_version(client, "scaleout_model", CHAMPION) == version == "1"
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    stored = list((tmp_path / "artifacts").rglob("MLmodel"))
    assert len(stored) == 1, "the artifact went through the server's proxy into its artifacts destination"

    ini = server_state / "basic_auth.ini"
    assert oct(ini.stat().st_mode & 0o777) == "0o600"
    written = [p for p in server_state.rglob("*") if p.is_file()]
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            cwd=PROJECT_ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    repository = [PROJECT_ROOT / p for p in listed if p and (PROJECT_ROOT / p).is_file()]
    leaked = [p for p in [*written, *repository] if password.encode() in p.read_bytes()]
    assert leaked == [], f"admin password written to {leaked}"
