"""Multiruns as a user meets them: real sweeps as subprocesses on the tiny model, each with its own
hydra.sweep.dir under tmp_path. Names from overrides, resume after a kill, a failing job, the joblib launcher,
the report on a real sweep; plus the naming and resume rules on their own."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.types import RunMode
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import REPO
from tests.test_cli import _start_and_wait_for_steps
from unlearn.cli import CONF_DIR, config_loader, job_composer, precheck
from unlearn.errors import UnlearnError
from unlearn.sweep import already_completed, job_outcomes, planned_jobs, record_job, run_name

SAFE_NAME = re.compile(r"^[A-Za-z0-9._+@%=,~-]+$")


def unlearn(*args: str, module: str = "unlearn") -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


def sweep_args(sweep: Path, corpus_files, *extra: str) -> list[str]:
    forget, retain = corpus_files
    return ["--multirun", "model=tiny-random", "data=local", f"data.forget_path={forget}",
            f"data.retain_path={retain}", "eval=none", "steps=2", f"hydra.sweep.dir={sweep}", *extra]


def run_dirs(sweep: Path) -> dict[str, Path]:
    return {path.parent.name: path.parent for path in sweep.glob("*/.hydra")}


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def record(run_dir: Path) -> tuple[str, str, int]:
    """What a rerun would change: the manifest, the metrics and the metrics file's write time."""
    metrics = run_dir / "metrics.jsonl"
    return (run_dir / "manifest.json").read_text(), metrics.read_text(), metrics.stat().st_mtime_ns


def test_joblib_sweep_names_runs_and_resumes_only_unfinished_jobs(tmp_path, corpus_files):
    sweep = tmp_path / "sweep"
    args = sweep_args(sweep, corpus_files, "layer=3,5", "method.steering_coeff=5,10",
                      "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")

    first = unlearn(*args)
    assert first.returncode == 0, first.stderr
    runs = run_dirs(sweep)
    assert len(runs) == 4 and all(SAFE_NAME.match(name) for name in runs)
    for layer in (3, 5):
        for coeff in (5, 10):
            (name,) = [n for n in runs if f",layer={layer}," in n and f",method.steering_coeff={coeff}," in n]
            assert manifest(runs[name])["status"] == "completed" and manifest(runs[name])["layer"] == layer
    assert f"Sweep {sweep}: 4 completed, 0 skipped, 0 failed" in first.stdout
    assert not list(sweep.rglob("wandb")) and not list(sweep.rglob("model"))  # logger=none; no models in a sweep
    (first_id,) = {manifest(run)["sweep_invocation"] for run in runs.values()}
    before = {name: record(run) for name, run in runs.items()}

    second = unlearn(*args)
    assert second.returncode == 0, second.stderr
    assert f"Sweep {sweep}: 0 completed, 4 skipped, 0 failed" in second.stdout
    assert second.stdout.count("Skipping ") == 4 and "Training" not in second.stdout
    assert {name: record(run) for name, run in runs.items()} == before  # a skip rewrites nothing of the run's
    skipped = [json.loads(path.read_text()) for path in (sweep / ".invocations").glob("*/job-*.json")
               if path.parent.name != first_id]
    assert sorted(job["run"] for job in skipped) == sorted(runs) and {job["outcome"] for job in skipped} == {"skipped"}

    # A sweep killed mid-run leaves a "running" manifest (SIGKILL) or none (killed before the job wrote one).
    killed, never_recorded, *finished = sorted(runs)
    state = manifest(runs[killed])
    (runs[killed] / "manifest.json").write_text(json.dumps({**state, "status": "running", "ended": None}))
    (runs[never_recorded] / "manifest.json").unlink()

    third = unlearn(*args)
    assert third.returncode == 0, third.stderr
    assert f"Sweep {sweep}: 2 completed, 2 skipped, 0 failed" in third.stdout
    assert f"Redoing {runs[killed]}: its previous attempt is running" in third.stdout
    for name in (killed, never_recorded):
        assert manifest(runs[name])["status"] == "completed" and manifest(runs[name])["sweep_invocation"] != first_id
        assert len((runs[name] / "metrics.jsonl").read_text().splitlines()) == 2  # rewritten, not appended
    assert {name: record(runs[name]) for name in finished} == {name: before[name] for name in finished}


def test_failed_job_is_recorded_the_others_complete_and_the_sweep_exits_nonzero(tmp_path, corpus_files):
    """A batch too large for the 40-document corpus passes the start-up check (the corpora are read in the job)
    and fails inside its job: Hydra records it as failed, runs the others, then exits non-zero."""
    sweep = tmp_path / "sweep"
    done = unlearn(*sweep_args(sweep, corpus_files, "layer=3,7", "batch_size=2,21", "method.steering_coeff=5"))
    assert done.returncode == 1
    runs = run_dirs(sweep)
    failed = sorted(name for name in runs if "batch_size=21" in name)
    assert len(runs) == 4 and len(failed) == 2
    for name, run in runs.items():
        state = manifest(run)
        if name in failed:
            assert state["status"] == "failed" and "batch_size=21 needs 42" in state["error"]
        else:
            assert state["status"] == "completed" and (run / "results.json").exists()
    summary = [line for line in done.stdout.splitlines() if line.startswith(f"Sweep {sweep}:")]
    assert summary == [f"Sweep {sweep}: 2 completed, 0 skipped, 2 failed ({', '.join(failed)})"]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2 and all("needs 42: lower steps or batch_size" in line for line in errors)
    assert "Traceback" not in done.stderr and "hydra.sweep.dir=" in done.stderr  # how to redo the failed ones
    assert len({manifest(run)["sweep_invocation"] for run in runs.values()}) == 1

    # The report of this real sweep: every job a row, the failed ones with their error; loss heatmaps (no eval).
    shown = unlearn(str(sweep), module="unlearn.report")
    assert shown.returncode == 0, shown.stderr
    with (sweep / "report.csv").open() as file:
        rows = {row["run"]: row for row in csv.DictReader(file)}
    assert {name: row["status"] for name, row in rows.items()} == {
        name: "failed" if name in failed else "completed" for name in runs}
    for name, row in rows.items():
        if name in failed:
            assert "batch_size=21 needs 42" in row["error"] and row["final_forget_loss"] == ""
        else:
            assert row["steps_done"] == "2" and float(row["final_forget_loss"]) > 0 and row["coeff"] == "5"
    assert re.search(r"\| failed +\|", shown.stdout)  # the table's cells are padded to their column's width
    assert (sweep / "report.md").read_text() in shown.stdout
    with Image.open(sweep / "heatmap_rmu.png") as image:
        assert image.size[0] > 400 and len(image.convert("RGB").getcolors(1 << 20)) > 50
    assert not (sweep / "pareto.png").exists()  # nothing evaluated, nothing to trade off


def test_a_second_invocation_on_a_running_sweep_is_refused(tmp_path, corpus_files):
    """While one invocation holds the sweep directory, another gets one line and exit 2 and runs no job."""
    import fcntl

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    with open(sweep / ".sweep.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # stands in for a running `--multirun`
        refused = unlearn(*sweep_args(sweep, corpus_files, "layer=3,7"))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [(
        f"error: another `python -m unlearn --multirun` is running in {sweep}: wait for it to end, or give this "
        "sweep its own hydra.sweep.dir=...")]
    assert "Traceback" not in refused.stderr and not run_dirs(sweep)
    done = unlearn(*sweep_args(sweep, corpus_files, "layer=3,7"))  # released: the lock file left behind is inert
    assert done.returncode == 0, done.stderr
    assert len(run_dirs(sweep)) == 2


def test_a_bad_value_anywhere_in_a_sweep_stops_it_before_any_job(tmp_path, corpus_files):
    """The start-up check composes every job of the sweep, not only the first: one line naming the job and its
    swept values, exit 2, no sweep directory."""
    sweep = tmp_path / "sweep"
    refused = unlearn(*sweep_args(sweep, corpus_files, "layer=1,99"))
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: job 2 of 2 of the sweep (layer=99): layer=99 is outside this model's blocks: choose 0..11"]
    assert not sweep.exists()


def test_submitit_sweep_completes_and_resumes(tmp_path, corpus_files):
    """The SLURM launcher's code path (submitit, each job in its own process, run locally): the jobs see the
    invocation's id, the summary counts them, and the same command skips them."""
    sweep = tmp_path / "sweep"
    args = sweep_args(sweep, corpus_files, "layer=3,7", "hydra/launcher=submitit_local")
    first = unlearn(*args)
    assert first.returncode == 0, first.stderr
    runs = run_dirs(sweep)
    assert len(runs) == 2 and {manifest(run)["status"] for run in runs.values()} == {"completed"}
    assert len({manifest(run)["sweep_invocation"] for run in runs.values()}) == 1
    assert f"Sweep {sweep}: 2 completed, 0 skipped, 0 failed" in first.stdout
    again = unlearn(*args)
    assert again.returncode == 0, again.stderr
    assert f"Sweep {sweep}: 0 completed, 2 skipped, 0 failed" in again.stdout


def test_submitit_sweep_with_a_failed_job_exits_nonzero(tmp_path, corpus_files):
    sweep = tmp_path / "sweep"
    done = unlearn(*sweep_args(sweep, corpus_files, "batch_size=21", "hydra/launcher=submitit_local"))
    assert done.returncode == 1
    (run,) = run_dirs(sweep).values()
    assert manifest(run)["status"] == "failed" and "needs 42" in manifest(run)["error"]
    assert f"Sweep {sweep}: 0 completed, 0 skipped, 1 failed ({run.name})" in done.stdout
    assert "Traceback" not in done.stderr


def test_sigint_inherited_as_ignored_interrupts_a_sweep(tmp_path, corpus_files):
    """A multirun started from a background job (SIGINT ignored) still ends its running job as interrupted on
    SIGINT, exits 130, and prints the summary of what it did."""
    sweep = tmp_path / "sweep"
    process, run = _start_and_wait_for_steps(
        sweep_args(sweep, corpus_files, "steps=100000", "data.cycle=true", "layer=3,5"), tmp_path, sigint_ignored=True)
    process.send_signal(signal.SIGINT)
    stdout, _ = process.communicate(timeout=60)
    assert process.returncode == 130
    assert manifest(run)["status"] == "interrupted" and len(run_dirs(sweep)) == 1  # the second job never started
    assert f"Sweep {sweep}: 0 completed, 0 skipped, 1 failed ({run.name})" in stdout


# ---------------------------------------------------------------------------------------------------------
# The rules on their own


def test_run_names_are_readable_safe_and_distinct():
    exclude = ["sweep", "logger", "save_model", "output_root"]
    assert run_name(["method.steering_coeff=10", "layer=5", "logger.mode=offline", "sweep.force=true"],
                    exclude) == "layer=5,method.steering_coeff=10"
    paths = run_name(["data.forget_path=/a/forget.jsonl"], exclude), run_name(["data.forget_path=/b/forget.jsonl"], exclude)
    assert paths[0].startswith("data.forget_path=forget.jsonl~") and paths[0] != paths[1]
    lists = run_name(["method.alpha=[1,2]"], exclude), run_name(["method.alpha=[12]"], exclude)
    assert all(SAFE_NAME.match(name) for name in lists) and lists[0] != lists[1]
    assert run_name(["lr=1e-3"], exclude) == run_name(["lr=0.001"], exclude) == "lr=0.001"
    long = run_name([f"k{i}=value_{i}" for i in range(40)], exclude)
    assert len(long) <= 200 and SAFE_NAME.match(long)
    assert run_name([], exclude) == "default"


def composed(*overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=["model=tiny-random", *overrides])


def test_resume_compares_the_resolved_config_but_not_keys_that_dont_change_results(tmp_path):
    def completed_run(cfg) -> Path:
        (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        (tmp_path / "manifest.json").write_text(json.dumps({"status": "completed"}))
        return tmp_path

    run = completed_run(composed("layer=5", "lr=1e-3"))
    assert already_completed(composed("layer=5", "lr=0.001"), run)
    assert already_completed(composed("layer=5", "lr=1e-3", "logger=wandb", "output_root=/elsewhere"), run)
    assert not already_completed(composed("layer=5", "lr=1e-3", "sweep.force=true"), run)
    assert not already_completed(composed("layer=6", "lr=1e-3"), run)
    assert not already_completed(composed("layer=5", "lr=1e-3", "method.alpha=100"), run)
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "interrupted"}))
    assert not already_completed(composed("layer=5", "lr=1e-3"), run)


def test_resume_treats_a_whole_number_written_without_a_point_as_the_same_setting(tmp_path):
    """Runs recorded before the schema typed method.beta wrote `beta: 5`; the schema now writes `5.0`."""
    cfg = composed("method=adaptive_rmu")
    old = OmegaConf.to_container(cfg, resolve=True)
    old["method"]["beta"] = 5
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(old)))
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "completed"}))
    assert "beta: 5\n" in (tmp_path / "config.yaml").read_text()
    assert already_completed(cfg, tmp_path)
    assert not already_completed(composed("method=adaptive_rmu", "method.beta=6"), tmp_path)


def test_resume_reads_an_older_run_through_todays_schemas(tmp_path):
    """A run written before the data schema gave corpora `split`/`raw_lines`/`name` and references a
    `text_field` did not record them: it ran with those same defaults and is not redone."""
    cfg = composed("data=demo")
    old = OmegaConf.to_container(cfg, resolve=True)
    for topic in old["data"]["topics"].values():
        topic["reference"].pop("text_field")
        for side in ("forget", "retain"):
            for key in ("name", "split", "raw_lines"):
                topic[side].pop(key)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(old)))
    (tmp_path / "manifest.json").write_text(json.dumps({"status": "completed"}))
    assert already_completed(cfg, tmp_path)
    assert not already_completed(composed("data=demo", "data.topics.virology.forget.max_length=128"), tmp_path)


def test_a_sweep_is_checked_job_by_job_as_hydras_basic_sweeper_runs_it():
    """Jobs in the basic sweeper's order: an experiment preset's hydra.sweeper.params first (its first key
    varies slowest), then the command line's sweeps; a bad value in the preset's params is named."""
    with config_loader() as loader:
        master = loader.load_configuration("config", ["experiment=smollm2_rna_po_sweep", "model=tiny-random",
                                                      "seed=range(1,3)"], run_mode=RunMode.MULTIRUN)
        jobs, swept = planned_jobs(loader, master)
    assert swept == ["method.nu", "method.base", "seed"] and len(jobs) == 16
    assert [[o for o in job if o.partition("=")[0] in swept] for job in jobs[:3]] == [
        ["method.nu=0", "method.base=npo", "seed=1"], ["method.nu=0", "method.base=npo", "seed=2"],
        ["method.nu=0", "method.base=simnpo", "seed=1"]]
    with pytest.raises(UnlearnError, match=r"^job 4 of 14 of the sweep \(method=rmu, layer=15\): layer=15 is outside"):
        precheck(["experiment=smollm2_layer_sweep", "model=tiny-random", "eval=none"])
    precheck(["model=tiny-random", "eval=none", "layer=range(0,12)"], multirun=True)  # every block is fine


# Hydra's own multirun on conf/ with a task that does nothing: Hydra records in each job's .hydra/ the overrides
# and the config it handed the task, which is what the pre-check must have checked.
HYDRA_JOBS_ONLY = """
import hydra
from unlearn.cli import CONF_DIR  # registers the config schemas and the run-name resolver

@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def job(cfg):
    pass

job()
"""


def prechecked_configs(overrides: list[str]) -> list[tuple[list[str], str]]:
    """Each job's overrides and config (YAML) as the pre-check composes and checks them."""
    with config_loader() as loader:
        master = loader.load_configuration("config", overrides, run_mode=RunMode.MULTIRUN,
                                           validate_sweep_overrides=False)
        jobs, swept = planned_jobs(loader, master)
        compose_job = job_composer(loader, master, swept)
        return [(job, OmegaConf.to_yaml(compose_job(job))) for job in jobs]


def test_the_prechecked_config_of_every_job_is_the_one_hydra_hands_it(tmp_path):
    """A sweep mixing a swept group choice, a plain key given both in an experiment preset's hydra.sweeper.params
    and on the command line, the preset's other swept key, range(...) and a swept +new_key addition: the
    pre-check's jobs are Hydra's jobs in Hydra's order, each with the very config Hydra handed it."""
    sweep = tmp_path / "sweep"
    overrides = ["experiment=smollm2_rna_po_sweep", "model=tiny-random", "method.nu=1", "eval=none,demo",
                 "seed=range(1,3)", "+note=a,b"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", HYDRA_JOBS_ONLY, "--multirun", *overrides,
                           f"hydra.sweep.dir={sweep}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    launched = {}
    for record in sweep.glob("*/.hydra"):
        number = OmegaConf.load(record / "hydra.yaml").hydra.job.num
        launched[number] = (list(OmegaConf.load(record / "overrides.yaml")), (record / "config.yaml").read_text())
    prechecked = prechecked_configs(overrides)
    assert len(prechecked) == 16 and sorted(launched) == list(range(16))
    assert [launched[number][0] for number in range(16)] == [job for job, _ in prechecked]
    for number, (job, config) in enumerate(prechecked):
        assert launched[number][1] == config, job
    assert {"method.nu=1", "+note=b", "eval=demo", "seed=2"} <= set(prechecked[-1][0])


def test_a_swept_key_that_another_override_also_sets_is_applied_in_hydras_order():
    """Hydra applies plain-key overrides in command-line order, so a swept value applied after the rest would
    be wrong here: the later `method={...}` and `++layer=...` win, as in the config Hydra composes."""
    overrides = ["model=tiny-random", "method.steering_coeff=10,20", "method={steering_coeff:5}", "layer=3,5",
                 "++layer=7", "seed=1,2"]
    with config_loader() as loader:
        master = loader.load_configuration("config", overrides, run_mode=RunMode.MULTIRUN,
                                           validate_sweep_overrides=False)
        jobs, swept = planned_jobs(loader, master)
        compose_job = job_composer(loader, master, swept)
        for job in jobs:
            cfg = compose_job(job)
            assert (cfg.method.steering_coeff, cfg.layer, cfg.seed) == (5, 7, int(job[-1][-1])), job


def test_the_precheck_uses_only_hydras_public_interface():
    """Private Hydra modules (hydra._internal, ...) move between releases: a sweep must not break on one."""
    private = re.compile(r"\bhydra\._\w+|\.repository\b|_apply_overrides_to_config|split_arguments")
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for path in sorted((REPO / "unlearn").rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1) if private.search(line)]
    assert not found, found


def test_outcomes_are_those_of_one_invocation_whatever_the_clocks_say(tmp_path):
    """An earlier invocation's records and runs are not counted, even with file times from the future (another
    node's clock); a run this invocation started but never saw end counts as failed."""
    def job_dir(name: str, status: str, invocation: str) -> Path:
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text(json.dumps({"status": status, "sweep_invocation": invocation}))
        future = time.time() + 3600
        os.utime(tmp_path / name / "manifest.json", (future, future))
        return tmp_path / name

    old, new = "earlier", "this"
    done, skipped, failed, killed = (job_dir("a", "completed", new), job_dir("b", "completed", old),
                                     job_dir("c", "failed", new), job_dir("d", "running", new))
    job_dir("e", "completed", old)  # not part of this invocation's sweep
    record_job(tmp_path, old, 0, skipped, "completed")
    record_job(tmp_path, new, 0, done, "completed")
    record_job(tmp_path, new, 1, skipped, "skipped")
    record_job(tmp_path, new, 2, failed, "failed")
    assert job_outcomes(tmp_path, new) == {"completed": [done], "skipped": [skipped], "failed": [failed, killed]}


EXCLUDE_KEYS = "hydra.job.config.override_dirname.exclude_keys"


def test_exclude_keys_from_the_command_line_guard_the_sweep_and_name_the_runs(tmp_path, corpus_files):
    """The composed exclude_keys, a command-line override included, decide what may be swept and how runs are
    named (the pre-check once read them from the bundled conf/config.yaml, missing the override)."""
    sweep = tmp_path / "sweep"
    refused = unlearn(*sweep_args(sweep, corpus_files, "layer=3,5", f"{EXCLUDE_KEYS}=[sweep,logger,save_model,output_root,layer]"))
    assert refused.returncode == 2 and "error: cannot sweep layer: it is left out of run-directory names" in refused.stderr
    assert not sweep.exists()
    done = unlearn(*sweep_args(sweep, corpus_files, "layer=3,5", f"{EXCLUDE_KEYS}=[sweep,logger,save_model,output_root,steps]"))
    assert done.returncode == 0, done.stderr
    names = sorted(run_dirs(sweep))
    assert len(names) == 2 and [("layer=3" in n, "layer=5" in n) for n in names] == [(True, False), (False, True)]
    assert not any("steps=" in name for name in names)
