"""A curated dataset version on disk and in the store: content id, files, report, registration.

The id is a hash of the config and of every output row, so curating the same data with the same
config twice gives the same id, and the second run writes nothing. Files are written to a
temporary folder and renamed into place, then the `datasets` record and its lineage
(`dataset_interactions`) are inserted in one transaction: a crash leaves either nothing
registered or a complete version, never a record pointing at half a folder.

Layout of `<home>/datasets/<task>/<id>/`:
    sft/            DatasetDict(train, eval) with `messages` (chat, assistant target last; tool calls
                    and results as text in `flywheel.tools`' format) and `tools` (the tools offered,
                    JSON text, null when none)
    preference/     DatasetDict(train) with `prompt`, `chosen`, `rejected` (when pairs exist)
    parquet/        the same tables as Parquet: sft-train, sft-eval, preference-train
    report.md       the counts at every stage
    curation.json   id, project, task and counts, for readers without the database
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from flywheel import store
from flywheel.curate.stages import STAGES

# The SFT rows as written: the hash, the files and the lineage all read this one view.
_SFT_VIEW = """
CREATE OR REPLACE TEMP VIEW sft AS
SELECT split, id AS interaction_id,
    list_append(prompt, {'role': 'assistant', 'content': target}) AS messages,
    CASE WHEN corrected THEN 'correction' ELSE 'response' END AS target_source, label, tools
FROM rows WHERE dropped IS NULL
"""
_PAIRS = "SELECT prompt, chosen, rejected, chosen_id, rejected_id FROM pairs"


def output_tables(con) -> dict[str, pa.Table]:
    """The version's rows as they are written: `sft-train`, `sft-eval`, `preference-train`."""
    con.execute(_SFT_VIEW)
    tables = {f"sft-{split}": con.sql("SELECT * EXCLUDE (split) FROM sft WHERE split = $s ORDER BY interaction_id",
                                      params={"s": split}).to_arrow_table() for split in ("train", "eval")}  # fmt: skip
    tables["preference-train"] = con.sql(f"{_PAIRS} ORDER BY chosen_id, rejected_id").to_arrow_table()
    return tables


def content_id(tables: dict[str, pa.Table], header: dict[str, Any]) -> str:
    """`ds-` + 16 hex of sha256 of the config and of the logical content of every output table."""
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for name, table in tables.items():
        parts: dict[str, Any] = {}
        for field, column in zip(table.schema, table.columns, strict=True):
            for chunk in column.chunks:
                if len(chunk):  # an empty chunk, or none at all: the same nothing
                    _feed(chunk, f"{name}.{field.name}", parts)
        digest.update(f"|{name}|{table.schema.to_string(show_schema_metadata=False)}|".encode())
        digest.update(json.dumps({key: h.hexdigest() for key, h in parts.items()}, sort_keys=True).encode())
    return "ds-" + digest.hexdigest()[:16]


def _feed(array: pa.Array, path: str, parts: dict[str, Any]) -> None:
    """Hash the values of `array` (validity, lengths, bytes), never its buffer layout, which
    depends on how the rows came out of DuckDB. One running hash per leaf and kind, fed chunk
    after chunk, so the digest is the same however the column is chunked."""
    import pyarrow.compute as pc

    def update(kind: str, data) -> None:
        parts.setdefault(f"{path}:{kind}", hashlib.sha256()).update(data)

    update("valid", array.is_valid().to_numpy(zero_copy_only=False).tobytes())
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        update("lengths", pc.fill_null(array.value_lengths(), 0).to_numpy().astype("<i8").tobytes())
        _feed(array.flatten(), f"{path}[]", parts)
    elif pa.types.is_struct(array.type):
        for field, child in zip(array.type, array.flatten(), strict=True):
            _feed(child, f"{path}.{field.name}", parts)
    elif pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        if array.null_count:  # a null slot may still own bytes
            array = pc.fill_null(array, "")
        width = 8 if pa.types.is_large_string(array.type) else 4
        offsets = np.frombuffer(array.buffers()[1], dtype=f"<i{width}", count=len(array) + 1, offset=array.offset * width)
        update("lengths", np.diff(offsets).astype("<i8").tobytes())
        if len(array):
            update("bytes", memoryview(array.buffers()[2])[offsets[0]:offsets[-1]])
    else:
        raise TypeError(f"{path}: no content hash for Arrow type {array.type}")


def version_exists(settings, version_id: str) -> dict[str, Any] | None:
    """The registered record of `version_id`, or None."""
    with store.connect(settings.db_path, read_only=True) as db:
        rows = db.execute("SELECT path, counts, parent_id FROM datasets WHERE id = ?", [version_id]).fetchall()
    if not rows:
        return None
    row = rows[0]
    return {"path": row[0], "counts": json.loads(row[1]), "parent_id": row[2]}


def report_markdown(version_id: str, project: str, task: str, counts: dict[str, int], parent_id: str | None) -> str:
    """The curation report: a Markdown table of the rows dropped and remaining at every stage."""
    lines = [f"# Curation report: `{task}`", "",
             f"Project `{project}` · version `{version_id}` · parent `{parent_id or 'none'}`", "",
             "| stage | dropped | remaining |", "|---|---:|---:|",
             f"| selected interactions | | {counts['selected']:,} |"]  # fmt: skip
    remaining = counts["selected"]
    for stage in STAGES:
        dropped = counts.get(stage.name, 0)
        remaining -= dropped
        lines.append(f"| {stage.label} | {dropped:,} | {remaining:,} |")
    lines += [f"| **kept for SFT** | | **{counts['kept']:,}** |", "",
              "| split | examples |", "|---|---:|",
              f"| train | {counts.get('train', 0):,} |", f"| eval | {counts.get('eval', 0):,} |", "",
              f"Split units (sessions / dedup groups / prompts, never across sides): {counts.get('split_units', 0):,}, "
              f"of which {counts.get('split_carried', 0):,} kept the side an earlier version gave them. "
              f"Targets taken from corrections: {counts.get('corrections', 0):,}.", "",
              f"Preference pairs: {counts.get('preference_pairs', 0):,} "
              f"(dropped: {counts.get('preference_eval_overlap', 0):,} with an eval prompt; "
              f"{counts.get('preference_pii', 0):,} candidate records held PII).", ""]  # fmt: skip
    return "\n".join(lines)


def _nonempty(table):
    if table.num_rows or table.to_batches():
        return table
    return pa.Table.from_batches([pa.RecordBatch.from_pylist([], schema=table.schema)])


def write_version(tables: dict[str, pa.Table], path: Path, version_id: str, project: str, task: str,
                  counts: dict[str, int]) -> None:
    """Write the version's files to a temporary folder and rename it to `path`."""
    import datasets
    import pyarrow.parquet as pq

    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    (tmp / "parquet").mkdir(parents=True)
    pairs = tables["preference-train"]

    def write_parquet() -> None:
        for name, table in tables.items():
            if table.num_rows or name.startswith("sft"):  # (no preference file without pairs)
                pq.write_table(table, tmp / "parquet" / f"{name}.parquet")

    try:
        # The Parquet files are written on a second thread while `datasets` writes its own
        # (Arrow releases the GIL): ~0.6 s of 2 s at 1M rows.
        with ThreadPoolExecutor(1) as pool:
            parquet = pool.submit(write_parquet)
            # (a fingerprint given: else `datasets` hashes every row with dill, half the write time)
            sft = {split: datasets.Dataset(_nonempty(tables[f"sft-{split}"]), fingerprint=f"{version_id}-sft-{split}")
                   for split in ("train", "eval")}  # fmt: skip
            # An empty split saved with zero shards cannot be loaded back (datasets 5): give it one.
            shards = {split: 1 for split, ds in sft.items() if ds.num_rows == 0}
            datasets.DatasetDict(sft).save_to_disk(str(tmp / "sft"), num_shards=shards or None)
            if pairs.num_rows:
                datasets.DatasetDict({"train": datasets.Dataset(pairs, fingerprint=f"{version_id}-preference")}).save_to_disk(str(tmp / "preference"))
            parquet.result()
        (tmp / "report.md").write_text(report_markdown(version_id, project, task, counts, None))
        manifest = {"id": version_id, "project": project, "task": task, "counts": counts}
        (tmp / "curation.json").write_text(json.dumps(manifest, indent=2))
        if path.exists():  # left by a run that crashed before registering: never a registered version
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def register(con, settings, *, version_id: str, project: str, task: str, path: Path, config: dict,
             query: str, counts: dict[str, int]) -> tuple[bool, str | None]:
    """Insert the `datasets` record and its lineage in one transaction; (created, parent id)."""
    lineage = con.sql("""
        SELECT $id AS dataset_id, $project AS project, interaction_id, split FROM sft
        UNION ALL
        SELECT DISTINCT $id, $project, unnest([chosen_id, rejected_id]), 'preference' FROM pairs
    """, params={"id": version_id, "project": project}).to_arrow_table()  # fmt: skip
    with store.connect(settings.db_path) as db:
        db.execute("BEGIN")
        try:
            if db.execute("SELECT 1 FROM datasets WHERE id = ?", [version_id]).fetchall():
                db.execute("ROLLBACK")  # a concurrent run registered the same content first
                parent = db.execute("SELECT parent_id FROM datasets WHERE id = ?", [version_id]).fetchall()[0][0]
                return False, parent
            rows = db.execute("SELECT id FROM datasets WHERE project = ? AND task = ? ORDER BY created_at DESC, id DESC LIMIT 1",
                              [project, task]).fetchall()  # fmt: skip
            parent = rows[0][0] if rows else None
            db.execute("INSERT INTO datasets (id, project, task, path, config, query, counts, parent_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       [version_id, project, task, str(path.resolve()), json.dumps(config), query.strip(), json.dumps(counts), parent])  # fmt: skip
            db.register("_lineage", lineage)
            db.execute("INSERT INTO dataset_interactions (dataset_id, project, interaction_id, split) "
                       "SELECT dataset_id, project, interaction_id, split FROM _lineage")  # fmt: skip
            db.execute("COMMIT")
        except BaseException:
            store.rollback(db)
            raise
    # The report on disk was written before the parent was known; keep it in step with the record.
    (path / "report.md").write_text(report_markdown(version_id, project, task, counts, parent))
    return True, parent
