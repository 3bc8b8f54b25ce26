"""Numbered schema migrations, applied in order when the database is opened.

Append a new `(version, name, sql)` entry to `MIGRATIONS`; never edit one that has shipped.
Each applied version is recorded in `schema_migrations`. The `interactions` and `feedback` tables
hold the rows declared in `flywheel.store.rows`, column for column: a migration that changes one
changes that module too (tests/test_store.py compares the migrated tables with it).
"""

LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (  -- which versions this database has applied
    version    INTEGER PRIMARY KEY,
    name       VARCHAR NOT NULL,
    applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp
)"""

MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "api keys, interactions, feedback",
        """
        CREATE TABLE api_keys (
            key_hash   VARCHAR PRIMARY KEY,  -- sha256 of the key; the key itself is never stored
            project    VARCHAR NOT NULL,
            prefix     VARCHAR NOT NULL,     -- first characters, to tell keys apart in listings
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            revoked_at TIMESTAMP
        );
        CREATE TABLE interactions (
            project           VARCHAR NOT NULL,
            id                VARCHAR NOT NULL,  -- client idempotency key, or generated
            task              VARCHAR NOT NULL,
            ts                TIMESTAMP NOT NULL,
            model             VARCHAR NOT NULL,
            request           JSON NOT NULL,     -- {"messages": [...]} or {"prompt": ...}, plus params
            response          VARCHAR NOT NULL,
            latency_ms        DOUBLE,
            prompt_tokens     INTEGER,
            completion_tokens INTEGER,
            cost_usd          DOUBLE,
            status            VARCHAR NOT NULL,  -- ok | error
            user_id           VARCHAR,
            session_id        VARCHAR,
            tags              VARCHAR[],
            metadata          JSON,
            source            VARCHAR NOT NULL,  -- ingest | gateway
            pii_redacted      INTEGER NOT NULL,  -- how many values redaction replaced
            received_at       TIMESTAMP NOT NULL,
            PRIMARY KEY (project, id)
        );
        CREATE TABLE feedback (
            project        VARCHAR NOT NULL,
            id             VARCHAR NOT NULL,
            interaction_id VARCHAR NOT NULL,
            kind           VARCHAR NOT NULL,     -- thumbs | rating | label | correction
            value          JSON NOT NULL,
            comment        VARCHAR,
            user_id        VARCHAR,
            ts             TIMESTAMP NOT NULL,
            pii_redacted   INTEGER NOT NULL,
            received_at    TIMESTAMP NOT NULL,
            PRIMARY KEY (project, id)
        );
        """,
    ),
    (
        2,
        "datasets",
        """
        CREATE TABLE datasets (
            id          VARCHAR PRIMARY KEY,  -- content hash of the curated rows and the config
            project     VARCHAR NOT NULL,
            task        VARCHAR NOT NULL,
            created_at  TIMESTAMP NOT NULL DEFAULT current_timestamp,
            path        VARCHAR NOT NULL,     -- folder with the Hugging Face `datasets` copy and Parquet
            config      JSON NOT NULL,        -- the curation config and selection window
            query       VARCHAR NOT NULL,     -- the SQL that selected the interactions
            counts      JSON NOT NULL,        -- rows kept / dropped at every stage
            parent_id   VARCHAR               -- the previous version for the same task, if any
        );
        CREATE TABLE dataset_interactions (  -- lineage: which interactions went into a version
            dataset_id     VARCHAR NOT NULL,
            project        VARCHAR NOT NULL,
            interaction_id VARCHAR NOT NULL,
            split          VARCHAR NOT NULL   -- train | eval
        );
        """,
    ),
    (
        3,
        "models",
        """
        CREATE TABLE models (
            id           VARCHAR PRIMARY KEY,
            project      VARCHAR NOT NULL,
            task         VARCHAR NOT NULL,
            created_at   TIMESTAMP NOT NULL DEFAULT current_timestamp,
            base_model   VARCHAR NOT NULL,
            method       VARCHAR NOT NULL,    -- sft | distill | gkd | dpo
            dataset_id   VARCHAR,
            adapter_path VARCHAR,
            merged_path  VARCHAR,
            recipe       JSON NOT NULL,
            recipe_hash  VARCHAR NOT NULL,
            metrics      JSON,
            status       VARCHAR NOT NULL,    -- training | ready | failed
            error        VARCHAR
        );
        """,
    ),
    (
        5,
        "deployments",
        """
        CREATE TABLE deployments (          -- who serves what: one row per (project, task, alias)
            project    VARCHAR NOT NULL,
            task       VARCHAR NOT NULL,
            alias      VARCHAR NOT NULL,     -- production | canary
            model      VARCHAR NOT NULL,     -- a gateway model id: a route name or an adapter name
            share      DOUBLE NOT NULL DEFAULT 1.0,  -- canary: the fraction of users it serves
            updated_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            PRIMARY KEY (project, task, alias)
        );
        CREATE TABLE deployment_events (    -- append-only history of promotions and rollbacks
            ts             TIMESTAMP NOT NULL DEFAULT current_timestamp,
            project        VARCHAR NOT NULL,
            task           VARCHAR NOT NULL,
            alias          VARCHAR NOT NULL,
            action         VARCHAR NOT NULL,  -- promote | rollback | remove
            model          VARCHAR,
            previous_model VARCHAR,
            reason         VARCHAR NOT NULL,
            evidence       JSON
        );
        """,
    ),
    (
        4,
        "eval runs and results",
        """
        CREATE TABLE eval_runs (
            id                VARCHAR PRIMARY KEY,
            project           VARCHAR NOT NULL,
            task              VARCHAR NOT NULL,
            benchmark_id      VARCHAR NOT NULL,     -- the spec's name
            benchmark_version VARCHAR NOT NULL,     -- content hash of the spec and its examples
            model             VARCHAR NOT NULL,
            sampler           VARCHAR NOT NULL,     -- endpoint | local | function, with its config
            status            VARCHAR NOT NULL,     -- running | done | failed
            error             VARCHAR,
            started_at        TIMESTAMP NOT NULL DEFAULT current_timestamp,
            finished_at       TIMESTAMP,
            metrics           JSON,                 -- quality: aggregate per metric
            latency           JSON,                 -- p50/p95 ms, tokens/s
            cost              JSON,                 -- total and per 1,000 requests, USD
            n_examples        INTEGER               -- examples in the benchmark (a done run has them all)
        );
        CREATE TABLE eval_results (
            run_id            VARCHAR NOT NULL,
            example_id        VARCHAR NOT NULL,
            input             JSON NOT NULL,        -- the prompt messages
            expected          VARCHAR,
            output            VARCHAR,
            scores            JSON,                 -- per metric
            latency_ms        DOUBLE,
            completion_tokens INTEGER,
            error             VARCHAR,
            prompt_tokens     INTEGER,
            cost_usd          DOUBLE,
            tool_calls        JSON                  -- OpenAI-format tool calls of the output, if any
        );
        """,
    ),
    (
        6,
        "api key roles",
        # Keys made before roles existed become `app` keys: an upgrade takes adapter management
        # and /metrics away from them until the operator makes an admin key (least privilege).
        # Two statements, the same table as the one `ADD COLUMN … NOT NULL DEFAULT 'app'` that
        # shipped first: DuckDB 1.4 refuses a constraint inside ADD COLUMN, and a database that
        # applied the one statement already holds exactly this column.
        """
        ALTER TABLE api_keys ADD COLUMN role VARCHAR DEFAULT 'app';  -- app | admin (flywheel.registry.keys)
        ALTER TABLE api_keys ALTER COLUMN role SET NOT NULL;
        """,
    ),
    (
        7,
        "interaction tool calls",
        # An answer may be a tool call: its OpenAI `tool_calls` beside the text (the tools offered
        # are in `request`). Added last, as `flywheel.store.rows.InteractionRow` declares it.
        """
        ALTER TABLE interactions ADD COLUMN response_tool_calls JSON;
        """,
    ),
]
