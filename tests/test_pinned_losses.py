"""Per-step losses pinned from the RM methods as first released, through the command line: a refactor of the
methods, the loop or the engine must leave every step's loss where it was (float32 rounding aside)."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import only_run_dir, unlearn

# (loss, forget_loss, retain_loss) of steps 0..5: model=tiny-random eval=none steps=6, seed 42.
PINNED = {
    "rmu": (
        (0.6590077877044678, 0.6590077877044678, 0.0),
        (0.6569859981536865, 0.6531935930252075, 0.0037923932541161776),
        (0.6566306352615356, 0.6554628610610962, 0.001167748006992042),
        (0.6604750156402588, 0.6574561595916748, 0.00301886978559196),
        (0.6611188054084778, 0.6587406992912292, 0.0023781172931194305),
        (0.6624853014945984, 0.660029947757721, 0.002455337205901742),
    ),
    "adaptive_rmu": (
        (0.08242389559745789, 0.08242389559745789, 0.0),
        (0.08410105109214783, 0.08035719394683838, 0.003743857378140092),
        (0.08154616504907608, 0.08109205961227417, 0.00045410392340272665),
        (0.08337835222482681, 0.08231528848409653, 0.0010630610631778836),
        (0.08373725414276123, 0.08250433206558228, 0.0012329192832112312),
        (0.08434989303350449, 0.0830901563167572, 0.0012597395107150078),
    ),
    "rna": (  # over rmu, nu = 0.5
        (298.72308349609375, 0.6590077877044678, 298.0640869140625),
        (302.9330139160156, 0.6556525230407715, 302.2773742675781),
        (300.5555419921875, 0.656868577003479, 299.898681640625),
        (299.9501953125, 0.6593453884124756, 299.2908630371094),
        (301.982421875, 0.6595116853713989, 301.3229064941406),
        (302.6484069824219, 0.6609247326850891, 301.98748779296875),
    ),
    "rna_adaptive": (  # over adaptive_rmu, nu = 0.5
        (298.1465148925781, 0.08242389559745789, 298.0640869140625),
        (302.3585510253906, 0.08122313022613525, 302.2773132324219),
        (299.97998046875, 0.08127632737159729, 299.8987121582031),
        (299.3724365234375, 0.08233834058046341, 299.29010009765625),
        (301.4056701660156, 0.0823376476764679, 301.3233337402344),
        (302.07049560546875, 0.08292004466056824, 301.9875793457031),
    ),
}
OVERRIDES = {
    "rmu": ["method=rmu"],
    "adaptive_rmu": ["method=adaptive_rmu"],
    "rna": ["method=rna", "method.nu=0.5"],
    "rna_adaptive": ["method=rna", "method.base=adaptive_rmu", "method.nu=0.5"],
}


@pytest.mark.parametrize("name", list(PINNED))
def test_per_step_losses_are_pinned(tmp_path, name):
    done = unlearn("model=tiny-random", "eval=none", "steps=6", "save_model=false", *OVERRIDES[name],
                   f"output_root={tmp_path / 'out'}")
    assert done.returncode == 0, done.stderr
    lines = (only_run_dir(tmp_path) / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == len(PINNED[name])
    for record, pinned in zip(records, PINNED[name]):
        got = (record["loss"], record["forget_loss"], record["retain_loss"])
        assert got == pytest.approx(pinned, rel=1e-5, abs=1e-7), record["step"]
