"""Model serving for assets and jobs: a ``ServingClient`` (lib/training/serving.py) over the database and the
object store resources — the three task models from the registry, a rule-based answer when a model cannot
give one, and every call logged in ``model_predictions`` for ``model_metrics``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field, PrivateAttr

from mixai_pipeline.resources.database import Database
from mixai_pipeline.resources.object_store import ObjectStoreResource

if TYPE_CHECKING:  # imported when first used: the serving stack (pandas, scipy, onnx) costs >1 s to import
    from mixai_pipeline.lib.training.serving import ServingClient


class ModelServing(dg.ConfigurableResource):
    """CPU inference (onnxruntime) for master_reg, preset_cls and align_conf, with fallback and call log.

    ``get_client()`` gives one client per resource instance, so that its model cache lives as long as the
    run; the resource closes it after the run (writing the buffered call log). Used outside a run, close it
    yourself (``client.close()``)."""

    database: Database
    object_store: ObjectStoreResource
    max_models: int = Field(default=5, description="loaded models kept in memory (least recently used out)")
    timeout_s: float = Field(default=3.0, description="seconds a model run may take before the rule answers")

    _client: ServingClient | None = PrivateAttr(default=None)

    def get_client(self) -> ServingClient:
        if self._client is None:
            from mixai_pipeline.lib.training.serving import ServingClient

            self._client = ServingClient(self.database.get_engine(), self.object_store.get_store(),
                                         max_models=self.max_models, timeout_s=self.timeout_s)
        return self._client

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


class RolloutPolicyResource(dg.ConfigurableResource):
    """The rollout controller's limits (``lib/serving/rollout.py``'s ``RolloutPolicy``): the SLOs and how much
    traffic and time a stage needs before the model steps up."""

    min_n: int = Field(default=200, ge=1, description="calls a stage needs before the model may step up")
    min_stage_minutes: float = Field(default=60.0, ge=0, description="minutes a stage lasts at least")
    breach_min_n: int = Field(default=20, ge=1, description="calls before latency and error rate are judged")
    max_latency_ms: float = Field(default=50.0, gt=0, description="SLO: mean latency below this")
    max_err_rate: float = Field(default=0.01, gt=0, le=1, description="SLO: error rate below this")
    max_psi: float = Field(default=0.2, gt=0, description="SLO: PSI of every output below this")
    alpha: float = Field(default=0.01, gt=0, lt=1, description="significance of the outcome-regression test "
                                                                     "(strict: it is looked at every evaluation)")

    def policy(self):
        from datetime import timedelta

        from mixai_pipeline.lib.serving.rollout import RolloutPolicy

        return RolloutPolicy(min_n=self.min_n, min_stage=timedelta(minutes=self.min_stage_minutes),
                             breach_min_n=self.breach_min_n, max_latency_ms=self.max_latency_ms,
                             max_err_rate=self.max_err_rate, max_psi=self.max_psi, alpha=self.alpha)
