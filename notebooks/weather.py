# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Weather: explore the feature repository, try a variant, hand it to the pipeline
#
# Everything here comes from the project file (`MLOPS_PROJECT`, default `weather`) and the stores
# the pipeline uses for it: the lake's feature repository (materialize it first with
# `feature_repository_job`) and the pipeline's MLflow experiment. Every try is an MLflow run in
# that experiment tagged `mlops.exploration=true`, next to the pipeline's candidates; the winner's
# parameters go into the project file as `tuning.start_params`, a diff to review and commit.
#
# `MLOPS_NOTEBOOK_PERIODS=2012-01..2012-03` limits the examples to a period range (CI runs this
# notebook on three months); `MLOPS_STATE_DIR` and `MLOPS_MLFLOW_TRACKING_URI` point at other stores.

# %%
import io
import os

import matplotlib.pyplot as plt
import polars as pl
from IPython.display import Image, display

from mlops_assets import experimentation as ex
from mlops_assets.contract import PERIOD
from mlops_assets.lake import read_training_set
from mlops_assets.tracking import log_bytes
from mlops_assets.training.training_set import content_hash

os.environ.setdefault("MLOPS_PROJECT", "weather")
ws = ex.open_workspace()
spec = ws.project.spec
examples = ex.entity_frame(ws, ex.parse_period_range(os.environ.get("MLOPS_NOTEBOOK_PERIODS", "")))
examples.group_by("location", PERIOD).len().sort("location", PERIOD)

# %% [markdown]
# ## Point-in-time features for any entity frame
#
# An entity frame names the predictions to make: a location and the midnight to predict from.
# First only Seattle's days, then every example: the feature repository (the `daily_weather`
# view) answers with what was known at each midnight, so yesterday's record but never today's.

# %%
seattle = ex.training_frame(ws, examples.filter(pl.col("location") == "Seattle"))
display(seattle.select("day_start", "temp_max", "wx_temp_max_mean_7d", spec.label.name).head(5))
frame = ex.training_frame(ws, examples)
print(f"training frame {content_hash(frame)}, the pipeline's training set {read_training_set(ws.lake)[1]}")

# %% [markdown]
# ## Explore: the seasons, and how much yesterday tells about today

# %%
label = spec.label.name
daily = frame.sort("day_start")
figure, (season, persistence) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
for location, part in daily.partition_by("location", as_dict=True).items():
    season.plot(part["day_start"], part[label], label=location[0])
    persistence.scatter(part["wx_temp_max_mean_3d"], part[label], s=8, alpha=0.6, label=location[0])
season.set(title="Maximum temperature of the day (the label)", ylabel="°C")
season.tick_params(axis="x", labelrotation=30)
season.legend()
persistence.set(title="Mean of the last 3 days' maximum vs today's", xlabel="wx_temp_max_mean_3d (°C)",
                ylabel=f"{label} (°C)")
exploration_png = io.BytesIO()
figure.savefig(exploration_png, format="png")
plt.show()

# %%
(frame.group_by("location", PERIOD)
 .agg(pl.len().alias("days"), pl.col(label).mean().alias("mean_max"),
      (pl.col(label) - pl.col("temp_max")).abs().mean().alias("mae_of_yesterday"),
      pl.col("wet_day_share_7d").mean().alias("wet_day_share"))
 .sort("location", PERIOD))

# %% [markdown]
# ## Try a small, regularised model against the project file's parameters
#
# A few months of two stations are a few hundred rows: the default 50 rows per leaf leaves the
# trees almost no room. Compare tiny leaves with a stronger L2 penalty, on the test months' RMSE;
# both tries train exactly as the pipeline's first trial does.

# %%
runs = [ex.train_variant(ws, frame, "project-file"),
        ex.train_variant(ws, frame, "small-leaves", {"num_leaves": 7, "min_child_samples": 10,
                                                     "learning_rate": 0.1, "lambda_l2": 3.0})]
display(ex.compare(spec, runs))
residuals = ex.log_evaluation_plots(ws, frame, runs)
display(Image(residuals[1]))
log_bytes(runs[1].run_id, exploration_png.getvalue(), "plots/exploration.png")

# %% [markdown]
# ## Review and promote
#
# The MLflow experiment holds these tries beside the pipeline's candidates (tag
# `mlops.exploration`). The lower-RMSE parameters go into `tuning.start_params`; the diff below
# is what to review and commit in `projects/weather/project.yaml`.

# %%
best = ex.best_variant(spec, runs)
print(ex.promote_parameters(ws.project.path, best.params))
print(f"promoted {best.name}: test RMSE {best.test_metrics['rmse']:.2f} °C")
ex.experiment_runs(ws).select("run_name", "kind", "valid_rmse")
