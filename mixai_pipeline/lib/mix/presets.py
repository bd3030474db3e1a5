"""The 12 vocal-mix presets (``presets.yaml``, as the product defines them) and which plan may use which.

``presets.yaml`` is the product's own table (kept in sync with ``shared/reference/mix_presets.yaml``);
it is validated on load so that a typo fails loudly, not as a silent default.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

PRESETS_FILE = Path(__file__).with_name("presets.yaml")


class EqBand(BaseModel):
    model_config = ConfigDict(frozen=True)
    hz: float = Field(gt=0)
    gain_db: float = Field(ge=-24, le=24)
    q: float = Field(gt=0)


class Preset(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    category: str
    hpf_hz: float = Field(gt=0)
    lpf_hz: float | None = Field(default=None, gt=0)
    deesser: float = Field(ge=0, le=10)
    threshold_db: float
    ratio: float = Field(ge=1)
    attack_ms: float = Field(gt=0)
    release_ms: float = Field(gt=0)
    eq: tuple[EqBand, ...]
    reverb_decay: float = Field(ge=0, le=1)
    reverb_mix: float = Field(ge=0, le=1)
    vocal_weight: float = Field(gt=0, le=1)
    inst_weight: float = Field(gt=0, le=1)


class PresetCatalog(BaseModel):
    model_config = ConfigDict(frozen=True)
    presets: dict[str, Preset]
    plans: dict[str, tuple[str, ...]]
    default_preset: dict[str, str]

    @model_validator(mode="after")
    def _consistent(self) -> PresetCatalog:
        for plan, ids in self.plans.items():
            unknown = set(ids) - set(self.presets)
            if unknown:
                raise ValueError(f"plan {plan} names unknown presets {sorted(unknown)}")
            if self.default_preset.get(plan) not in ids:
                raise ValueError(f"plan {plan}: default preset must be one of its presets")
        return self

    def allowed(self, plan: str) -> tuple[str, ...]:
        """Presets a plan may use; the free trial gets the lite set."""
        return self.plans[self._plan_key(plan)]

    def choose(self, plan: str, requested: str | None) -> Preset:
        """The manifest's preset when the plan allows it, else the plan's default; unknown ids are refused."""
        if requested is not None:
            if requested not in self.presets:
                raise ValueError(f"unknown preset {requested!r} (known: {', '.join(sorted(self.presets))})")
            if requested not in self.allowed(plan):
                raise ValueError(f"preset {requested!r} is not available on the {plan} plan "
                                 f"(available: {', '.join(self.allowed(plan))})")
            return self.presets[requested]
        return self.presets[self.default_preset[self._plan_key(plan)]]

    def _plan_key(self, plan: str) -> str:
        return "lite" if plan == "freetrial" else plan


@functools.lru_cache(maxsize=1)
def catalog() -> PresetCatalog:
    raw = yaml.safe_load(PRESETS_FILE.read_text(encoding="utf-8"))
    presets = {}
    for preset_id, p in raw["presets"].items():
        threshold, ratio, attack, release = p["compressor"]
        decay, mix = p["reverb"]
        presets[preset_id] = Preset(
            id=preset_id, category=p["category"], hpf_hz=p["hpf_hz"], lpf_hz=p["lpf_hz"], deesser=p["deesser"],
            threshold_db=threshold, ratio=ratio, attack_ms=attack, release_ms=release,
            eq=tuple(EqBand(hz=hz, gain_db=g, q=q) for hz, g, q in p["eq"]),
            reverb_decay=decay, reverb_mix=mix, vocal_weight=p["vocal_weight"], inst_weight=p["inst_weight"])
    return PresetCatalog(presets=presets, plans={k: tuple(v) for k, v in raw["plans"].items()},
                         default_preset=raw["default_preset"])


PRESET_IDS: tuple[str, ...] = tuple(catalog().presets)  # the label set of preset_cls
