-- uacregistrant cluster mode (--cluster NAME): the tables the nodes of a
-- cluster coordinate through, next to the registrant table.  Every row is
-- keyed by the cluster's name, so several clusters can share a database.
-- The daemon runs this script at start (CREATE ... IF NOT EXISTS) and then
-- creates its cluster's 1024 slot rows; a DBA may run it beforehand.

-- Members: a node is alive while expires_at (server clock) is in the future;
-- epoch grows on every join and fences every write that needs membership;
-- stopping is how a stopping member decided to go ('hand over' or
-- 'unregister'; NULL while it runs), one member at a time.
CREATE TABLE IF NOT EXISTS uacregistrant_members (
    cluster TEXT NOT NULL,
    name TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    listen TEXT NOT NULL DEFAULT '',
    slots INTEGER NOT NULL DEFAULT 0,
    records INTEGER NOT NULL DEFAULT 0,
    renewed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL DEFAULT '-infinity',
    stopping TEXT CHECK (stopping IN ('hand over', 'unregister')),
    PRIMARY KEY (cluster, name)
);

-- Slots: a record's slot is crc32(aor) & 1023; a slot belongs to the member
-- (owner, owner_epoch) while that member is alive in that epoch.
CREATE TABLE IF NOT EXISTS uacregistrant_slots (
    cluster TEXT NOT NULL,
    slot INTEGER NOT NULL CHECK (slot >= 0),
    owner TEXT,
    owner_epoch BIGINT,
    PRIMARY KEY (cluster, slot)
);

-- Records: the Call-ID a record registers with and the highest CSeq any node
-- may have used for it (nodes reserve blocks before sending), so that the
-- node taking a record over continues the same registration.
CREATE TABLE IF NOT EXISTS uacregistrant_records (
    cluster TEXT NOT NULL,
    aor TEXT NOT NULL,
    binding_uri TEXT NOT NULL,
    registrar TEXT NOT NULL,
    call_id TEXT NOT NULL,
    cseq_reserved BIGINT NOT NULL CHECK (cseq_reserved BETWEEN 1 AND 2147483647),
    PRIMARY KEY (cluster, aor, binding_uri, registrar)
);
