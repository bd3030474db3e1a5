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
    mixai operators add ACTOR ROLE --by NAME       add an operator (admin only; the first one bootstraps)
    mixai consent grant|withdraw USER_ID [--qa] [--training] --actor NAME [--reason TEXT]
                            change a user's consent (a training withdrawal deletes their data within 24 h)
    mixai legal-hold request (--user ID | --job ID) [--release] --reason TEXT --actor NAME
    mixai original-access request VAULT_ITEM_ID --reason TEXT --actor NAME
    mixai approvals list | approve ID --actor NAME | reject ID --actor NAME
                            4-eyes: a second operator decides; a legal hold applies on approval
    mixai original-access url REQUEST_ID --actor NAME    a signed URL to the original, valid 120 s
"""

from __future__ import annotations

import argparse
import os
import sys


def _db(args: argparse.Namespace) -> int:
    from mixai_pipeline import settings
    from mixai_pipeline.lib.storage.database import engine_for
    from mixai_pipeline.resources import migrations
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
    from mixai_pipeline.lib.storage.database import engine_for
    from mixai_pipeline.lib.training import registry
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


def _governance(args: argparse.Namespace) -> int:
    """Operator governance commands: the library checks the actor's role and refuses with the reason."""
    from datetime import datetime, timezone

    from sqlalchemy import text

    from mixai_pipeline.definitions import object_store_resource
    from mixai_pipeline.lib.governance import access, consent
    from mixai_pipeline.lib.storage.database import engine_for
    from mixai_pipeline.runtime import prepare_environment

    engine = engine_for(prepare_environment().database_url)
    now = datetime.now(timezone.utc)
    try:
        if args.command == "operators":
            previous = access.add_operator(engine, args.name, args.role, by=args.by, now=now)
            print(f"{args.name}: {args.role}" + (f" (was {previous})" if previous else ""))
        elif args.command == "consent":
            fields = {"qa": args.qa, "training": args.training}
            if not any(fields.values()):
                fields["training"] = True
            value = args.action == "grant"
            given = {name: value if on else None for name, on in fields.items()}
            with engine.begin() as conn:
                access.require_permission(conn, args.actor, "consent.change")
                change = consent.operator_change(conn, args.user_id, **given, actor=args.actor, now=now,
                                                 reason=args.reason or None)
            print(f"user {args.user_id}: {change}")
        elif args.command == "legal-hold":
            target = {"user_id": args.user} if args.user else {"job_id": args.job}
            request = access.request_approval(engine, "legal_hold", {**target, "hold": not args.release}, args.reason,
                                              actor=args.actor, now=now)
            print(f"approval request {request.id}: a second operator runs `mixai approvals approve {request.id}`"
                  f" before {request.expires_at:%Y-%m-%d %H:%M} UTC")
        elif args.command == "original-access" and args.access_command == "request":
            request = access.request_approval(engine, "original_access", {"vault_item_id": args.item_id},
                                              args.reason, actor=args.actor, now=now)
            print(f"approval request {request.id}: needs a second operator's approval")
        elif args.command == "original-access":
            signed = access.grant_original_access(engine, object_store_resource().get_store(), args.request_id,
                                                  actor=args.actor, now=now)
            print(f"{signed.url}\nvalid until {signed.expires_at:%H:%M:%S} UTC")
        elif args.approvals_command == "list":
            with engine.connect() as conn:
                rows = conn.execute(text(
                    "SELECT id, kind, target, status, requested_by, expires_at FROM approval_requests "
                    "ORDER BY id DESC LIMIT 50")).all()
            for r in rows:
                print(f"{r.id:>5}  {r.kind:16} {r.status:9} by {r.requested_by:12} until {r.expires_at:%Y-%m-%d %H:%M}"
                      f"  {r.target}")
        else:
            decide = access.approve if args.approvals_command == "approve" else access.reject
            decision = decide(engine, args.request_id, approver=args.actor, now=now)
            hold = decision.legal_hold
            print(f"request {args.request_id}: {decision.request.status}"
                  + (f"; {hold.changed} item(s) changed, {hold.held} held" if hold else ""))
    except (access.GovernanceError, ValueError) as exc:
        print(f"mixai {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0


def _serving(args: argparse.Namespace) -> int:
    """Flags, rollouts and online metrics: the operator jobs of defs/serving/jobs.py, run in process."""
    from mixai_pipeline.runtime import run_operator_job

    if args.command == "flags" and args.flags_command == "list":  # read-only: no run needed
        from sqlalchemy import text

        from mixai_pipeline.lib.storage.database import engine_for
        from mixai_pipeline.runtime import prepare_environment

        with engine_for(prepare_environment().database_url).connect() as conn:
            for r in conn.execute(text("SELECT key, enabled, rollout_percent, updated_by, updated_at "
                                       "FROM feature_flags ORDER BY key")):
                print(f"{r.key:30} {'on ' if r.enabled else 'off'} {r.rollout_percent:>3} %  "
                      f"by {r.updated_by} at {r.updated_at:%Y-%m-%d %H:%M}")
        return 0
    if args.command == "flags":
        job, op = "set_feature_flag_job", "set_feature_flag"
        config = {"key": args.key, "enabled": args.state == "on", "rollout_percent": args.percent,
                  "actor": args.actor, "reason": args.reason}
    elif args.command == "metrics":
        job, op, config = "online_metrics_job", "online_metrics", {"model_id": args.model_id, "window": args.window}
    elif args.rollout_command == "request-full":
        return _request_full_rollout(args)
    else:
        job, op = "change_rollout_job", "change_rollout"
        config = {"model_id": args.model_id, "action": args.rollout_command, "percent": getattr(args, "percent", 0),
                  "approval_id": getattr(args, "approval", None), "actor": args.actor, "reason": args.reason}
    ok, output = run_operator_job(job, op, config)
    if not ok:
        print(f"mixai {args.command}: {output}", file=sys.stderr)
        return 1
    if args.command == "metrics":
        for key in ("task", "version", "status", "rollout_percent", "window", "n", "latency_ms", "latency_p95_ms",
                    "latency_p99_ms", "err_rate", "fallback_rate", "load_failures", "drift", "outcomes"):
            print(f"{key:16} {output.get(key)}")
    elif args.command == "flags":
        print(f"{output['key']}: {'on' if output['enabled'] else 'off'} for {output['rollout_percent']} % of users")
    else:
        print(f"model {output['model_id']} ({output['task']}/{output['version']}): {output['action']} "
              f"{output['from_percent']} → {output['to_percent']} %"
              + (f"; model {output['restored_model_id']} active again" if output["restored_model_id"] else ""))
    return 0


def _request_full_rollout(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from mixai_pipeline.lib.governance import access
    from mixai_pipeline.lib.storage.database import engine_for
    from mixai_pipeline.runtime import prepare_environment

    try:
        request = access.request_approval(engine_for(prepare_environment().database_url), "rollout_full",
                                          {"model_id": args.model_id}, args.reason, actor=args.actor,
                                          now=datetime.now(timezone.utc))
    except (access.GovernanceError, ValueError) as exc:
        print(f"mixai rollout: {exc}", file=sys.stderr)
        return 2
    print(f"approval request {request.id}: a second operator runs `mixai approvals approve {request.id}`, then "
          f"`mixai rollout set {args.model_id} 100 --approval {request.id}` (or `promote`)")
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

    operators = sub.add_parser("operators", help="operators and their roles").add_subparsers(
        dest="operators_command", required=True)
    add = operators.add_parser("add", help="add an operator or change a role (admin only)")
    add.add_argument("name")
    add.add_argument("role", choices=["admin", "ops", "support", "read_only"])
    add.add_argument("--by", required=True, help="the admin doing it (the first operator bootstraps as admin)")
    add.set_defaults(handler=_governance)

    consent_parser = sub.add_parser("consent", help="grant or withdraw a user's consent")
    consent_parser.add_argument("action", choices=["grant", "withdraw"])
    consent_parser.add_argument("user_id")
    consent_parser.add_argument("--qa", action="store_true", help="QA listening consent")
    consent_parser.add_argument("--training", action="store_true", help="training consent (the default)")
    consent_parser.add_argument("--actor", required=True)
    consent_parser.add_argument("--reason", default="")
    consent_parser.set_defaults(handler=_governance)

    hold = sub.add_parser("legal-hold", help="request a legal hold (or its release): admin, then a second approver")
    hold.add_argument("action", choices=["request"])
    who = hold.add_mutually_exclusive_group(required=True)
    who.add_argument("--user")
    who.add_argument("--job")
    hold.add_argument("--release", action="store_true", help="lift the hold instead of setting it")
    hold.add_argument("--reason", required=True)
    hold.add_argument("--actor", required=True)
    hold.set_defaults(handler=_governance)

    original = sub.add_parser("original-access", help="approved, audited access to an original stem").add_subparsers(
        dest="access_command", required=True)
    ask = original.add_parser("request", help="ask for access to one original (a second operator approves)")
    ask.add_argument("item_id", type=int, help="the vault_items id of the inst or vocal stem")
    ask.add_argument("--reason", required=True)
    ask.add_argument("--actor", required=True)
    ask.set_defaults(handler=_governance)
    url = original.add_parser("url", help="a signed URL for an approved request, valid 120 s")
    url.add_argument("request_id", type=int)
    url.add_argument("--actor", required=True)
    url.set_defaults(handler=_governance)

    approvals = sub.add_parser("approvals", help="4-eyes approvals").add_subparsers(dest="approvals_command",
                                                                                   required=True)
    approvals.add_parser("list", help="the latest requests").set_defaults(handler=_governance)
    for verb in ("approve", "reject"):
        decide = approvals.add_parser(verb, help=f"{verb} a pending request (never your own)")
        decide.add_argument("request_id", type=int)
        decide.add_argument("--actor", required=True)
        decide.set_defaults(handler=_governance)

    flags = sub.add_parser("flags", help="feature flags").add_subparsers(dest="flags_command", required=True)
    flags.add_parser("list", help="every flag and its state").set_defaults(handler=_serving)
    flag_set = flags.add_parser("set", help="turn a flag on (for a share of the users) or off (ops, admin)")
    flag_set.add_argument("key")
    flag_set.add_argument("state", choices=["on", "off"])
    flag_set.add_argument("--percent", type=int, default=100, help="share of users it is on for (default 100)")
    flag_set.add_argument("--actor", required=True)
    flag_set.add_argument("--reason", required=True)
    flag_set.set_defaults(handler=_serving)

    rollout = sub.add_parser("rollout", help="a model's rollout (setRollout)").add_subparsers(
        dest="rollout_command", required=True)
    for verb, text_ in (("set", "set a candidate's rollout percentage (100 needs an approved request)"),
                        ("promote", "make a model active now (needs an approved request)"),
                        ("rollback", "roll a model back (an active one gives way to the previous)"),
                        ("request-full", "ask for a rollout_full approval of a model (a second operator approves)")):
        action = rollout.add_parser(verb, help=text_)
        action.add_argument("model_id", type=int)
        if verb == "set":
            action.add_argument("percent", type=int)
        if verb in ("set", "promote"):
            action.add_argument("--approval", type=int, help="the approved rollout_full request id")
        action.add_argument("--actor", required=True)
        action.add_argument("--reason", required=True)
        action.set_defaults(handler=_serving)

    metrics = sub.add_parser("metrics", help="a model's online metrics for a window (getOnlineMetrics)")
    metrics.add_argument("model_id", type=int)
    metrics.add_argument("--window", choices=["1h", "1d", "7d", "30d"], default="1d")
    metrics.set_defaults(handler=_serving)

    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
