"""Asset definitions, grouped by the data they hold."""

import dagster as dg

from dagster_defs.assets.catalog import catalog, experiment
from dagster_defs.assets.illum import illumination
from dagster_defs.assets.qc import QC_ASSETS, QC_CHECKS
from dagster_defs.assets.results import plate_profiles, screen_hits
from dagster_defs.assets.summary import gene_summary
from dagster_defs.assets.wells import make_well_products


def all_assets() -> list[dg.AssetsDefinition]:
    """Every asset, the plate x well products built from the registry as it is now."""
    return [
        catalog,
        experiment,
        illumination,
        make_well_products(),
        *QC_ASSETS,
        gene_summary,
        plate_profiles,
        screen_hits,
    ]


def all_asset_checks() -> list[dg.AssetChecksDefinition]:
    """The asset checks defined apart from their assets (the QC gates)."""
    return list(QC_CHECKS)


__all__ = [
    "all_asset_checks",
    "all_assets",
    "catalog",
    "experiment",
    "gene_summary",
    "illumination",
    "plate_profiles",
    "screen_hits",
]
