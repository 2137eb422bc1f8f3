"""Sites' rows as analysis tables (:class:`SiteTable`): the shipped TCGA-BRCA regions and
hospitals' own files checked against their schema.

The data layer reads and checks the files; this module only wraps the checked rows with the
names of their survival roles, since ``stats`` sits above ``data`` in the layer contract.
Identifiers (the TCGA barcode) never enter an analysis table.
"""

from __future__ import annotations

from pathlib import Path

from fedcare.data.schema import TabularSchema, ValidationIssue
from fedcare.data.survival_table import AnalysisRows, load_analysis_rows
from fedcare.data.tcga_brca import EVENT, FOLDER, SITES, TIME, Split, tcga_brca_table
from fedcare.stats.protocol import SiteTable


def tcga_brca_site_tables(split: Split = "all") -> dict[str, SiteTable]:
    """One :class:`SiteTable` per region (FLamby order) with the 39 raw features, ``E`` and
    ``T`` as float columns, of the rows in ``split`` (train, test or all)."""
    table = tcga_brca_table()
    columns = [*table.features, EVENT, TIME]
    return {
        site: SiteTable(
            site=site,
            frame=table.rows(site, split)[columns].astype(float).reset_index(drop=True),
            time=TIME,
            event=EVENT,
            source=f"{FOLDER}/brca.csv",
        )
        for site in SITES
    }


def as_site_table(rows: AnalysisRows) -> SiteTable:
    """A checked site file's rows (:func:`load_analysis_rows`) as an analysis table."""
    return SiteTable(
        site=rows.site,
        frame=rows.frame,
        time=rows.time,
        event=rows.event,
        entry=rows.entry,
        source=rows.source,
    )


def user_site_table(
    schema: TabularSchema | Path | str, site: str, path: Path | str
) -> tuple[SiteTable, list[ValidationIssue]]:
    """A hospital's own file, checked against ``schema`` (every error raised at once), as an
    analysis table, with the warnings the site should show (e.g. every row censored)."""
    rows = load_analysis_rows(schema, site, Path(path))
    return as_site_table(rows), rows.warnings
