"""``new_midi_packs_sensor``: a pack whose metadata.csv appeared (or changed) under midi/packs/ becomes a
dynamic partition and one run of the MIDI job."""

import json

import dagster as dg

from mixai_pipeline.defs.midi.jobs import midi_pack_job
from mixai_pipeline.defs.midi.partitions import midi_pack_partitions
from mixai_pipeline.lib.midi.packs import list_packs
from mixai_pipeline.resources import ObjectStoreResource


@dg.sensor(
    job=midi_pack_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches midi/packs/ in the object store; a complete new or re-imported pack gets a partition "
                "and a run.",
)
def new_midi_packs_sensor(context: dg.SensorEvaluationContext, object_store: ObjectStoreResource):
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}  # pack → metadata version
    complete = {pack_id: listing for pack_id, listing in list_packs(object_store.get_store()).items()
                if listing.complete}
    changed = sorted(pack_id for pack_id, listing in complete.items() if seen.get(pack_id) != listing.version)
    if not changed:
        return dg.SkipReason(f"no new or re-imported packs ({len(complete)} known)")
    new_partitions = [p for p in changed if not context.instance.has_dynamic_partition(midi_pack_partitions.name, p)]
    cursor = {**seen, **{p: complete[p].version for p in changed}}
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=p, run_key=f"{p}@{complete[p].version}",
                                    tags={"mixai/midi_pack_files": str(len(complete[p].files))}) for p in changed],
        dynamic_partitions_requests=[midi_pack_partitions.build_add_request(new_partitions)] if new_partitions else [],
        cursor=json.dumps(cursor, sort_keys=True),
    )
