"""Curation: verified traffic becomes a versioned, leak-free dataset.

`pipeline.curate` runs the stages, declared once in `stages` (name, label, SQL); `config` holds what it takes and returns; `dedup`, `pii_scan`
and `split` are its compiled steps; `output` writes and registers the version.
"""
