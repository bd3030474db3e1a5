"""Jobs of the MIDI domain."""

import dagster as dg

from mixai_pipeline.defs.midi.assets import midi_packs
from mixai_pipeline.defs.midi.partitions import midi_pack_partitions

midi_pack_job = dg.define_asset_job(
    "midi_pack_job", selection=dg.AssetSelection.assets(midi_packs).downstream(),
    partitions_def=midi_pack_partitions,
    description="One loop pack from registration to the published dataset, labels and pairs "
                "(what new_midi_packs_sensor launches).")
