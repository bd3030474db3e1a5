"""``mixai``: operator commands of the platform.

    mixai db upgrade        apply pending SQL migrations (starts the embedded PostgreSQL if needed)
    mixai db status         migrations applied, and where the database is
    mixai db stop           stop the embedded PostgreSQL
    mixai demo-data         write the demo uploads into the inbox
    mixai demo              the main job end to end (what `make demo` runs)
    mixai dev               Dagster UI + daemon on 127.0.0.1 (what `make dev` runs)
    mixai midi import-pack PATH [--name NAME] [--metadata CSV]
                            upload a folder of MIDI loops and its metadata CSV as a pack
    mixai train [--task T ...] [--min-samples N] [--actor NAME] [--reason TEXT]
                            train now on the consented set as of now; register what passes (train_now_job)
    mixai models list [--task T]
                            registered models with their headline metric beside the best baseline
    mixai models register FILE --task T [--note TEXT] [--version-label L] [--actor NAME]
                            check an ONNX file serves the task; register it as a candidate
"""

from __future__ import annotations

import argparse
import os
import sys


def _db(args: argparse.Namespace) -> int:
    from mixai_pipeline import settings
    from mixai_pipeline.resources import migrations
    from mixai_pipeline.resources.database import engine_for
    from mixai_pipeline.runtime import embedded_pgdata, prepare_environment

    if args.action == "stop":
        from mixai_pipeline.resources.embedded_postgres import stop_embedded_postgres

        print("stopped" if stop_embedded_postgres(embedded_pgdata()) else "not running")
        return 0
    env = prepare_environment(migrate=args.action == "upgrade")
    where = "embedded PostgreSQL under .mixai/pg" if env.embedded_postgres else "MIXAI_DATABASE_URL"
    if args.action == "upgrade":
        print(f"{where}: applied {', '.join(env.applied_migrations) or 'nothing (up to date)'}")
    else:
        applied = migrations.applied_versions(engine_for(env.database_url))
        pending = [m.path.name for m in migrations.discover(settings.SQL_DIR) if m.version not in applied]
        print(f"{where}: applied {applied or 'none'}; pending {pending or 'none'}")
    return 0


def _demo_data(args: argparse.Namespace) -> int:
    from mixai_pipeline.definitions import object_store_resource
    from mixai_pipeline.lib.demo.uploads import write_demo_inbox

    write_demo_inbox(object_store_resource().get_store(), count=args.count, bad=not args.no_bad)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from mixai_pipeline.demo import run_demo

    return run_demo(timeout_s=args.timeout, count=args.count, midi=not args.no_midi)


def _dev(args: argparse.Namespace) -> int:
    from mixai_pipeline import settings
    from mixai_pipeline.runtime import prepare_environment

    prepare_environment()
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    command = [dagster, "dev", "-h", args.host, "-p", str(args.port),
               "-w", str(settings.PROJECT_ROOT / "workspace.yaml")]
    print(f"Dagster UI on http://{args.host}:{args.port} (DAGSTER_HOME={os.environ['DAGSTER_HOME']})", flush=True)
    os.chdir(settings.PROJECT_ROOT)
    os.execv(dagster, command)


def _midi_import_pack(args: argparse.Namespace) -> int:
    from pathlib import Path

    from mixai_pipeline.definitions import object_store_resource
    from mixai_pipeline.lib.midi.packs import PackError, import_pack

    folder = Path(args.path)
    name = args.name or folder.resolve().name
    try:
        report = import_pack(object_store_resource().get_store(), folder, name,
                             metadata=Path(args.metadata) if args.metadata else None,
                             progress=lambda done, total: print(f"\r{done}/{total} files", end="", flush=True)
                             if done % 100 == 0 or done == total else None)
    except PackError as err:
        print(f"mixai midi import-pack: {err}", file=sys.stderr)
        return 2
    print(f"\npack {report['pack_id']!r}: {report['files']} files ({report['bytes'] / 1e6:.1f} MB), "
          f"{report['metadata_rows']} metadata rows; new_midi_packs_sensor picks it up")
    for relative, problem in report["refused"]:
        print(f"  not uploaded: {relative!r}: {problem}")
    if report["without_metadata"]:
        print(f"  {len(report['without_metadata'])} files have no metadata row (Stage 1 will reject them)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from mixai_pipeline.lib.training.dataset import TASKS
    from mixai_pipeline.runtime import run_operator_job

    config = {"tasks": args.task or list(TASKS), "min_samples": args.min_samples, "actor": args.actor,
              "reason": args.reason}
    ok, output = run_operator_job("train_now_job", "train_now", config)
    if not ok:
        print(f"mixai train: {output}", file=sys.stderr)
        return 1
    for s in output:
        where = f"registered {s['version']} (MLflow run {s['mlflow_run_id']})" if s.get("version") else s["reason"]
        cv = f"{s['chosen']} {s['metric']} {s['cv']:.4f}" if s.get("cv") is not None else "no model"
        baselines = ", ".join(f"{n} {v:.4f}" for n, v in s["baselines"].items())
        print(f"{s['task']:10}  {s['rows']:>6} rows  {cv}  (baselines: {baselines or '—'})  {where}")
    return 0


def _models(args: argparse.Namespace) -> int:
    from mixai_pipeline.lib.training import registry
    from mixai_pipeline.resources.database import engine_for
    from mixai_pipeline.runtime import prepare_environment

    if args.models_command == "list":  # read-only: no run needed
        env = prepare_environment()
        with engine_for(env.database_url).connect() as conn:
            print("\n".join(registry.models_table(registry.list_models(conn, args.task))))
        return 0
    from mixai_pipeline.runtime import run_operator_job

    config = {"task": args.task, "path": os.path.abspath(args.file), "version_label": args.version_label,
              "note": args.note, "actor": args.actor}
    ok, output = run_operator_job("register_model_file_job", "register_model_file", config)
    if not ok:
        print(f"mixai models register: {output}", file=sys.stderr)
        return 1
    print(f"{args.task} {output['version']} registered as a candidate (model id {output['model_id']}, "
          f"sha256 {output['sha256'][:12]})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mixai", description="Operator commands of the MIXAI data platform.")
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="the application database")
    db.add_argument("action", choices=["upgrade", "status", "stop"])
    db.set_defaults(handler=_db)

    data = sub.add_parser("demo-data", help="write the demo uploads into the inbox")
    data.add_argument("--count", type=int, default=None, help="rendered good uploads (default: all 8)")
    data.add_argument("--no-bad", action="store_true", help="skip the deliberately bad uploads")
    data.set_defaults(handler=_demo_data)

    demo = sub.add_parser("demo", help="run the main job end to end on the embedded defaults")
    demo.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the runs")
    demo.add_argument("--count", type=int, default=None, help="rendered good uploads (default: all 8)")
    demo.add_argument("--no-midi", action="store_true", help="leave out the Groove MIDI loop pack")
    demo.set_defaults(handler=_demo)

    dev = sub.add_parser("dev", help="Dagster UI and daemon on 127.0.0.1")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=3000)
    dev.set_defaults(handler=_dev)

    midi = sub.add_parser("midi", help="MIDI loop packs").add_subparsers(dest="midi_command", required=True)
    pack = midi.add_parser("import-pack", help="upload a folder of MIDI files and its metadata CSV as a pack")
    pack.add_argument("path", help="folder with .mid/.midi files (sub-folders kept) and metadata.csv or info.csv")
    pack.add_argument("--name", help="pack name (default: the folder's name)")
    pack.add_argument("--metadata", help="the metadata CSV, when it is not in the folder")
    pack.set_defaults(handler=_midi_import_pack)

    tasks = ("master_reg", "preset_cls", "align_conf")
    train = sub.add_parser("train", help="train now on the consented training set as of now (train_now_job)")
    train.add_argument("--task", action="append", choices=tasks, help="a task (repeatable; default: all three)")
    train.add_argument("--min-samples", type=int, default=1000, help="rows a task needs (default 1000)")
    train.add_argument("--actor", default=os.environ.get("USER", "operator"), help="who asks (audit_logs)")
    train.add_argument("--reason", default="", help="why (audit_logs)")
    train.set_defaults(handler=_train)

    models = sub.add_parser("models", help="the model registry").add_subparsers(dest="models_command", required=True)
    listing = models.add_parser("list", help="registered models with their metrics")
    listing.add_argument("--task", choices=tasks)
    listing.set_defaults(handler=_models)
    register = models.add_parser("register", help="register an ONNX model file as a candidate")
    register.add_argument("file", help="the .onnx file")
    register.add_argument("--task", required=True, choices=tasks)
    register.add_argument("--note", default="", help="where the model comes from")
    register.add_argument("--version-label", default="", help="version prefix (default upload-<UTC date>)")
    register.add_argument("--actor", default=os.environ.get("USER", "operator"), help="who registers (audit_logs)")
    register.set_defaults(handler=_models)

    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
