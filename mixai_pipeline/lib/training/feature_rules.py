"""The master rule in feature space: master parameters from a mix clip's feature vector.

``lib.dsp.master.estimate_master_params`` derives the master parameters from audio. Where only the mix's
feature vector (``features_store``, the ``master_reg`` model input) is at hand, this module applies the same
rule shapes to the features instead. One definition for two users: the synthetic training rows
(``synthetic.py``: their labels are this rule plus noise) and the serving fallback (``serving.py``: the
answer when the model cannot give one).

Rules, per row:

- shelves against the tonal balance: ``energy_ratio_low`` / ``energy_ratio_high`` over
  ``energy_ratio_mid`` in dB, relative to a typical mix (``REFERENCE_TILT_DB``), with a
  ``SHELF_DEAD_BAND_DB`` (1 dB) dead band, ``SHELF_CORRECTION`` (half) of the excess corrected, the opposite
  way, capped at the chain's ±6 dB. No energy in the mid band (silence): nothing to compare with, shelf 0. An
  empty outer band is as far below the reference as can be: the full +6 dB;
- compression from the crest factor: ``COMP_PER_DB · (crest_factor_db - CREST_DENSE_DB)`` within 0..6 dB;
- ``TARGET_LUFS`` (-14), every plan's target in ``lib.dsp.master.PLAN_TARGET_LUFS`` (the master input
  carries no plan).

The constants differ from the audio estimator's (3 dB tolerance against pink noise, peak-to-loudness ratio
above 12 dB): the feature extractor's bands (below 250 Hz, 250 Hz-4 kHz, above 4 kHz) and its sample-peak
crest factor are not the estimator's measurements, so its thresholds do not carry over one to one.
"""

from __future__ import annotations

import math

import numpy as np

from mixai_pipeline.lib.dsp.master import MAX_COMP_DB, MAX_SHELF_DB
from mixai_pipeline.lib.features.extract import DIM_NAMES

_INDEX = {name: i for i, name in enumerate(DIM_NAMES)}

TARGET_LUFS = -14.0
# Typical band shares of a pop mix (low 0.30, mid 0.58, high 0.12) as dB relative to the mid band.
REFERENCE_TILT_DB = {"low": 10 * math.log10(0.30 / 0.58), "high": 10 * math.log10(0.12 / 0.58)}
SHELF_DEAD_BAND_DB, SHELF_CORRECTION = 1.0, 0.5
CREST_DENSE_DB, COMP_PER_DB = 10.0, 0.5


def master_params_from_mix(mix: np.ndarray) -> np.ndarray:
    """(n, 4) master parameters [low_shelf_db, high_shelf_db, comp_db, target_lufs] (float64) from (n, 160)
    mix feature vectors, by the rules of the module docstring."""
    low, mid, high = (mix[:, _INDEX[f"energy_ratio_{b}"]].astype(np.float64) for b in ("low", "mid", "high"))

    def shelf(band: np.ndarray, reference: float) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            deviation = 10 * np.log10(band / mid) - reference
        deviation = np.where((mid > 0) & ~np.isnan(deviation), deviation, 0.0)
        excess = np.clip(np.abs(deviation) - SHELF_DEAD_BAND_DB, 0.0, None)
        return -np.sign(deviation) * np.minimum(SHELF_CORRECTION * excess, MAX_SHELF_DB)

    comp = np.clip(COMP_PER_DB * (mix[:, _INDEX["crest_factor_db"]] - CREST_DENSE_DB), 0.0, MAX_COMP_DB)
    return np.stack([shelf(low, REFERENCE_TILT_DB["low"]), shelf(high, REFERENCE_TILT_DB["high"]), comp,
                     np.full(len(mix), TARGET_LUFS)], axis=1)
