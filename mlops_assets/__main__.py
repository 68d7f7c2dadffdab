"""`python -m mlops_assets`: the `mlops-assets` command."""

from mlops_assets.cli import entry

entry()
