"""Feature flags and the A/B salt for assets and jobs (``lib/serving/flags.py``, ``bucketing.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from mixai_pipeline.resources.database import Database

if TYPE_CHECKING:
    from mixai_pipeline.lib.serving.flags import Flag, Flags


class FeatureFlags(dg.ConfigurableResource):
    """``feature_flags`` read as one snapshot per call, changed only through ``set`` (audited, operators only).
    ``salt`` keys the A/B bucket hash (env ``MIXAI_AB_SALT``): keep it secret and never change it while
    experiments run (stored buckets are kept, but new users would be hashed differently)."""

    database: Database
    salt: str = Field(default="mixai-ab-v1", description="salt of the sticky A/B bucket hash")

    def read(self) -> Flags:
        from mixai_pipeline.lib.serving.flags import read_flags

        with self.database.get_engine().connect() as conn:
            return read_flags(conn, self.salt)

    def set(self, key: str, *, enabled: bool, rollout_percent: int, actor: str, reason: str) -> Flag:
        from mixai_pipeline.lib.governance.access import GovernanceError, write_refusal
        from mixai_pipeline.lib.serving.flags import set_flag

        engine = self.database.get_engine()
        try:
            with engine.begin() as conn:
                return set_flag(conn, key, enabled=enabled, rollout_percent=rollout_percent, actor=actor,
                                reason=reason)
        except GovernanceError as error:  # refused (not an operator allowed to): audited on its own
            with engine.begin() as conn:
                write_refusal(conn, error, actor=actor, action="feature_flag.change_refused",
                              target_type="feature_flag", target_id=key,
                              context={"enabled": enabled, "rollout_percent": rollout_percent, "reason": reason})
            raise
