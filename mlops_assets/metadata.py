"""Metadata a person wants to see in the UI for any frame: size, schema, nulls, a preview."""

from __future__ import annotations

import dagster as dg
import polars as pl


def frame_metadata(df: pl.DataFrame, preview_rows: int = 5) -> dict[str, dg.MetadataValue | int]:
    nulls = df.null_count().row(0)
    shares = {c: round(n / df.height, 4) if df.height else 0.0 for c, n in zip(df.columns, nulls, strict=False)}
    schema = dg.TableSchema(
        columns=[dg.TableColumn(name=c, type=str(t)) for c, t in df.schema.items()]
    )
    with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_dataframe_shape=True, tbl_rows=preview_rows,
                   tbl_cols=-1, tbl_hide_column_data_types=True):
        preview = str(df.head(preview_rows))
    return {
        "dagster/row_count": df.height,
        "columns": df.width,
        "dagster/column_schema": schema,
        "null_share": dg.MetadataValue.json({c: s for c, s in shares.items() if s > 0}),
        "preview": dg.MetadataValue.md(preview),
    }
