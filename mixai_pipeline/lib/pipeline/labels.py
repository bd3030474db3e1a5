"""Pseudo-labels (seed 000 §9), quality ``auto``.

- ``master_reg``: the four master parameters the rule-based chain derived for the job's raw mix
  ([low_shelf_db, high_shelf_db, comp_db, target_lufs]), i.e. the correction from raw mix to master.
- ``align_conf``: ``ok`` when alignment is confident (≥ 0.7, not the shared-start fallback, drift under
  1 %), ``warn`` when moderately so (≥ 0.4), else ``fail``.
- ``preset_cls``: a preset id by rules, always one the plan may use (else the plan's default):
    tempo ≥ 110 bpm and the vocal ≥ 3 LU above the instrumental → rap_tight;
    tempo < 80 bpm → night_chill if the vocal is dark (centroid < 1500 Hz), else warm_ballad;
    a bright vocal (centroid ≥ 2500 Hz) → airy_sparkle, then idol_bright;
    a vocal ≥ 6 LU below the instrumental → vocal_lift_lite;
    otherwise wide_pop, then studio_shine.
  The first candidate the plan allows wins; tempo is the manifest's bpm, else the instrumental's estimate.
"""

from __future__ import annotations

import math

from mixai_pipeline.lib.features.extract import DIM_NAMES
from mixai_pipeline.lib.mix.presets import catalog

_INDEX = {name: i for i, name in enumerate(DIM_NAMES)}


def align_conf_label(alignment: dict) -> str:
    drift = abs((alignment.get("tempo_ratio") or 1.0) - 1.0)
    confidence = alignment.get("confidence") or 0.0
    if confidence >= 0.7 and alignment.get("method") != "assume_shared_start" and drift < 0.01:
        return "ok"
    return "warn" if confidence >= 0.4 else "fail"


def _feature(vec: list[float], name: str) -> float:
    return float(vec[_INDEX[name]])


def preset_label(plan: str, inst_vec: list[float], vocal_vec: list[float], bpm: float | None) -> tuple[str, dict]:
    tempo = bpm or _feature(inst_vec, "tempo_bpm")
    centroid = _feature(vocal_vec, "spectral_centroid_mean")
    vocal_minus_inst = _feature(vocal_vec, "integrated_loudness_lufs") - _feature(inst_vec, "integrated_loudness_lufs")
    if not math.isfinite(vocal_minus_inst):
        vocal_minus_inst = 0.0
    candidates: list[str] = []
    if tempo >= 110 and vocal_minus_inst >= 3:
        candidates.append("rap_tight")
    if tempo < 80:
        candidates.append("night_chill" if centroid < 1500 else "warm_ballad")
    if centroid >= 2500:
        candidates += ["airy_sparkle", "idol_bright"]
    if vocal_minus_inst <= -6:
        candidates.append("vocal_lift_lite")
    candidates += ["wide_pop", "studio_shine"]
    allowed = catalog().allowed(plan)
    chosen = next((c for c in candidates if c in allowed), catalog().choose(plan, None).id)
    return chosen, {"tempo_bpm": round(tempo, 1), "vocal_centroid_hz": round(centroid, 1),
                    "vocal_minus_inst_lu": round(vocal_minus_inst, 2), "candidates": candidates}
