"""Where an uploaded vocal sits on its instrumental's timeline, and whether it drifts.

``align.align(inst, vocal, sr, *, max_offset_s=10.0, bpm_hint=None) -> AlignmentResult``. Inputs are
float ``(samples,)`` or ``(samples, channels)`` arrays of any lengths (downmixed internally); NaN/inf,
empty, non-float, more than 64 channels (a ``(channels, samples)`` array) or bad parameters raise
ValueError. Pure science: numpy, scipy, librosa; no dagster.

Conventions. An instant ``t`` (s) of the instrumental sounds at ``offset + tempo_ratio · t`` in the
vocal file. ``offset_ms > 0``: the vocal file starts later, so shift it earlier by ``offset_ms`` (drop
its first ``offset_ms``, as ``mix.vocal_chain.shift`` does); ``< 0``: it starts earlier. ``tempo_ratio``
is the slope of the DTW path, vocal seconds per instrumental second (> 1: the vocal runs slow and falls
progressively later; it is the reciprocal of vocal tempo / instrumental tempo);
``drift_ms_per_min = (tempo_ratio − 1) · 60 000``. ``confidence`` >= 0.5 means "trust the offset";
``as_dict()`` is JSON-safe (None for unknown or non-finite numbers).

Method, in order (every threshold is a constant in ``align.py``; the numbers quoted were measured on
chorales rendered with the demo renderer: piano, strings or organ accompaniment, choir soprano):

0. Input. Each stem is downmixed and resampled to ANALYSIS_SR = 16 kHz (scipy ``resample_poly``) in
   30 s chunks with 4096 samples of context, which equals whole-signal resampling without a
   full-rate mono copy. A stem whose RMS is below SILENCE_DBFS = -75 dBFS is silent: the answer is
   ``assume_shared_start`` with confidence 0 (16-bit dither is ≈ -96 dBFS; a real take is far above).

1. GCC-PHAT (shared content: the instrumental bleeding into the vocal mic). The cross-spectrum is
   summed over 30 s blocks of the instrumental (GCC_BLOCK_S), each against the vocal segment covering
   every lag up to ±max_offset_s, so lags are exact and memory is O(block + lag range); PHAT keeps the
   phase between 150 Hz and 7.5 kHz (below: hum and rumble; above: the 16 kHz band edge). Peak-to-
   sidelobe ratio, PSR = 20·log10((peak − mean) / std) of |correlation| over the lags outside ±1 ms
   of the peak (GCC_PEAK_EXCLUDE_MS, the peak's own lobe) that overlap at least half the shorter stem
   (MIN_OVERLAP_FRACTION). Accepted at GCC_PSR_ACCEPT_DB = 25 dB (≈ 18 σ); confidence rises from 0.5
   there to 1.0 at GCC_PSR_FULL_DB = 35 dB. Why 25: the largest of ~320 000 noise lags is ≈ 5 σ
   (14 dB); measured dry vocals reach 15.7–18.7 dB (20.7 dB on 3 s stems), while bleed at -35 dB gives
   39–44 dB (35 dB on 3 s stems) and at -20 dB 50–53 dB — always within 0.01 ms of the truth.

2. Rhythm + harmony cross-correlation (a dry vocal: nothing is shared but the music). Two curves over
   the lags (100 per second, ±max_offset_s, half the shorter stem overlapping):
   - rhythm: librosa ``onset_strength`` (spectral flux of a 64-band log-mel, 64 ms windows, 10 ms
     hop) of both stems, mean removed, normalised cross-correlation. The first 8 frames of each file
     are zeroed: a file that starts mid-sound would get an onset at 0 s and a false match at lag 0;
   - harmony: chroma (librosa chroma filter bank, 256 ms windows, 25 frames/s) as pitch-class
     distributions, rests (more than 40 dB below the stem's 95th-percentile frame energy) zeroed; the
     vocal's classes against the instrumental's mapped through a consonance kernel (CONSONANCE: +1 for
     unison/octave, thirds, sixths, fourth, fifth; −1 for seconds, sevenths, tritone; centred).
   Each curve is standardised over the lags (median removed, divided by its std) and the two summed.
   Why both: onset cross-correlation alone locks one or two beats off whenever the rhythm is even (in
   the chorales the ±1–2-beat onset peaks reached 94–99 % of the true one), and plain chroma similarity
   of a melody against its accompaniment does not peak at the truth at all (the soprano often holds
   the chord's root while the others hold its third and fifth); consonance does, by 30 % over ±1–3
   beats, because chords change on the beat (the true lag scored ≥ 1.38× the best of ±1–3 beats).
   Beat guard: the beat period comes from ``bpm_hint`` or librosa's tempo estimate on (at most) the
   middle 60 s of the instrumental. Rivals are the curve's peaks at least half a beat (or 150 ms) from
   the best; ``beat_ambiguity`` = best rival one beat away (±15 % of a hinted period; anywhere from
   half to twice an estimated one, as estimates are often off by 2× or 1.5× — measured 122 and 130 bpm
   for 92 bpm strings and organ) / best; ``onset_peak_ratio`` = best / best rival anywhere. With
   ambiguity = max(beat_ambiguity, 1 / onset_peak_ratio): at or above BEAT_AMBIGUITY_REJECT = 0.75 the
   answer is not trusted (``assume_shared_start``); from BEAT_AMBIGUITY_WARN = 0.65 it is ambiguous
   (confidence 0.55), below it clear (0.75). Why: on 30–200 s excerpts of the three chorales (offsets
   ±250 and 700 ms, with and without a bpm hint) every answer that had slipped by part of a beat or
   more scored >= 0.807, correct ones 0.46–0.82 (so some correct ones are thrown away — the safe side).
   ONSET_MIN_OVERLAP_S = 30: on 10–20 s excerpts slipped answers scored as low as 0.71, so with less
   than 30 s of music overlapping the method is not trusted at all.
   The chosen lag is refined within ±40 ms (FINE_SEARCH_S) on onset envelopes of the mel bands above
   1 kHz (ATTACK_FMIN_HZ: upper partials, consonants and hammers start abruptly where a pipe's or a
   bow's fundamental builds slowly); if the best is at the edge of that window the coarse lag stays.
   Measured error on full-length dry vocals: −14.6 to +3.7 ms, a bias set by the two sounds' attacks
   (piano ≈ +2 ms, organ ≈ −12 ms, strings ≈ −14 ms against the choir).

3. Drift: DTW on the offset-corrected vocal. Per 100 ms frame (DTW_FPS), a context of ±6 s (CONTEXT_S)
   around it: the onset envelope (smoothed by a 40 ms Gaussian, 25 samples/s, mean removed) and the
   pitch classes (5 per second; the instrumental's through the consonance kernel), each unit norm and
   side by side, so a cell's cost is 1 − the mean of the two local correlations. Why not chroma alone,
   as first planned: on the chorales chroma DTW wandered 0.7–0.8 s (mean) from the truth and missed a
   0.5 % drift by up to 0.022; rhythm context alone slipped by whole beats over passages and, in a wide
   band, by the chorales' repeated phrases (7.9 s); both together stay on the truth. Frames whose
   context is near-silent (norm below 10 % of the 90th percentile) cost 1.
   The band (Sakoe-Chiba) is |i − j| <= radius, radius = offset uncertainty (10 ms after GCC-PHAT,
   100 ms after onsets, max_offset_s after a shared-start assumption) + 0.5 s + MAX_DRIFT = 1 % of the
   duration. ``librosa.sequence.dtw`` allocates the full n × m cost and accumulated cost (float64) and
   step (int32) arrays whatever ``band_rad`` says (20 bytes a cell: 2.9 GB for 20 minutes at 10 frames/s,
   2.1 GB for 4 minutes at librosa's default 43 frames/s), so ``banded_dtw`` here keeps one int8 step code
   per band cell plus two cost rows: O(n × band) memory; it matches librosa's DTW exactly (same path,
   same cost) on the same band. Step pattern symmetric2 (diagonal weight 2), open end (last row or
   column), so ``dtw_cost`` = accumulated cost / (i + j + 1) is the mean cost per unit weight, in [0, 1].
   Slope: a repeated-medians line (Siegel, 50 % breakdown; at most 1000 points) through the path cells
   where both contexts are active and inside their files, inliers within 1.5 frames (a beat slip is an
   outlier); every 1 s along the inliers the vocal time is refined by a local onset correlation (±3 s
   windows, lags ±200 ms, peak correlation >= 0.3) and a second robust line (inliers within 30 ms)
   gives ``tempo_ratio``. It is reported only if at least half the path is inlier (``drift_inliers``,
   DRIFT_MIN_INLIERS; unrelated audio gave 0.12–0.19, the rendered pairs 0.70–1.0) and within MAX_DRIFT of 1,
   and only over at least 10 s of path (MIN_DRIFT_SPAN_S). Measured: within 1e-4 of the truth (±0.5 %
   drift, no drift, dry or bleed).
   If the drift accumulates DRIFT_REESTIMATE_MS = 20 ms or more over the instrumental and the offset
   did not come from GCC-PHAT (whose acceptance already proves a coherent alignment), the offset
   estimators assume a constant lag and find it mid-file, so they run again on the vocal with its
   drift undone (resampled by the ratio) and that answer is taken (offset scaled back to vocal time).

4. Otherwise ``assume_shared_start``: offset 0, confidence 0.1 (ASSUMED_CONFIDENCE): stems exported
   from one session usually do share a start, but nothing here says so.

Known limits: bleed and drift together — GCC-PHAT loses coherence (a ratio error of 2.5e-4 over 80 s
is enough) and the offset then comes from onsets (±15 ms); dry stems shorter than 30 s get no offset.
Memory (20 minutes, stereo 44.1 kHz, 2 × 423 MB input): 354 MB traced peak inside ``align``, ≈ 12 s.
"""
