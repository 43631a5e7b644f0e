"""Asset definitions, grouped by the data they hold."""

from dagster_defs.assets.catalog import catalog, experiment
from dagster_defs.assets.illum import illumination
from dagster_defs.assets.summary import gene_summary
from dagster_defs.assets.wells import well_products

ALL_ASSETS = [catalog, experiment, illumination, well_products, gene_summary]

__all__ = ["ALL_ASSETS", "catalog", "experiment", "gene_summary", "illumination", "well_products"]
