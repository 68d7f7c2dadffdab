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
# # Flights: explore the feature repository, try a variant, hand it to the pipeline
#
# Everything here comes from the project file (`MLOPS_PROJECT`, default `flights`) and the stores
# the pipeline uses for it: the lake's feature repository (materialize it first with
# `feature_repository_job`) and the pipeline's MLflow experiment. Every try is an MLflow run in
# that experiment tagged `mlops.exploration=true`, next to the pipeline's candidates; the winner's
# parameters go into the project file as `tuning.start_params`, a diff to review and commit.
#
# `MLOPS_NOTEBOOK_PERIODS=2013-01..2013-03` limits the examples to a period range (CI runs this
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
from mlops_assets.training.training_set import content_hash, split_summary

os.environ.setdefault("MLOPS_PROJECT", "flights")
ws = ex.open_workspace()
spec = ws.project.spec
periods = ex.parse_period_range(os.environ.get("MLOPS_NOTEBOOK_PERIODS", ""))
print(f"project {spec.name} ({ws.project.path}), state {ws.lake.root}, MLflow {ws.tracking.tracking_uri}")

# %% [markdown]
# ## The training set of an entity frame, from the feature repository
#
# An entity frame is one row per prediction: the entity keys and the prediction time (here the
# project's labelled examples; any subset or hand-made frame with the same columns works). The
# feature repository adds every view's features exactly as known at each row's prediction time.

# %%
entities = ex.entity_frame(ws, periods)
frame = ex.training_frame(ws, entities)
pipeline_hash = read_training_set(ws.lake)[1]
print(f"{entities.height} examples, {frame.width} columns; splits {split_summary(frame)}")
print(f"same rows as the pipeline's training set {pipeline_hash}: {content_hash(frame) == pipeline_hash}")
frame.head()

# %% [markdown]
# ## Explore: when flights are late, and what the windowed features say

# %%
by_hour = (frame.group_by("origin", "sched_hour").agg(pl.col(spec.label.name).mean().alias("delayed_share"))
           .sort("sched_hour"))
missing = frame.select(pl.col(c).is_null().mean() for c in ["temp", "plane_age", "route_arr_delay_mean_7d",
                                                           "plane_last_dep_delay_12h", "dest_arr_delay_mean_6h"])
figure, (hours, nulls) = plt.subplots(1, 2, figsize=(12, 4), layout="constrained")
for origin, part in by_hour.partition_by("origin", as_dict=True).items():
    hours.plot(part["sched_hour"], part["delayed_share"], marker="o", label=origin[0])
hours.set(title="Share of flights delayed > 15 min by scheduled hour", xlabel="hour", ylabel="share")
hours.legend()
nulls.barh(missing.columns, missing.row(0))
nulls.set(title="Share of rows without the feature at prediction time", xlabel="share")
exploration_png = io.BytesIO()
figure.savefig(exploration_png, format="png")
plt.show()

# %%
(frame.with_columns(pl.col("route_delayed_share_28d").cut([0.1, 0.2, 0.3, 0.4]).alias("route_28d_band"))
 .group_by("route_28d_band", PERIOD).agg(pl.len().alias("rows"), pl.col(spec.label.name).mean().alias("delayed"))
 .sort("route_28d_band", PERIOD))

# %% [markdown]
# ## Try smaller trees against the project file's parameters
#
# Flights are many and noisy: do fewer leaves per tree, fed by a random 60% of the features,
# generalise better from one month to the next? Both tries train exactly as the pipeline's first
# trial does (early stopping on the validation month, the same fixed LightGBM parameters and
# features); the table ranks them by the project's metric (AUC) on the test periods.

# %%
tries = [ex.train_variant(ws, frame, "project-file"),
         ex.train_variant(ws, frame, "smaller-trees", {"num_leaves": 31, "learning_rate": 0.08,
                                                       "min_child_samples": 100, "feature_fraction": 0.6})]
display(ex.compare(spec, tries))
for roc in ex.log_evaluation_plots(ws, frame, tries):
    display(Image(roc))
log_bytes(tries[1].run_id, exploration_png.getvalue(), "plots/exploration.png")

# %% [markdown]
# ## Review next to the pipeline's candidates, then hand the winner over
#
# Exploration runs sit in the same MLflow experiment as the `continuous_training_job` candidates,
# on the same training-set hash. The winner's parameters become `tuning.start_params`, where the
# next tuning starts its search: review `git diff projects/flights/project.yaml` and commit it.

# %%
display(ex.experiment_runs(ws))
winner = ex.best_variant(spec, tries)
print(f"winner {winner.name}: test AUC {winner.test_metrics['auc']:.4f}")
print(ex.promote_parameters(ws.project.path, winner.params))
