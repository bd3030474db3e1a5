"""The serving loop: feature flags, sticky A/B buckets, the model or the rules per job, online metrics,
the rollout controller and alerts."""
