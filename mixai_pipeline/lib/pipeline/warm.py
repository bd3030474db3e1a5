"""Imported by the stage workers' forkserver: every stage's science once on a second of noise, so that
lazily compiled and lazily loaded code (librosa's numba kernels, filter designs, FFT plans) is in memory
before the workers fork from it, instead of being loaded again by every worker of every stage."""

import numpy as np

from mixai_pipeline.lib.alignment.align import align
from mixai_pipeline.lib.dsp.master import estimate_master_params, master
from mixai_pipeline.lib.features.extract import extract_features
from mixai_pipeline.lib.mix.presets import catalog
from mixai_pipeline.lib.mix.vocal_chain import mix
from mixai_pipeline.lib.preview.preview import representative_excerpt


def warm_up(sr: int = 44_100) -> None:
    noise = np.random.default_rng(0).standard_normal((2 * sr, 2)).astype(np.float32) * 0.1
    mixed = mix(noise, noise, sr, catalog().choose("standard", None)).audio
    master(mixed, sr, estimate_master_params(mixed, sr, "standard"))
    extract_features(noise, sr)
    mono = noise[::2, 0].copy()
    representative_excerpt(mono, 22_050)
    align(mono, mono, 22_050)


warm_up()
