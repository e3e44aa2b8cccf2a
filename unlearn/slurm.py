"""`hydra/launcher=slurm` before any job is submitted: sbatch is there, and accepts the jobs as configured.

hydra-submitit-launcher submits a sweep as one sbatch job array and reads each job's outcome from the result
file the job leaves in `hydra.launcher.submitit_folder`. Its job-state polling asks `sacct`, which a cluster
without accounting refuses: submitit then warns on every poll, so its warnings are silenced there (one note
says so; docs/sweeps.md, "On a cluster").
"""

from __future__ import annotations

import os
import shutil
import subprocess

from omegaconf import DictConfig, OmegaConf

from unlearn.errors import UnlearnError

SUBMITIT_SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
# hydra.launcher keys -> sbatch options, as submitit writes them (gpus_per_node, mem_gb: its own units)
SBATCH_OPTIONS = {"partition": "partition", "qos": "qos", "account": "account", "constraint": "constraint",
                  "exclude": "exclude", "gres": "gres", "nodes": "nodes", "tasks_per_node": "ntasks-per-node",
                  "cpus_per_task": "cpus-per-task", "gpus_per_node": "gpus-per-node", "cpus_per_gpu": "cpus-per-gpu",
                  "gpus_per_task": "gpus-per-task", "mem_per_gpu": "mem-per-gpu", "mem_per_cpu": "mem-per-cpu",
                  "timeout_min": "time"}


def uses_slurm(hydra_cfg: DictConfig) -> bool:
    return OmegaConf.select(hydra_cfg, "launcher._target_") == SUBMITIT_SLURM


def check_launcher(hydra_cfg: DictConfig) -> None:
    """With the SLURM launcher: sbatch exists, and `sbatch --test-only` accepts a job with the launcher's
    partition and resources (an unknown partition, more memory or time than it allows: SLURM's own words)."""
    if not uses_slurm(hydra_cfg):
        return
    if shutil.which("sbatch") is None:
        raise UnlearnError("hydra/launcher=slurm submits the jobs with sbatch, which is not on this machine's PATH: "
                           "run the sweep on a SLURM login node (or drop hydra/launcher=slurm to run the jobs here, "
                           "hydra/launcher=joblib for several at once)")
    launcher = OmegaConf.to_container(hydra_cfg.launcher, resolve=True)
    options = [f"--{option}={launcher[key]}" for key, option in SBATCH_OPTIONS.items()
               if launcher.get(key) not in (None, 0)]
    if launcher.get("mem_gb"):
        options.append(f"--mem={launcher['mem_gb']}GB")
    options += [f"--{key.replace('_', '-')}={value}" for key, value in (launcher.get("additional_parameters") or {}).items()]
    tested = subprocess.run(["sbatch", "--test-only", *options, "--wrap=true"], capture_output=True, text=True,
                            timeout=60)
    if tested.returncode != 0:
        said = " ".join(line.strip() for line in tested.stderr.splitlines() if line.strip()) or f"exit {tested.returncode}"
        raise UnlearnError(f"sbatch refuses the sweep's jobs ({' '.join(options)}): {said}; set the partition and "
                           "resources with hydra.launcher.partition=..., hydra.launcher.mem_gb=..., "
                           "hydra.launcher.timeout_min=... (sinfo lists the partitions and their limits)")
    quiet_without_accounting()


def quiet_without_accounting() -> None:
    """A cluster without accounting: submitit's warning on each of its sacct polls is silenced (its log level,
    read when submitit is imported, in this process and in the jobs), unless SUBMITIT_LOG_LEVEL is set."""
    if "SUBMITIT_LOG_LEVEL" in os.environ or shutil.which("sacct") is None:
        return
    asked = subprocess.run(["sacct", "-n", "-j", "1"], capture_output=True, text=True, timeout=60)
    if asked.returncode != 0:
        os.environ["SUBMITIT_LOG_LEVEL"] = "ERROR"
        print("note: this SLURM cluster keeps no accounting (sacct: "
              f"{asked.stderr.strip().splitlines()[0] if asked.stderr.strip() else 'refused'}); submitit's warnings "
              "about it are silenced (SUBMITIT_LOG_LEVEL=ERROR); job outcomes come from the jobs' result files",
              flush=True)
