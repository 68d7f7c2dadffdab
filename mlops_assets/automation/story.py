"""The unattended story on the embedded data, one period after another, with no manual step.

Each step is what happens in production by itself: a file lands, the landing sensor starts a
run, traffic is served (replayed), labels arrive, the monitors report, the retraining sensor
decides. Here the sensors are evaluated with Dagster's own API against the persistent instance
and their run requests executed in process, so the story runs without a daemon; under
`dagster dev` the same sensors tick by themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from mlops_assets.automation.sensors import monitor_retraining_sensor
from mlops_assets.monitoring.replay import replay_period
from mlops_assets.partitions import period_key
from mlops_assets.serving.config import ServingConfig

MONITORS = ("prediction_log", "ground_truth", "drift_report", "skew_report", "model_performance", "ab_test_report")


@dataclass
class Story:
    defs: dg.Definitions
    instance: dg.DagsterInstance
    serving: ServingConfig
    say: Callable[[str], None]
    cursors: dict[str, str | None] = field(default_factory=lambda: {"landing": None, "retrain": None})

    def _resources(self) -> dict:
        return self.defs.resources

    def _tick(self, sensor: dg.SensorDefinition, name: str) -> list[dg.RunRequest]:
        """One sensor evaluation, as the daemon's tick would do it; skip reasons are told."""
        context = dg.build_sensor_context(cursor=self.cursors[name], instance=self.instance, resources=self._resources())
        result = sensor(context)
        self.cursors[name] = result.cursor
        if result.skip_reason is not None:
            self.say(f"  {sensor.name}: {result.skip_reason.skip_message}")
        return list(result.run_requests or [])

    def _launch(self, job: str, request: dg.RunRequest, sensor: str) -> bool:
        """Run as the daemon would, tagged with sensor and run key so a daemon never repeats it."""
        tags = {**request.tags, "dagster/sensor_name": sensor,
                **({"dagster/run_key": request.run_key} if request.run_key else {}),
                **({"dagster/partition": request.partition_key} if request.partition_key else {})}
        run = self.defs.resolve_job_def(job).execute_in_process(
            instance=self.instance, tags=tags, raise_on_error=False, asset_selection=request.asset_selection)
        self.say(f"  {job} {request.partition_key or ''}: {'succeeded' if run.success else 'failed'} (run {run.run_id})")
        return run.success

    def period(self, period: str, land: Callable[[str], None]) -> None:
        """Deliver one period and let the platform react to it."""
        self.say(f"{period}: file lands")
        land(period)
        landing = self.defs.resolve_sensor_def("landing_folder_sensor")
        for request in self._tick(landing, "landing"):
            if not self._launch("landed_period_job", request, landing.name):
                return
        lake, project = self._resources()["lake"].get(), self._resources()["project"].get()
        key = period_key(period, project.spec.granularity)
        replayed = replay_period(lake, project, key, self.serving)
        self.say(f"  served {replayed.requests} predictions in {replayed.slices} time slices with {sum(replayed.events.values())} "
                 "pushed events; labels land; monitors run")
        monitors = self.defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=self.instance, partition_key=key, raise_on_error=False,
            asset_selection=[dg.AssetKey(a) for a in MONITORS])
        self.say(f"  monitoring: {'succeeded' if monitors.success else 'failed'}")
        for request in self._tick(monitor_retraining_sensor, "retrain"):
            self.say(f"  monitors call for retraining: {request.tags.get('mlops/reason', '')[:120]}")
            self._launch("continuous_training_job", request, monitor_retraining_sensor.name)
