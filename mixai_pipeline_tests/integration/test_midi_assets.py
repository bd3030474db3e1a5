"""The MIDI pack assets materialized on a real pack (Groove MIDI files plus hostile ones) with real
resources: PostgreSQL rows, the object store's working tables and the published dataset; the sensor;
``mixai midi import-pack``."""

import csv
import io
import json
import os

import dagster as dg
import pandas as pd
import pytest
import symusic
from sqlalchemy import text

from mixai_pipeline import cli, settings
from mixai_pipeline.defs.midi.assets import (
    loop_datasets,
    loop_labels,
    loop_metrics,
    loop_pairs,
    loop_scores,
    midi_loops,
    midi_packs,
)
from mixai_pipeline.defs.midi.partitions import midi_pack_partitions
from mixai_pipeline.defs.midi.sensors import new_midi_packs_sensor
from mixai_pipeline.lib.midi import packs, pipeline
from mixai_pipeline.resources import Database, ObjectStoreResource

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (settings.groove_midi_dir() / "info.csv").exists(),
    reason=f"Groove MIDI Dataset not present at {settings.groove_midi_dir()} (set MIXAI_SHARED_DATA)")]
ASSETS = [midi_packs, midi_loops, loop_metrics, loop_scores, loop_labels, loop_pairs, loop_datasets]
PACK = "groove-mini"
GOOD_FILES = 24


def _no_notes_midi() -> bytes:
    score = symusic.Score(480)
    score.tracks.append(symusic.Track("empty", 0, True))
    return score.dumps_midi()


@pytest.fixture(scope="module")
def pack_folder(tmp_path_factory):
    """24 Groove MIDI beats from several styles, their info.csv rows, and one file per bad kind (each with
    a metadata row, so its own problem is what rejects it), plus a file with no row at all."""
    root = settings.groove_midi_dir()
    with open(root / "info.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["beat_type"] == "beat" and float(r["duration"]) > 20]
    by_style: dict[str, list] = {}
    for row in rows:
        by_style.setdefault(row["style"].split("/")[0], []).append(row)
    chosen = [row for style in sorted(by_style) for row in by_style[style][:3]][:GOOD_FILES]
    folder = tmp_path_factory.mktemp("pack") / PACK
    for row in chosen:
        (folder / row["midi_filename"]).parent.mkdir(parents=True, exist_ok=True)
        (folder / row["midi_filename"]).write_bytes((root / row["midi_filename"]).read_bytes())
    real = (root / chosen[0]["midi_filename"]).read_bytes()
    bad = {
        "bad/not_midi.mid": os.urandom(2000),
        "bad/truncated.mid": real[: len(real) // 2],
        "bad/too_large.mid": real[:14] + b"MTrk" + (2_000_000).to_bytes(4, "big") + bytes(1_100_000),
        "bad/type2.mid": real[:8] + (2).to_bytes(2, "big") + real[10:],
        "bad/no_notes.mid": _no_notes_midi(),
        "bad/empty.mid": b"",
        "zz_duplicate.mid": real,  # byte-identical to a file listed before it
    }
    (folder / "bad").mkdir()
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    hostile = "weird name; rm -rf $(x) ü.mid"  # storable, and only ever data
    (folder / hostile).write_bytes((root / rows[-1]["midi_filename"]).read_bytes())
    (folder / "no_row.mid").write_bytes((root / chosen[1]["midi_filename"]).read_bytes()[:-1] + b"\x00")
    fields = list(chosen[0].keys())
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(chosen)
        for name in [*bad, hostile]:
            writer.writerow({**chosen[0], "midi_filename": name, "id": name})
    return folder, chosen


@pytest.fixture(scope="module")
def materialized(pack_folder, tmp_path_factory, pg_admin_uri, migrated_template):
    from mixai_pipeline.lib.storage.database import engine_for
    from mixai_pipeline.lib.storage.object_store import LocalObjectStore
    from mixai_pipeline.resources.embedded_postgres import with_database
    from mixai_pipeline_tests.conftest import _create_database, _drop_database

    name = "midi_assets_test"
    _create_database(pg_admin_uri, name, migrated_template)
    url = with_database(pg_admin_uri, name, "psycopg")
    store = LocalObjectStore(tmp_path_factory.mktemp("objects"))
    folder, chosen = pack_folder
    imported = packs.import_pack(store, folder, PACK)
    store.put_bytes(f"{packs.pack_prefix(PACK)}notes/readme.txt", b"not a MIDI file")  # dropped in beside it
    resources = {"database": Database(url=url), "object_store": ObjectStoreResource(backend="local",
                                                                                    root=str(store.root))}
    config = {"ops": {"loop_pairs": {"config": {"genre_transfers": ["jazz -> rock"]}}}}
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(midi_pack_partitions.name, [PACK])
        first = dg.materialize(ASSETS, partition_key=PACK, resources=resources, instance=instance, run_config=config)
        second = dg.materialize(ASSETS, partition_key=PACK, resources=resources, instance=instance, run_config=config)
    engine = engine_for(url)
    yield {"store": store, "engine": engine, "first": first, "second": second, "imported": imported,
           "chosen": chosen}
    engine.dispose()
    _drop_database(pg_admin_uri, name)


def _metadata(result, asset: str) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}


def test_every_file_is_registered_with_its_verdict(materialized):
    assert materialized["first"].success and materialized["second"].success
    with materialized["engine"].connect() as conn:
        files = {r.path: r for r in conn.execute(text("SELECT * FROM midi_files WHERE pack_id = :p"), {"p": PACK})}
        pack = conn.execute(text("SELECT * FROM midi_packs WHERE pack_id = :p"), {"p": PACK}).one()
    assert pack.files == len(files) == GOOD_FILES + 7 + 3
    verdicts = {path: (r.status, r.reject_stage, r.reject_code) for path, r in files.items() if r.status == "rejected"}
    assert verdicts == {
        "bad/not_midi.mid": ("rejected", "midi_loops", "not_midi"),
        "bad/truncated.mid": ("rejected", "midi_loops", "truncated"),
        "bad/too_large.mid": ("rejected", "midi_loops", "too_large"),
        "bad/type2.mid": ("rejected", "midi_loops", "midi_type_2"),
        "bad/no_notes.mid": ("rejected", "midi_loops", "no_notes"),
        "bad/empty.mid": ("rejected", "midi_loops", "empty"),
        "zz_duplicate.mid": ("rejected", "midi_loops", "duplicate_file"),
        "no_row.mid": ("rejected", "midi_loops", "missing_metadata"),
        "notes/readme.txt": ("rejected", "midi_packs", "not_midi_file"),
    }
    assert all(files[p].reject_reason for p in verdicts)
    good = [r for r in files.values() if r.status == "parsed"]
    assert len(good) == GOOD_FILES + 1 and sum(r.loops for r in good) > 100
    assert files["weird name; rm -rf $(x) ü.mid"].status == "parsed"
    assert all(len(r.sha256) == 64 and len(r.md5) == 32 and r.source.get("style") for r in good)


def test_stage_outputs_and_the_published_dataset(materialized):
    store, first = materialized["store"], materialized["first"]
    loops = _metadata(first, "midi_loops")
    metrics = pipeline.load_metrics(store, PACK)
    scores = pipeline.load_scores(store, PACK)
    labels = pipeline.load_labels(store, PACK)
    assert loops["loops_out"] == len(metrics) == len(scores) == len(labels) > 100
    assert list(metrics.index) == list(scores.index) == list(labels.index)
    assert set(json.loads(scores["weights"].iloc[0]).values()) == {1.0} and (scores["threshold"] == 70.0).all()
    assert ((scores["total"] >= 70) == scores["passed"]).all()

    dataset = _metadata(first, "loop_datasets")
    prefix = dataset["prefix"]
    names = {info.key[len(prefix):] for info in store.list(prefix)}
    assert names == {"canonical_events.parquet", "loop_summary.parquet", "loop_summary.csv", "metrics_score.jsonl",
                     "stage2_summary.json", "labels.parquet"}
    summary = pd.read_csv(io.BytesIO(store.get_bytes(prefix + "loop_summary.csv")))
    assert len(summary) == len(metrics) and (summary["data_digest"] == dataset["data_digest"]).all()
    assert {"metrics.swing_ratio", "timing", "total", "passed", "failure_reason", "genre"} <= set(summary.columns)
    events = pd.read_parquet(io.BytesIO(store.get_bytes(prefix + "canonical_events.parquet")))
    _, loop_table = pipeline.load_loops(store, PACK)
    assert len(events) == int(loop_table["n_notes"].sum())
    jsonl = store.get_bytes(prefix + "metrics_score.jsonl").decode().splitlines()
    assert len(jsonl) == len(metrics) and set(json.loads(jsonl[0])) >= {"loop_id", "score", "axes", "weights"}
    stage2 = json.loads(store.get_bytes(prefix + "stage2_summary.json"))
    assert stage2["counts"]["loops_in_stage2"] == len(metrics)
    assert set(stage2["score_distribution"]) == {"timing", "velocity", "groove_harmony", "drum_cohesion",
                                                 "structure", "total"}
    assert stage2["exclusions"]["not_midi"] == 1


def test_pairs_are_neighbours_never_self(materialized):
    pairs = pipeline.load_pairs(materialized["store"], PACK)
    assert len(pairs) > 0 and (pairs["loop_id"] != pairs["other_id"]).all()
    assert (pairs["similarity"] >= 0.4).all() and pairs.groupby("loop_id").size().max() <= 5
    transfer = pipeline._get_frame(materialized["store"], pipeline.derived_key(PACK, "pairs_jazz_to_rock.parquet"))
    labels = pipeline.load_labels(materialized["store"], PACK)
    if len(transfer):
        assert set(labels.loc[transfer["loop_id"], "genre"]) == {"jazz"}
        assert set(labels.loc[transfer["other_id"], "genre"]) == {"rock"}


def test_rematerializing_is_idempotent(materialized):
    first, second = (_metadata(materialized[k], "loop_datasets") for k in ("first", "second"))
    assert first["data_digest"] == second["data_digest"] and first["prefix"] == second["prefix"]
    assert first["already_published"] is False and second["already_published"] is True
    with materialized["engine"].connect() as conn:
        audits = conn.execute(text("SELECT count(*) FROM audit_logs WHERE action = 'midi_pack.registered'")).scalar()
    assert audits == 2


def test_sensor_adds_the_partition_once_and_again_on_reimport(pack_folder, local_store):
    folder, _ = pack_folder
    resources = {"object_store": ObjectStoreResource(backend="local", root=str(local_store.root))}
    with dg.instance_for_test() as instance:
        def tick(cursor):
            return new_midi_packs_sensor(dg.build_sensor_context(cursor=cursor, instance=instance,
                                                                 resources=resources))

        assert isinstance(tick(None), dg.SkipReason)
        local_store.put_bytes(f"{packs.pack_prefix('half-uploaded')}a.mid", b"MThd")  # no metadata.csv yet
        assert isinstance(tick(None), dg.SkipReason)
        packs.import_pack(local_store, folder, PACK)
        result = tick(None)
        assert [r.partition_key for r in result.run_requests] == [PACK]
        assert result.dynamic_partitions_requests[0].partition_keys == [PACK]
        instance.add_dynamic_partitions(midi_pack_partitions.name, [PACK])
        assert isinstance(tick(result.cursor), dg.SkipReason)
        local_store.put_bytes(f"{packs.pack_prefix(PACK)}metadata.csv", (folder / "metadata.csv").read_bytes()
                              + b"\n")  # re-imported
        again = tick(result.cursor)
        assert [r.partition_key for r in again.run_requests] == [PACK]
        assert again.run_requests[0].run_key != result.run_requests[0].run_key
        assert not again.dynamic_partitions_requests  # the partition exists already


def test_import_pack_command_refuses_bad_packs_clearly(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(settings.ENV_OBJECTS_DIR, str(tmp_path / "objects"))
    (tmp_path / "nometa").mkdir()
    (tmp_path / "nometa" / "a.mid").write_bytes(b"MThd")
    assert cli.main(["midi", "import-pack", str(tmp_path / "nometa")]) == 2
    assert "no metadata CSV" in capsys.readouterr().err
    (tmp_path / "badcsv").mkdir()
    (tmp_path / "badcsv" / "metadata.csv").write_text("name,style\nx.mid,rock\n")
    assert cli.main(["midi", "import-pack", str(tmp_path / "badcsv")]) == 2
    assert "lacks column" in capsys.readouterr().err
    assert cli.main(["midi", "import-pack", str(tmp_path / "badcsv"), "--name", "../escape"]) == 2
    assert "pack name" in capsys.readouterr().err
    assert not (tmp_path / "objects").exists() or not any((tmp_path / "objects").rglob("*.mid"))


def test_pack_names_and_listing_are_strict(local_store):
    for bad in ("", "../x", "a/b", "-lead", "x" * 65, "sp ace"):
        with pytest.raises(packs.PackError):
            packs.check_pack_id(bad)
    local_store.put_bytes("midi/packs/ok/metadata.csv", b"x")
    listed = packs.list_packs(local_store)
    assert set(listed) == {"ok"} and listed["ok"].complete


def test_the_demo_summary_reads_the_outputs(materialized):
    from mixai_pipeline.demo import print_midi_summary

    lines: list[str] = []
    print_midi_summary(materialized["store"], materialized["engine"], PACK, log=lines.append)
    text_out = "\n".join(lines)
    assert f"== MIDI loop pack '{PACK}' ==" in text_out and "files: " in text_out
    assert "Stage 1: 33 files" in text_out and "Stage 2:" in text_out and "median swing ratio" in text_out
    assert "~ " in text_out  # at least one loop shown with a neighbour
