"""Sites' rows as analysis tables (:class:`SiteTable`): the shipped TCGA-BRCA regions.

The data layer reads and checks the files; this module only wraps the checked rows with the
names of their survival roles, since ``stats`` sits above ``data`` in the layer contract.
Identifiers (the TCGA barcode) never enter an analysis table.
"""

from __future__ import annotations

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
