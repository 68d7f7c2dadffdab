"""mlops_assets: the MLOps lifecycle as one Dagster asset graph."""

from mlops_assets.definitions import defs

__all__ = ["defs"]
