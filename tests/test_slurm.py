"""`hydra/launcher=slurm` against a real SLURM: the single-node cluster scripts/start_slurm.sh starts (CI runs it
first). Sweeps run as sbatch job arrays on tiny-random; a job cancelled with scancel, or out of time, is recorded
and the sweep says so; the same command then finishes only what is missing.

Without SLURM (and without CI) these tests skip, saying so, except the one for a machine without sbatch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.test_bad_input import precheck_error

REPO = Path(__file__).resolve().parent.parent
PARTITION = "debug"  # scripts/start_slurm.sh's


def cluster_answers() -> bool:
    try:
        states = subprocess.run(["sinfo", "-h", "-p", PARTITION, "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(state in ("idle", "mixed", "allocated") for state in states.stdout.split())


@pytest.fixture(scope="module")
def cluster() -> None:
    if cluster_answers():
        return
    reason = ("no SLURM here: sbatch is not installed" if shutil.which("sbatch") is None else
              f"no SLURM cluster answers with a partition {PARTITION}")
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI runs scripts/start_slurm.sh before the tests)")
    pytest.skip(f"{reason}: sudo bash scripts/start_slurm.sh starts one")


def slurm_args(tmp_path: Path, corpus_files, name: str, *extra: str) -> list[str]:
    forget, retain = corpus_files
    return ["--multirun", "hydra/launcher=slurm", f"hydra.launcher.partition={PARTITION}", "hydra.launcher.gpus_per_node=0",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10",
            f"hydra.launcher.name={name}", "model=tiny-random", "data=local", f"data.forget_path={forget}",
            f"data.retain_path={retain}", "data.cycle=true", "eval=none", f"hydra.sweep.dir={tmp_path / 'sweep'}",
            *extra]


def unlearn(args: list[str], timeout: int = 600, module: str = "unlearn") -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "unlearn", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def status(run_dir: Path) -> str | None:
    manifest = run_dir / "manifest.json"
    return json.loads(manifest.read_text()).get("status") if manifest.is_file() else None


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def run_dir(tmp_path: Path, steps: int) -> Path:
    (found,) = [p for p in (tmp_path / "sweep").glob(f"*steps={steps}*") if p.is_dir()]
    return found


def test_a_2x2_sweep_runs_as_one_job_array_and_the_report_reads_it(cluster, tmp_path, corpus_files):
    done = unlearn(slurm_args(tmp_path, corpus_files, f"t{uuid.uuid4().hex[:8]}", "steps=2", "layer=3,5", "seed=1,2"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 completed, 0 skipped, 0 failed" in done.stdout
    # one sbatch job array: the jobs' folders are <array id>_<task>, SLURM's logs in them
    job_folders = sorted(p.name for p in (tmp_path / "sweep" / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
    assert len(job_folders) == 4 and len({name.split("_")[0] for name in job_folders}) == 1, job_folders
    assert all(list((tmp_path / "sweep" / ".submitit" / name).glob("*_log.out")) for name in job_folders)
    # no accounting on this cluster: one note, no flood of submitit's sacct warnings
    assert "Bypassing sacct error" not in done.stdout + done.stderr
    assert (done.stdout + done.stderr).count("keeps no accounting") == 1

    report = unlearn([str(tmp_path / "sweep")], module="unlearn.report")
    assert report.returncode == 0, report.stderr
    table = (tmp_path / "sweep" / "report.csv").read_text()
    assert table.count("completed") == 4


def test_a_job_cancelled_while_it_trains_is_recorded_and_the_rerun_finishes_only_it(cluster, tmp_path, corpus_files):
    name = f"t{uuid.uuid4().hex[:8]}"
    args = slurm_args(tmp_path, corpus_files, name, "steps=2,40")
    sweep = start(args)
    try:
        wait_for(lambda: len(list((tmp_path / "sweep").glob("*steps=*"))) == 2, 300, "both jobs to start")
        short, long = run_dir(tmp_path, 2), run_dir(tmp_path, 40)
        wait_for(lambda: status(short) == "completed", 300, "the short job to complete")
        wait_for(lambda: (long / "metrics.jsonl").is_file() and (long / "metrics.jsonl").read_text().strip(), 300,
                 "the long job to train")
        subprocess.run(["scancel", f"--name={name}"], check=True)
        out, err = sweep.communicate(timeout=300)
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode != 0
    assert status(long) in ("interrupted", "failed"), status(long)
    assert status(long) != "completed" and len((long / "metrics.jsonl").read_text().splitlines()) < 40
    assert "1 completed, 0 skipped, 1 failed" in out, out[-2000:]

    again = unlearn(args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 completed, 1 skipped, 0 failed" in again.stdout
    assert status(long) == "completed"


def test_a_job_out_of_time_is_recorded_failed(cluster, tmp_path, corpus_files):
    """SLURM signals a job signal_delay_s (here 5 s; its checks come every 30 s) before its time limit (1 minute); submitit then
    ends the job, as it may not requeue it (max_num_timeout=0), and the run records the failure. (A rerun with a
    larger hydra.launcher.timeout_min redoes it; that a rerun redoes only what is missing is tested above.)"""
    done = unlearn(slurm_args(tmp_path, corpus_files, f"t{uuid.uuid4().hex[:8]}", "steps=100000",
                              "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=5"), timeout=400)
    assert done.returncode != 0
    assert "0 completed, 0 skipped, 1 failed" in done.stdout, done.stdout[-2000:]
    long = run_dir(tmp_path, 100000)
    assert status(long) == "failed"
    assert "timed-out" in json.loads((long / "manifest.json").read_text())["error"]


def test_an_unknown_partition_is_one_line_before_any_job(cluster, tmp_path, corpus_files):
    done = unlearn([*slurm_args(tmp_path, corpus_files, "t", "steps=2"), "hydra.launcher.partition=nosuchpartition"])
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: sbatch refuses the sweep's jobs"), lines
    assert "invalid partition" in lines[0].lower()
    assert not (tmp_path / "sweep").exists()


def test_the_slurm_launcher_without_sbatch_is_one_line_before_any_job(monkeypatch, capsys, tmp_path, corpus_files):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on it
    line = precheck_error(monkeypatch, capsys, tmp_path, *slurm_args(tmp_path, corpus_files, "t", "steps=2"))
    assert line.startswith("error: hydra/launcher=slurm submits the jobs with sbatch, which is not on this machine")
