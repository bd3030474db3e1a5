"""One dynamic partition per MIDI loop pack (a bounded set: packs are curated, not per-user uploads)."""

import dagster as dg

midi_pack_partitions = dg.DynamicPartitionsDefinition(name="midi_packs")
