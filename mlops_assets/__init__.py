"""mlops_assets: the MLOps lifecycle as one Dagster asset graph, built from a project file.

Importing the package builds nothing: Dagster loads `mlops_assets.definitions`.
"""

import os

# LightGBM's OpenMP threads spin while they wait; on a shared machine that made training 2.4x
# slower (benchmarks/model_quality.py under load). Set before any OpenMP runtime loads; the
# user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
