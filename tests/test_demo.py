"""End to end: `python -m unlearn` on the embedded SmolLM2 and the bundled demo, and the full pipeline on the
tiny model. These run the real command in a subprocess and read what it leaves behind."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import only_run_dir, unlearn


def test_full_pipeline_on_tiny_random_with_demo_eval(tmp_path):
    """Every stage on the tiny model: demo corpora, evaluation before and after, robustness, probes."""
    done = unlearn("model=tiny-random", "steps=4", "eval.limit=8", f"output_root={tmp_path / 'out'}")
    assert done.returncode == 0, done.stderr
    run = only_run_dir(tmp_path)
    results = json.loads((run / "results.json").read_text())
    for stage in ("before", "after"):
        evaluation = results[stage]
        assert set(evaluation["tasks"]) == {"demo_forget", "demo_retain"}
        assert all(0 <= t["acc"] <= 1 and t["n"] == 8 for t in evaluation["tasks"].values())
        assert evaluation["robustness"]["keywords"].keys() == {"virus", "bacteriophage", "viral replication", "pathogen"}
        assert evaluation["probes"]["forget"]["documents"] == 24
    assert results["training"]["steps"] == 4
    assert "demo_forget (forget)" in done.stdout and "robustness drop" in done.stdout


@pytest.mark.slow
def test_embedded_default_forgets_the_demo_domain_and_keeps_the_rest(tmp_path):
    """The default command on a reduced evaluation budget (60 questions per task, no robustness pass).

    The full default run drops demo_forget from 63.3% to 18.7% and keeps demo_retain at 60.7% (README); here
    the forget accuracy must fall by at least 15 points and the retain accuracy by at most 5, and the steered
    held-out forget activations must align with u while the retain ones don't."""
    done = unlearn("eval.limit=60", "eval.robustness.enabled=false", "save_model=false",
                   f"output_root={tmp_path / 'out'}", timeout=900)
    assert done.returncode == 0, done.stderr
    results = json.loads((only_run_dir(tmp_path) / "results.json").read_text())
    before, after = results["before"], results["after"]
    forget_before, forget_after = before["tasks"]["demo_forget"]["acc"], after["tasks"]["demo_forget"]["acc"]
    retain_before, retain_after = before["tasks"]["demo_retain"]["acc"], after["tasks"]["demo_retain"]["acc"]
    assert forget_before > 0.45  # the model knows the domain before
    assert forget_after <= forget_before - 0.15
    assert retain_after >= retain_before - 0.05
    assert after["probes"]["forget"]["cosine"]["virology"] > 0.5 > abs(after["probes"]["retain"]["cosine"]["virology"])
    assert after["probes"]["forget"]["confidence"] < before["probes"]["forget"]["confidence"]


@pytest.mark.slow
def test_embedded_default_reproduces_the_readme_figures(tmp_path):
    """`python -m unlearn` as it is (the README's figures, to the printed 0.1 point): demo_forget 63.3 -> 18.7,
    demo_retain 60.7 -> 60.7, robustness drop 2.5 -> 20.8. A change to how tasks are built or scored that moves
    any of them fails here."""
    done = unlearn("save_model=false", f"output_root={tmp_path / 'out'}", timeout=3600)
    assert done.returncode == 0, done.stderr
    results = json.loads((only_run_dir(tmp_path) / "results.json").read_text())

    def percent(stage, *keys):
        value = results[stage]
        for key in keys:
            value = value[key]
        return round(100 * value, 1)

    assert (percent("before", "tasks", "demo_forget", "acc"), percent("after", "tasks", "demo_forget", "acc")) == (63.3, 18.7)
    assert (percent("before", "tasks", "demo_retain", "acc"), percent("after", "tasks", "demo_retain", "acc")) == (60.7, 60.7)
    assert (percent("before", "robustness", "drop"), percent("after", "robustness", "drop")) == (2.5, 20.8)
