"""python -m unlearn.report on a fabricated sweep of the evaluation schema: table rows and values, statuses of
unfinished runs, valid plots, Pareto front; one clear line for a bad directory. (The report on a real tiny
sweep is checked in test_sweeps.py, on the sweep it runs.)"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.conftest import REPO
from unlearn import report

FORGET_TASKS = ["wmdp_bio", "wmdp_cyber"]
RETAIN_TASKS = ["mmlu"]


def evaluation(forget: tuple[float, float], retain: float, drop: float, norm: float) -> dict:
    """An eval dict shaped like unlearn.evaluation.evaluate()'s, with the domain accuracies it stores."""
    task = lambda acc: {"acc": acc, "acc_stderr": 0.01, "acc_norm": acc, "acc_norm_stderr": 0.01, "n": 100}  # noqa: E731
    return {
        "lm_eval_version": "0.4.13",
        "forget_acc": (forget[0] + forget[1]) / 2, "retain_acc": retain,
        "settings": {"limit": None, "num_fewshot": 0, "batch_size": 16},
        "domains": {"forget": FORGET_TASKS, "retain": RETAIN_TASKS},
        "tasks": {"wmdp_bio": task(forget[0]), "wmdp_cyber": task(forget[1]), "mmlu": task(retain)},
        "robustness": {"position": "random", "insertions": 1, "seed": 0, "clean": retain, "perturbed": retain - drop,
                       "drop": drop, "keywords": {"virus": {"topic": "bio", "perturbed": retain - drop, "drop": drop}},
                       "tasks": {"mmlu": {"n": 100, "clean": retain, "perturbed": retain - drop, "drop": drop,
                                          "keywords": {"virus": retain - drop}}}},
        "probes": {"layer": 5, "forget": {"documents": 24, "tokens": 900, "mean_norm": norm,
                                          "cosine": {"bio": 0.5, "cyber": 0.3}, "confidence": 0.2},
                   "retain": {"documents": 24, "tokens": 800, "mean_norm": 40.0, "cosine": {"bio": 0.0, "cyber": 0.1},
                              "confidence": 0.6}},
        "from_cache": False,
    }


BEFORE = evaluation((0.60, 0.50), 0.58, 0.01, 40.0)


def make_run(sweep: Path, name: str, *, method: str, layer: int, status: str = "completed",
             coeff: float | None = None, beta: float | None = None, nu: float | None = None,
             after: dict | None = None, steps: int = 4, partial_line: bool = False, error: str | None = None) -> Path:
    run = sweep / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("[]\n")
    method_cfg = {"name": method, "alpha": 1200}
    if coeff is not None:
        method_cfg["steering_coeff"] = coeff
    if beta is not None:
        method_cfg["beta"] = beta
    if method == "rna":
        method_cfg.update(base="rmu", nu=nu, beta=5)
    config = {"model": {"name": "zephyr-7b-beta"}, "method": method_cfg, "layer": layer, "steps": steps, "lr": 5e-5,
              "seed": 42, "eval": {"name": "wmdp_mmlu", "forget_tasks": FORGET_TASKS, "retain_tasks": RETAIN_TASKS},
              "sweep": {"force": False}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "manifest.json").write_text(json.dumps({
        "status": status, "started": "2026-11-22T10:00:00+00:00", "ended": None if status == "running" else "x",
        "method": method, "layer": layer, "update_layers": [layer - 2, layer - 1, layer],
        "steering_coeffs": [coeff or (beta or 0) * 20.0], "error": error,
        "versions": {"python": "3.11.9", "torch": "2.13.0", "unlearn_git_sha": f"abc{layer}"}}))
    lines = [json.dumps({"step": i, "topic": "bio", "loss": 10.0 - i, "forget_loss": 9.0 - i, "retain_loss": 0.1 * i,
                         "step_time_s": 0.5}) for i in range(steps)]
    text = "\n".join(lines) + "\n" + ('{"step": 99, "topic": "bio", "lo' if partial_line else "")
    (run / "metrics.jsonl").write_text(text)
    if after is not None or status == "running":  # a running run keeps an earlier attempt's stale results.json
        stale = after or evaluation((0.0, 0.0), 0.0, 0.0, 0.0)
        training = {"steps": steps, "median_step_time_s": 0.5, "topics": {"bio": {
            "steering_coeff": coeff, "adaptive_norm": None, "first": {"loss": 10.0, "forget_loss": 9.0, "retain_loss": 0.0},
            "last": {"loss": 7.0, "forget_loss": 6.0, "retain_loss": 0.3}}}}
        (run / "results.json").write_text(json.dumps({"training": training, "before": BEFORE, "after": stale}))
    return run


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """RMU and Adaptive RMU on a 2x2 layer x coefficient grid, RNA over three nu, and unfinished runs."""
    sweep = tmp_path_factory.mktemp("sweep")
    for layer in (3, 5):
        for coeff in (5, 10):
            forget = 0.6 - 0.02 * coeff - 0.01 * layer
            make_run(sweep, f"layer={layer},method=rmu,method.steering_coeff={coeff}", method="rmu", layer=layer,
                     coeff=coeff, after=evaluation((forget, forget + 0.1), 0.55 - 0.004 * coeff, 0.10, 80.0 + coeff))
        for beta in (2, 5):
            if (layer, beta) == (5, 5):
                make_run(sweep, f"layer={layer},method=adaptive_rmu,method.beta={beta}", method="adaptive_rmu",
                         layer=layer, beta=beta, status="failed", steps=2, error="loss is NaN at step 1: lower lr")
                continue
            make_run(sweep, f"layer={layer},method=adaptive_rmu,method.beta={beta}", method="adaptive_rmu", layer=layer,
                     beta=beta, after=evaluation((0.3 - 0.02 * beta, 0.35), 0.56 - 0.01 * layer, 0.08, 100.0))
    for nu in (0.01, 0.05, 0.1):
        make_run(sweep, f"layer=5,method=rna,method.nu={nu}", method="rna", layer=5, coeff=10, nu=nu,
                 after=evaluation((0.3, 0.3), 0.52, 0.10 - 0.5 * nu, 90.0))
    make_run(sweep, "layer=7,method=rmu,method.steering_coeff=5", method="rmu", layer=7, coeff=5, status="running",
             steps=3, partial_line=True)
    (sweep / "layer=9,method=rmu,method.steering_coeff=5" / ".hydra").mkdir(parents=True)
    (sweep / "layer=9,method=rmu,method.steering_coeff=5" / ".hydra" / "overrides.yaml").write_text("[]\n")
    return sweep


@pytest.fixture(scope="module")
def rendered(sweep, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    assert report.main([str(sweep), "--output-dir", str(out)]) == 0
    with (out / "report.csv").open() as file:
        rows = {row["run"]: row for row in csv.DictReader(file)}
    return out, rows


def test_an_output_dir_that_cannot_be_written_is_one_line(sweep, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for out in (a_file, a_file / "below"):
        assert report.main([str(sweep), "--output-dir", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: could not write the report to {out} ("), err
        assert err[0].endswith("give --output-dir a folder you can write to")


def test_a_sweep_of_corpus_audits_is_named_as_such(tmp_path, capsys):
    for layer in (3, 5):
        audit = tmp_path / f"layer={layer}"
        audit.mkdir()
        (audit / "manifest.json").write_text(json.dumps({"status": "completed", "command": "audit", "layer": layer}))
        (audit / "audit.csv").write_text("topic,side,index,digest,flagged\n")
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path} holds corpus audits, not training runs: each audit's results are its audit.md "
                   "and audit.csv (the report tabulates `python -m unlearn --multirun ...` runs)"]
    assert not (tmp_path / "report.csv").exists()


def test_every_run_is_a_row_with_its_status(rendered):
    _, rows = rendered
    assert len(rows) == 4 + 4 + 3 + 2
    statuses = {name: row["status"] for name, row in rows.items()}
    assert statuses["layer=5,method=adaptive_rmu,method.beta=5"] == "failed"
    assert statuses["layer=7,method=rmu,method.steering_coeff=5"] == "running"
    assert statuses["layer=9,method=rmu,method.steering_coeff=5"] == "not started"
    assert sum(status == "completed" for status in statuses.values()) == 10


def test_values_come_from_results_config_and_manifest(rendered):
    _, rows = rendered
    row = rows["layer=3,method=rmu,method.steering_coeff=10"]
    forget = 0.6 - 0.2 - 0.03
    assert float(row["forget_acc_after"]) == pytest.approx((forget + forget + 0.1) / 2)  # mean of the forget tasks
    assert float(row["retain_acc_after"]) == pytest.approx(0.55 - 0.04)
    assert float(row["forget_acc_before"]) == pytest.approx(0.55) and float(row["retain_acc_before"]) == pytest.approx(0.58)
    assert float(row["robust_drop_after"]) == pytest.approx(0.10)
    assert float(row["probe_forget_norm_after"]) == pytest.approx(90.0)
    assert float(row["probe_forget_cos_after"]) == pytest.approx(0.4)
    assert float(row["acc_after/mmlu"]) == pytest.approx(0.51)
    assert (row["method"], row["layer"], row["coeff_key"], row["coeff"], row["model"]) == (
        "rmu", "3", "steering_coeff", "10", "zephyr-7b-beta")
    assert (row["git_sha"], row["versions"]) == ("abc3", "python=3.11.9 torch=2.13.0")
    assert float(row["final_forget_loss"]) == pytest.approx(6.0)
    adaptive = rows["layer=3,method=adaptive_rmu,method.beta=2"]
    assert (adaptive["coeff_key"], adaptive["coeff"]) == ("beta", "2")
    rna = rows["layer=5,method=rna,method.nu=0.05"]
    assert float(rna["nu"]) == 0.05 and float(rna["robust_drop_after"]) == pytest.approx(0.075)


def test_unfinished_runs_show_their_losses_not_stale_results(rendered):
    _, rows = rendered
    failed = rows["layer=5,method=adaptive_rmu,method.beta=5"]
    assert failed["error"] == "loss is NaN at step 1: lower lr" and failed["forget_acc_after"] == ""
    running = rows["layer=7,method=rmu,method.steering_coeff=5"]
    assert running["forget_acc_after"] == ""  # its results.json is from an earlier attempt
    assert running["steps_done"] == "3"  # the cut-off last line is skipped
    assert float(running["final_forget_loss"]) == pytest.approx(7.0)


def test_markdown_is_written_and_printed(sweep, tmp_path, capsys):
    assert report.main([str(sweep), "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    written = (tmp_path / "report.md").read_text()
    assert written in printed
    text = "\n".join(" ".join(line.split()) for line in written.splitlines())  # the table's cells are padded
    assert "| run | status | method | layer | coeff | nu | forget acc % |" in text
    assert "| layer=3,method=rmu,method.steering_coeff=10 | completed | rmu | 3 | 10 |" in text
    assert "55.0 -> 42.0" in text  # forget accuracy before -> after, in percent
    assert "| failed |" in text and "| running |" in text and "| not started |" in text
    assert "Code: unlearn `abc3`, `abc5`, `abc7`" in text and "Packages: `python=3.11.9 torch=2.13.0`" in text


@pytest.mark.parametrize("name", ["heatmap_rmu.png", "heatmap_adaptive_rmu.png", "pareto.png", "rna_robustness.png"])
def test_plots_are_real_images(rendered, name):
    out, _ = rendered
    path = out / name
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert path.stat().st_size > 10_000 and width > 400 and height > 200
    assert len(colours) > 50  # drawn content, not a blank canvas


def test_rna_plot_draws_one_line_per_swept_setting_on_a_nonnegative_axis(tmp_path, monkeypatch):
    """An RNA sweep over nu x lr: one line per lr, named by it; the symlog axis shows nu = 0 and no negative ticks."""
    for lr in (5e-3, 2e-2):
        for nu in (0, 0.1, 1, 10):
            run = make_run(tmp_path, f"lr={lr},method.nu={nu}", method="rna", layer=7, coeff=300, nu=nu,
                           after=evaluation((0.3, 0.3), 0.5, 0.2 - nu / 100, 90.0))
            config = yaml.safe_load((run / "config.yaml").read_text())
            (run / "config.yaml").write_text(yaml.safe_dump({**config, "lr": lr}))
    figures = []
    monkeypatch.setattr(report, "_save", lambda figure, path: figures.append(figure) or path)
    report.plot_rna(report.collect(tmp_path), tmp_path)
    axis = figures[0].axes[0]
    labels = sorted(line.get_label() for line in axis.get_lines() if line.get_label().startswith("RNA"))
    assert labels == ["RNA over rmu, layer 7, steering_coeff=300, lr=0.005",
                      "RNA over rmu, layer 7, steering_coeff=300, lr=0.02"]
    left, right = axis.get_xlim()
    assert left < 0 < 10 < right
    assert all(tick >= 0 for tick in axis.get_xticks() if left <= tick <= right)


def test_no_heatmap_for_a_method_run_at_one_layer_and_one_coefficient(rendered):
    out, _ = rendered
    assert not (out / "heatmap_rna.png").exists()  # RNA ran at layer 5, c = 10 only: nu is the RNA plot's axis


def test_pareto_front_by_hand():
    """(forget, retain): a=(10, 50) and c=(30, 70) are each best in one direction; b=(20, 40) is beaten by a
    (lower forget, higher retain); d=(30, 60) is beaten by c (same forget, higher retain)."""
    assert report.pareto_front([(10, 50), (20, 40), (30, 70), (30, 60)]) == [0, 2]


def run_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "unlearn.report", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "MPLBACKEND": "Agg"})


def test_bad_path_and_empty_directory_are_one_line(tmp_path):
    missing = run_report(str(tmp_path / "nope"))
    assert missing.returncode == 2 and missing.stderr.strip().count("\n") == 0
    assert missing.stderr.startswith("error: ") and "is not a directory" in missing.stderr
    empty = run_report(str(tmp_path))
    assert empty.returncode == 2 and empty.stderr.strip().count("\n") == 0
    assert "no runs in" in empty.stderr


def test_stored_accuracies_are_read(tmp_path):
    """forget_acc / retain_acc as the run stored them (0.9 / 0.1 here), not recomputed from its tasks (0.3, 0.7)."""
    stored = {**evaluation((0.2, 0.4), 0.7, 0.1, 80.0), "forget_acc": 0.9, "retain_acc": 0.1}
    make_run(tmp_path, "stored", method="rmu", layer=3, coeff=5, after=stored)
    rows = report.collect(tmp_path).set_index("run").to_dict("index")
    assert (rows["stored"]["forget_acc_after"], rows["stored"]["retain_acc_after"]) == (0.9, 0.1)


def test_a_run_whose_files_cannot_be_read_says_which_and_why(tmp_path):
    """A completed run whose results.json was cut short, or is gone, and a run whose manifest.json was cut short,
    are listed with the file and the reason, never as completed, and stay out of the plots."""
    after = evaluation((0.2, 0.4), 0.7, 0.1, 80.0)
    for name in ("cut", "gone", "fine"):
        make_run(tmp_path, name, method="rmu", layer=3, coeff=5, after=after)
    cut = tmp_path / "cut" / "results.json"
    cut.write_text(cut.read_text()[:40])
    (tmp_path / "gone" / "results.json").unlink()
    make_run(tmp_path, "torn", method="rmu", layer=5, coeff=5)
    (tmp_path / "torn" / "manifest.json").write_text('{"status": "compl')
    result = run_report(str(tmp_path))
    assert result.returncode == 0, result.stderr
    rows = {row["run"]: row for row in csv.DictReader((tmp_path / "report.csv").open())}
    assert rows["fine"]["status"] == "completed"
    assert rows["cut"]["status"].startswith("unreadable: results.json: Unterminated string")
    assert rows["gone"]["status"] == "unreadable: results.json: missing"
    assert rows["torn"]["status"].startswith("unreadable: manifest.json: Unterminated string")
    assert "1 completed" in result.stdout and "unreadable: results.json: missing" in result.stdout
