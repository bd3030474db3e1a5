"""The serving loop's assets: per job, the model's or the rules' master parameters and preset
recommendation (``master_params``, between ``features_store`` and ``masters``), and the online metrics of every
served model (``model_metrics``), whose numbers the UI plots over materializations."""

import dagster as dg

from mixai_pipeline.defs.audio.assets import features_store, summary
from mixai_pipeline.defs.partitions import daily_upload_partitions
from mixai_pipeline.resources import Clock, Database, FeatureFlags, ModelServing


@dg.asset(partitions_def=daily_upload_partitions, group_name="serving", kinds={"onnx", "postgres"},
          deps=[features_store])
def master_params(context: dg.AssetExecutionContext, database: Database, model_serving: ModelServing,
                  feature_flags: FeatureFlags) -> dg.MaterializeResult:
    """Per job: the master parameters and the top-3 preset recommendation from the served model when the
    flags are on for the user and their sticky bucket is inside the model's rollout, else from the rules;
    source, model version, variant, latency and any fallback stored per job (``master_params`` rows)."""
    from mixai_pipeline.lib.serving.master_params import decide_day

    day = decide_day(database.get_engine(), model_serving.get_client(), context.partition_key,
                     salt=feature_flags.salt, log=context.log.info)
    model_serving.get_client().flush()
    table = day.table()
    return dg.MaterializeResult(metadata={
        "jobs": day.jobs,
        "answers": dg.MetadataValue.json(table["answers"]),
        "models": dg.MetadataValue.json(table["models"]),
        "model_share": round(sum(n for (_, s), n in day.sources.items() if s == "model") / (2 * day.jobs), 3)
        if day.jobs else 0.0,
        "latency_ms": dg.MetadataValue.json(summary(day.latencies_ms)),
    })


@dg.asset(group_name="serving", kinds={"postgres"})
def model_metrics(context: dg.AssetExecutionContext, database: Database, clock: Clock) -> dg.MaterializeResult:
    """Per served model and window (1h, 1d, 7d, 30d): calls, mean/p95/p99 latency, error and fallback rates,
    output drift (PSI against the training outputs) and the re-process rate of treatment vs control, upserted
    in ``model_metrics``. The numeric metadata (per task and role, active or rolling out) plot over time."""
    from mixai_pipeline.lib.serving import online_metrics

    now = clock.now().replace(microsecond=0)
    with database.get_engine().begin() as conn:
        models = online_metrics.monitored_models(conn, now)
        metrics = [m for model in models for m in online_metrics.windows_for(conn, model, now)]
        stored = online_metrics.store(conn, metrics)
    by_id = {model["id"]: model for model in models}
    metadata: dict = {"models": len(models), "rows": stored, "window_end": now.isoformat(),
                      "table": dg.MetadataValue.md(_table(metrics, by_id))}
    for m in metrics:
        model = by_id[m.model_id]
        role = ("active" if model["status"] == "active" else
                "rollout" if model["status"] == "candidate" and model["rollout_percent"] > 0 else None)
        if role is None or m.window not in ("1h", "1d"):
            continue
        prefix = f"{m.task}.{role}.{m.window}"
        metadata[f"{prefix}.version"] = m.version
        metadata[f"{prefix}.n"] = m.n
        for name in ("latency_ms", "latency_p95_ms", "err_rate", "fallback_rate"):
            value = getattr(m, name)
            metadata[f"{prefix}.{name}"] = dg.MetadataValue.float(round(float(value), 4) if value is not None
                                                                  else float("nan"))
        if m.max_psi is not None:
            metadata[f"{prefix}.max_psi"] = round(m.max_psi, 4)
        if role == "rollout":
            metadata[f"{m.task}.rollout.percent"] = model["rollout_percent"]
    context.log.info(f"model_metrics: {len(models)} models, {stored} rows at {now.isoformat()}")
    return dg.MaterializeResult(metadata=metadata)


def _table(metrics, by_id) -> str:
    def num(value, fmt):
        return "" if value is None else format(value, fmt)

    lines = ["| model | status | window | n | mean ms | p95 ms | p99 ms | errors | fallbacks | max PSI | "
             "re-process T / C |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in metrics:
        model = by_id[m.model_id]
        outcome = m.outcomes or {}
        rates = (f"{num(outcome.get('treatment_rate'), '.1%')} / {num(outcome.get('control_rate'), '.1%')}"
                 if outcome else "")
        lines.append(f"| {m.task}/{m.version} | {model['status']} {model['rollout_percent']}% | {m.window} | {m.n} | "
                     f"{num(m.latency_ms, '.1f')} | {num(m.latency_p95_ms, '.1f')} | {num(m.latency_p99_ms, '.1f')} | "
                     f"{num(m.err_rate, '.2%')} | {num(m.fallback_rate, '.2%')} | {num(m.max_psi, '.3f')} | {rates} |")
    return "\n".join(lines) if metrics else "no served model yet"

