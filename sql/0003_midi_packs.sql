-- 0003: MIDI loop packs (seed 002). The registry of what came in: one row per pack and per file, with
-- digests, sizes, the pack's own metadata and each file's verdict. The loops, metrics, scores, labels and
-- pairs are datasets (Parquet/CSV/JSONL in the object store under a versioned prefix), not rows here.

CREATE TABLE midi_packs (
    pack_id         text PRIMARY KEY CHECK (pack_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    metadata_key    text,
    metadata_sha256 text,
    files           integer NOT NULL DEFAULT 0 CHECK (files >= 0),
    bytes           bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0),
    registered_at   timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE midi_files (
    pack_id       text NOT NULL REFERENCES midi_packs(pack_id) ON DELETE CASCADE,
    path          text NOT NULL,                 -- relative to the pack
    size_bytes    bigint NOT NULL CHECK (size_bytes >= 0),
    sha256        text NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    md5           text NOT NULL CHECK (md5 ~ '^[0-9a-f]{32}$'),
    source        jsonb NOT NULL DEFAULT '{}',   -- the metadata row: style, bpm, beat_type, time_signature ...
    status        text NOT NULL CHECK (status IN ('registered', 'parsed', 'rejected')),
    reject_stage  text CHECK (reject_stage IN ('midi_packs', 'midi_loops')),
    reject_code   text,
    reject_reason text,
    loops         integer CHECK (loops >= 0),    -- loops Stage 1 kept from the file
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pack_id, path),
    CONSTRAINT midi_files_reason_iff_rejected
        CHECK ((status = 'rejected') = (reject_code IS NOT NULL AND reject_reason IS NOT NULL
                                        AND reject_stage IS NOT NULL))
);
CREATE INDEX midi_files_sha256 ON midi_files (sha256);
