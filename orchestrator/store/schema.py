"""Versioned schema migrations, applied in order at start; the version lives in the DB."""

from __future__ import annotations

__all__ = ["MIGRATIONS", "Migration"]

# A step is SQL in SQLite's types, which each backend's ``Dialect.ddl`` translates; where
# the backends need different statements, it is the SQL for each, by dialect name.
Migration = str | dict[str, str]

_DEVICE_GROUPS = """
    CREATE TABLE device_groups (
        group_name TEXT NOT NULL,
        device_id TEXT NOT NULL,
        PRIMARY KEY (group_name, device_id)
    ) WITHOUT ROWID;
    CREATE INDEX device_groups_device ON device_groups (device_id);
    INSERT INTO device_groups (group_name, device_id)
        SELECT g.value, devices.device_id FROM devices, {registry}
        UNION SELECT g.value, devices.device_id FROM devices, {operator};
"""

MIGRATIONS: tuple[Migration, ...] = (
    # 1: the initial schema
    """
    CREATE TABLE devices (
        device_id TEXT PRIMARY KEY,
        model TEXT NOT NULL DEFAULT '',
        reported_groups TEXT NOT NULL DEFAULT '[]',
        groups_ TEXT NOT NULL DEFAULT '[]',
        tags TEXT NOT NULL DEFAULT '{}',
        online INTEGER NOT NULL DEFAULT 0,
        presence_at REAL NOT NULL DEFAULT 0,
        last_seen REAL NOT NULL DEFAULT 0,
        first_seen REAL NOT NULL DEFAULT 0,
        current_version TEXT NOT NULL DEFAULT '',
        installed TEXT NOT NULL DEFAULT '[]',
        client_version TEXT NOT NULL DEFAULT '',
        free_bytes INTEGER
    );
    CREATE TABLE releases (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        models TEXT NOT NULL,
        handler TEXT NOT NULL,
        handler_args TEXT NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        deleted_at REAL
    );
    CREATE UNIQUE INDEX releases_name_version ON releases (name, version)
        WHERE deleted_at IS NULL;
    CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY,
        release_id INTEGER NOT NULL REFERENCES releases (id),
        target TEXT NOT NULL,
        spec TEXT NOT NULL,
        state TEXT NOT NULL,
        phase INTEGER NOT NULL DEFAULT 0,
        phase_started_at REAL,
        gate_met_at REAL,
        reason TEXT NOT NULL DEFAULT '',
        failure_base INTEGER NOT NULL DEFAULT 0,
        attempt_base INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        created_by TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE rollout_targets (
        rollout_id INTEGER NOT NULL REFERENCES rollouts (id),
        device_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        phase INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        delivered INTEGER NOT NULL DEFAULT 0,
        notice_id TEXT,
        notified_at REAL,
        updated_at REAL NOT NULL DEFAULT 0,
        last_counter INTEGER NOT NULL DEFAULT 0,
        reason TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (rollout_id, device_id)
    ) WITHOUT ROWID;
    CREATE INDEX rollout_targets_state ON rollout_targets (rollout_id, state, position);
    CREATE INDEX rollout_targets_device ON rollout_targets (device_id, state);
    CREATE TABLE notices (
        notice_id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        rollout_id INTEGER NOT NULL,
        kind TEXT NOT NULL,
        scope TEXT NOT NULL,
        seq INTEGER NOT NULL,
        topic TEXT NOT NULL,
        issued_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        envelope BLOB NOT NULL,
        published INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE INDEX notices_unpublished ON notices (published) WHERE published = 0;
    CREATE TABLE scope_seq (scope TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE reports (
        device_id TEXT NOT NULL,
        counter INTEGER NOT NULL,
        notice_id TEXT NOT NULL,
        rollout_id TEXT NOT NULL,
        state TEXT NOT NULL,
        current_version TEXT NOT NULL,
        reported_at INTEGER NOT NULL,
        received_at REAL NOT NULL,
        error_code TEXT,
        error_message TEXT,
        accepted INTEGER NOT NULL,
        PRIMARY KEY (device_id, counter)
    ) WITHOUT ROWID;
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE TABLE tokens (
        name TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        sha256 TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    """,
    # 2: what a device says about itself is a claim; targeting reads only the registry
    # (provisioning) and the operator. The old model column was filled from inventory, so it
    # becomes the claim; ``model`` is now the operator's.
    """
    ALTER TABLE devices RENAME COLUMN reported_groups TO claimed_groups;
    ALTER TABLE devices ADD COLUMN claimed_model TEXT NOT NULL DEFAULT '';
    UPDATE devices SET claimed_model = model, model = '';
    ALTER TABLE devices ADD COLUMN registry_groups TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE devices ADD COLUMN registry_model TEXT NOT NULL DEFAULT '';
    ALTER TABLE devices ADD COLUMN in_registry INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: devices flagged by ingestion (rate limit, size caps)
    """
    ALTER TABLE devices ADD COLUMN limited INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN limited_at REAL;
    ALTER TABLE devices ADD COLUMN limited_reason TEXT NOT NULL DEFAULT '';
    """,
    # 4: replicas on one database: who drives which rollout (a lease that expires), and the
    # replicas alive (each renews its row; a live replica's id is not taken twice), and which
    # replica stored each update notice
    """
    CREATE TABLE rollout_leases (
        rollout_id INTEGER PRIMARY KEY,
        holder TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    CREATE TABLE replicas (
        replica_id TEXT PRIMARY KEY,
        host TEXT NOT NULL,
        pid INTEGER NOT NULL,
        started_at REAL NOT NULL,
        seen_at REAL NOT NULL
    );
    ALTER TABLE notices ADD COLUMN sent_by TEXT NOT NULL DEFAULT '';
    """,
    # 5: four-eyes approval: '' (not required), 'pending', 'approved' or 'rejected', and
    # who decided when
    """
    ALTER TABLE rollouts ADD COLUMN approval TEXT NOT NULL DEFAULT '';
    ALTER TABLE rollouts ADD COLUMN decided_by TEXT NOT NULL DEFAULT '';
    ALTER TABLE rollouts ADD COLUMN decided_at REAL;
    """,
    # 6: security releases (issue 17): the update class and the advisory the notices carry;
    # a release's SBOM, stored as uploaded, with the components it lists
    """
    ALTER TABLE releases ADD COLUMN update_class TEXT NOT NULL DEFAULT 'feature';
    ALTER TABLE releases ADD COLUMN advisory TEXT;
    CREATE TABLE release_sboms (
        release_id INTEGER PRIMARY KEY REFERENCES releases (id),
        format TEXT NOT NULL,
        spec_version TEXT NOT NULL,
        components TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # 7: bytes each device actually downloaded for its notice (deltas, issue 15); NULL
    # until its ``downloaded`` report says, and for devices too old to say; and the
    # reports' detail (a delta that fell back, why a download waits)
    """
    ALTER TABLE rollout_targets ADD COLUMN downloaded_bytes INTEGER;
    ALTER TABLE reports ADD COLUMN detail TEXT;
    ALTER TABLE reports ADD COLUMN downloaded INTEGER;
    """,
    # 8: whole-system releases (issue 18): a system release's components in installation
    # order (JSON: name, handler, sha256, size; NULL for a single payload), and each
    # target's per-component states as its latest report gave them (JSON; NULL if none)
    """
    ALTER TABLE releases ADD COLUMN components TEXT;
    ALTER TABLE rollout_targets ADD COLUMN components TEXT;
    """,
    # 9: an application's hold on a device (issue 18): on a ``deferred`` report, who held
    # the update and why, and until when (Unix seconds); NULL otherwise. A release's caps on
    # holds (JSON {max_each_s, max_total_s}; 0: urgent), NULL: the devices' own bounds
    """
    ALTER TABLE reports ADD COLUMN hold_reason TEXT;
    ALTER TABLE reports ADD COLUMN hold_until INTEGER;
    ALTER TABLE releases ADD COLUMN holds TEXT;
    """,
    # 10: the evidence of a failure (issue 18): what the failing step printed, cleaned and
    # bounded at ingestion (orchestrator/evidence.py), one row per failed or rolled_back
    # report that carried it; pruned with its report, and to retention.outputs_per_device
    """
    CREATE TABLE report_outputs (
        device_id TEXT NOT NULL,
        counter INTEGER NOT NULL,
        rollout_id INTEGER NOT NULL,
        notice_id TEXT NOT NULL,
        state TEXT NOT NULL,
        reported_at INTEGER NOT NULL,
        received_at REAL NOT NULL,
        error_code TEXT NOT NULL,
        error_message TEXT NOT NULL,
        output TEXT NOT NULL,
        PRIMARY KEY (device_id, counter)
    ) WITHOUT ROWID;
    CREATE INDEX report_outputs_rollout ON report_outputs (rollout_id, device_id);
    """,
    # 11: the targets table without its foreign key to rollouts. A rollout's targets are
    # written only in the transaction that writes the rollout, and rollouts are never
    # deleted, so the key guarded nothing the store does not; yet PostgreSQL checked it by a
    # trigger once per row, and a rollout for 1,000,000 devices spent about 40% of its
    # create there. PostgreSQL drops it in place (a copy would lose what a replica still
    # running writes meanwhile); SQLite cannot, so there the table is rebuilt, inside the
    # migration's write transaction, which keeps every other writer out.
    {
        "postgresql": """
    ALTER TABLE rollout_targets DROP CONSTRAINT IF EXISTS rollout_targets_rollout_id_fkey;
    """,
        "sqlite": """
    CREATE TABLE rollout_targets_new (
        rollout_id INTEGER NOT NULL,
        device_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        phase INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending',
        delivered INTEGER NOT NULL DEFAULT 0,
        notice_id TEXT,
        notified_at REAL,
        updated_at REAL NOT NULL DEFAULT 0,
        last_counter INTEGER NOT NULL DEFAULT 0,
        reason TEXT NOT NULL DEFAULT '',
        attempts INTEGER NOT NULL DEFAULT 0,
        downloaded_bytes INTEGER,
        components TEXT,
        PRIMARY KEY (rollout_id, device_id)
    ) WITHOUT ROWID;
    INSERT INTO rollout_targets_new (rollout_id, device_id, position, phase, state,
        delivered, notice_id, notified_at, updated_at, last_counter, reason, attempts,
        downloaded_bytes, components)
        SELECT rollout_id, device_id, position, phase, state, delivered, notice_id,
        notified_at, updated_at, last_counter, reason, attempts, downloaded_bytes, components
        FROM rollout_targets;
    DROP TABLE rollout_targets;
    ALTER TABLE rollout_targets_new RENAME TO rollout_targets;
    CREATE INDEX rollout_targets_state ON rollout_targets (rollout_id, state, position);
    CREATE INDEX rollout_targets_device ON rollout_targets (device_id, state);
    """,
    },
    # 12: each device's groups (the registry's and the operator's, one row per group) as
    # rows: a page of one group's devices walks this key from the cursor and reads the 100
    # rows it returns; read from the JSON lists, it walked every device from the cursor and
    # dropped those outside the group (a group of 0.1% of 1M devices: p99 291 ms a page on
    # PostgreSQL, 19 ms on SQLite, on an idle machine). Kept by the store wherever either
    # list changes; the lists stay the record each device row shows.
    {
        "sqlite": _DEVICE_GROUPS.format(
            registry="json_each(devices.registry_groups) AS g",
            operator="json_each(devices.groups_) AS g",
        ),
        "postgresql": _DEVICE_GROUPS.format(
            registry="jsonb_array_elements_text(CAST(devices.registry_groups AS jsonb)) AS g",
            operator="jsonb_array_elements_text(CAST(devices.groups_ AS jsonb)) AS g",
        ),
    },
    # 13: how many targets each phase of a rollout holds, kept where targets are added
    # (they are never removed): a phase's pending devices are its size less those that
    # moved on, so the engine's per-pass counts read the targets that left ``pending``,
    # not the whole rollout (0.10 s on PostgreSQL, 0.40 s on SQLite, at 1,000,000 pending)
    """
    CREATE TABLE rollout_phase_sizes (
        rollout_id INTEGER NOT NULL,
        phase INTEGER NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (rollout_id, phase)
    ) WITHOUT ROWID;
    INSERT INTO rollout_phase_sizes (rollout_id, phase, size)
        SELECT rollout_id, phase, COUNT(*) FROM rollout_targets GROUP BY rollout_id, phase;
    """,
    # 14: which URL signing key each replica signs with (a name for it, not the key): a
    # replica whose key differs from a live one's is refused at start, since the payload
    # URLs either signs would be refused (403) by the other
    """
    ALTER TABLE replicas ADD COLUMN url_key_id TEXT NOT NULL DEFAULT '';
    """,
)
