"""Named presets (`dema-lab train --preset NAME`, `TrainConfig.from_preset`): one TOML file of flat
TrainConfig fields each, in this folder, named by the file's stem. Flags and --config still
override a preset's fields."""

from __future__ import annotations

import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load_presets(folder: Path = HERE) -> dict[str, dict]:
    """{name: flat fields} of every *.toml file in `folder`, in name order."""
    return {path.stem: tomllib.loads(path.read_text()) for path in sorted(folder.glob("*.toml"))}


PRESETS = load_presets()

# DT as its papers ran it (kzl/decision-transformer, gym and atari): tokens (R_t, s_t, a_t) with the
# current return-to-go, and a timestep embedding. The presets describe DeMa; a DT built from one (train
# --preset P --arch dt, or a sweep's DT points) takes these instead of DeMa's token conventions.
DT_PAPER = dict(token_order="RSA", rtg_form="current", timestep_embedding=True)


def preset_fields(name: str, arch: str | None = None) -> dict:
    """The flat TrainConfig fields of preset `name` for `arch` (default: the preset's own, DeMa);
    for DT with DT_PAPER's tokens on top."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    fields = {**PRESETS[name], **({"arch": arch} if arch else {})}
    return {**fields, **DT_PAPER} if fields.get("arch") == "dt" else fields
