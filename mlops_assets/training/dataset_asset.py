"""The `training_set` asset: labelled examples with exact point-in-time features, by content hash."""


import dagster as dg
import polars as pl

from mlops_assets.features.assets import load_prepared
from mlops_assets.lake import write_training_set
from mlops_assets.metadata import frame_metadata
from mlops_assets.project.spec import Project
from mlops_assets.resources import LakeResource, ProjectResource
from mlops_assets.training.training_set import build_training_set, content_hash, split_summary

GROUP = "training"


def training_set_asset(project: Project) -> dg.AssetsDefinition:
    deps = [project.examples.source, *project.feature_views]

    @dg.asset(name="training_set", group_name=GROUP, deps=deps, kinds={"polars", "parquet"})
    def training_set(context: dg.AssetExecutionContext, lake: LakeResource, project: ProjectResource) -> dg.MaterializeResult:
        """Labelled examples with every view's features as of each prediction time, split by period."""
        store, loaded = lake.get(), project.get()
        spec = loaded.spec
        sources = load_prepared(store, loaded, [spec.examples.source])
        views = {v: store.read_view(v) for v in spec.feature_views}
        frame = build_training_set(loaded, sources, views)
        digest = content_hash(frame)
        path = write_training_set(store, frame, digest)
        label = frame[spec.label.name]
        summary = (label.value_counts().sort("count", descending=True).head(10).to_dicts()
                   if spec.problem == "multiclass" else float(label.cast(pl.Float64).mean()))
        context.log.info(f"training set {digest}: {frame.height} rows, splits {split_summary(frame)}")
        return dg.MaterializeResult(metadata={
            **frame_metadata(frame), "content_hash": digest, "path": dg.MetadataValue.path(str(path)),
            "splits": dg.MetadataValue.json(split_summary(frame)),
            "label": dg.MetadataValue.json({"name": spec.label.name, "problem": spec.problem, "summary": summary}),
        }, data_version=dg.DataVersion(digest))

    return training_set
