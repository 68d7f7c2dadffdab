"""mlops_assets: the MLOps lifecycle as one Dagster asset graph, built from a project file.

Importing the package builds nothing: Dagster loads `mlops_assets.definitions`.
"""
