"""The package as a user installs it: a wheel built from this checkout, installed into a fresh virtual
environment, run from a directory that is no checkout, with presets of the user's own beside their data.

The fresh environment reuses the test environment's dependencies (a .pth file naming its site-packages, after
the fresh one's, so the wheel's `unlearn` is the one imported) and runs with PYTHONPATH unset, so nothing of
this checkout leaks in."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "unlearn", "conf")


def _builds_here() -> bool:
    """Whether this environment's setuptools meets pyproject's build-system floor."""
    from importlib.metadata import PackageNotFoundError, version

    floor = int(re.search(r'"setuptools>=(\d+)', (REPO / "pyproject.toml").read_text())[1])
    try:
        return int(version("setuptools").split(".")[0]) >= floor
    except PackageNotFoundError:
        return False


def build_wheel(out: Path) -> Path:
    """`pip wheel` on a copy of the sources (a build writes build/ and *.egg-info beside them)."""
    source = out / "source"
    source.mkdir(parents=True)
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    # With setuptools here at pyproject's build floor, no isolated build environment is needed (and no index
    # reached); otherwise pip builds in one, as `pip install .` does (a Python 3.10 venv comes with setuptools 65).
    isolation = ["--no-build-isolation"] if _builds_here() else []
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(out / "dist"),
                           str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = (out / "dist").glob("unlearn-*.whl")
    return wheel


def install(wheel: Path, env_dir: Path) -> Path:
    """A fresh venv with the wheel in it and the test environment's site-packages after its own."""
    venv.create(env_dir, with_pip=False, symlinks=True)
    python = env_dir / "bin" / "python"
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                           "-q", str(wheel)], capture_output=True, text=True, timeout=300, env=without_checkout())
    assert done.returncode == 0, done.stderr
    site_packages = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(site_packages) / "test_environment.pth").write_text("\n".join(ours) + "\n")
    return env_dir / "bin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(the wheel, the bin/ folder of a fresh venv it is installed in)."""
    out = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(out)
    return wheel, install(wheel, out / "venv")


def without_checkout() -> dict[str, str]:
    """The environment without PYTHONPATH (which may name this checkout), offline."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def run(command: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], cwd=cwd, env=without_checkout(), capture_output=True,
                          text=True, timeout=timeout)


def write_two_topics(folder: Path) -> None:
    """A project of one's own: two topics' corpora, and the data preset naming them, in my_conf/data/two.yaml."""
    for topic, words in (("alpha", "virus capsid genome host cell"), ("beta", "river mountain city music art")):
        for side in ("forget", "retain"):
            lines = [json.dumps({"text": f"{topic} {side} {i}: " + " ".join(words.split()[i % 5:] * 2)})
                     for i in range(12)]
            (folder / "corpora").mkdir(parents=True, exist_ok=True)
            (folder / "corpora" / f"{topic}_{side}.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "my_conf" / "data").mkdir(parents=True)
    (folder / "my_conf" / "data" / "two.yaml").write_text(
        "defaults:\n  - data_schema\n  - _self_\nname: two\ncycle: true\nshuffle: false\nchunk: false\ntopics:\n"
        + "".join(f"  {topic}:\n"
                  f"    forget: {{path: corpora/{topic}_forget.jsonl, text_field: text, max_length: 32}}\n"
                  f"    retain: {{path: corpora/{topic}_retain.jsonl, text_field: text, max_length: 32}}\n"
                  f"    keywords: [{topic}]\n" for topic in ("alpha", "beta")))


def yaml_topics(path: Path) -> list[str]:
    from omegaconf import OmegaConf

    return list(OmegaConf.load(path).data.topics)


def test_the_wheel_holds_the_package_and_its_configs(installed):
    """Every module, bundled file and config of the checkout is in the wheel (conf/ as unlearn/conf), with the
    three console scripts."""
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"unlearn/{path.relative_to(REPO / 'unlearn')}" for path in (REPO / "unlearn").rglob("*")
                if path.is_file() and "__pycache__" not in path.parts}
    expected |= {f"unlearn/conf/{path.relative_to(REPO / 'conf')}" for path in (REPO / "conf").rglob("*.yaml")}
    assert expected <= names, sorted(expected - names)
    entry_points = next(name for name in names if name.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for line in ("unlearn = unlearn.__main__:main", "unlearn-report = unlearn.report:main",
                 "unlearn-audit = unlearn.audit:main"):
        assert line in scripts


def test_an_installed_wheel_runs_a_sweep_of_ones_own_preset_and_reports_it(installed, tmp_path):
    """From a directory that is no checkout: a two-job sweep over a data preset of one's own (--config-dir),
    evaluated on the bundled tasks, then the report of it; the pre-check knows the preset; the audit takes it."""
    _, bin_dir = installed
    write_two_topics(tmp_path)
    where = run([bin_dir / "python", "-c", "import unlearn.cli as m; print(m.CONF_DIR)"], tmp_path)
    conf = Path(where.stdout.strip())
    assert conf.parts[-2:] == ("unlearn", "conf") and conf.is_relative_to(bin_dir.parent), where

    # a sweep of two jobs, one of them evaluated on the bundled tasks (a few questions)
    sweep = run([bin_dir / "unlearn", "--multirun", "--config-dir", "my_conf", "data=two", "model=tiny-random",
                 "steps=2", "eval=none,demo", "eval.limit=4", "eval.before=false", "eval.probes.enabled=false",
                 "eval.robustness.enabled=false", "hydra.sweep.dir=sweep"], tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "2 completed, 0 skipped, 0 failed" in sweep.stdout
    (evaluated,) = (tmp_path / "sweep").glob("*eval=demo*")
    manifest = json.loads((evaluated / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["versions"]["unlearn"] == "0.1.0"
    assert manifest["versions"]["unlearn_git_sha"] == "unknown"  # an installed package is no checkout
    results = json.loads((evaluated / "results.json").read_text())
    assert {"demo_forget", "demo_retain"} <= set(results["after"]["tasks"])
    assert {"alpha", "beta"} <= set(yaml_topics(evaluated / "config.yaml"))

    report = run([bin_dir / "unlearn-report", "sweep"], tmp_path)
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "sweep" / "report.csv").read_text().count("completed") == 2

    # The audit's pre-check takes the same preset through hydra.searchpath: it reads both topics' corpora and
    # stops only at the bad fraction, before any weights load.
    audit = run([bin_dir / "unlearn-audit", "hydra.searchpath=[file://my_conf]", "data=two", "model=tiny-random",
                 "audit.flag_fraction=2"], tmp_path)
    assert audit.returncode == 2 and audit.stderr.startswith("error: audit.flag_fraction must be"), audit.stderr

    unknown = run([bin_dir / "unlearn", "--config-dir", "my_conf", "data=twoo", "model=tiny-random"], tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == ("error: unknown data 'twoo': did you mean data=two? valid names: demo, local, "
                                      "two, wmdp, wmdp_bio, wmdp_cyber")


@pytest.mark.parametrize("how", [["--config-dir", "my_conf"], ["--config-dir=my_conf"], ["--config-path", "my_conf"],
                                 ["hydra.searchpath=[file://my_conf]"]])
def test_ones_own_presets_the_hydra_ways(how, tmp_path, monkeypatch, capsys):
    """--config-dir, --config-path (a folder without a config.yaml of its own adds presets, as --config-dir) and
    hydra.searchpath: the pre-check composes the preset from the same search path as Hydra, which runs it."""
    from hydra.core.hydra_config import HydraConfig

    from unlearn.__main__ import main

    write_two_topics(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)  # Hydra's in-process run sets it: unset it afterwards
    monkeypatch.setattr(sys, "argv", ["unlearn", *how, "data=two", "model=tiny-random", "eval=none", "--cfg", "job"])
    main()
    if not how[0].startswith("hydra.searchpath"):  # as Hydra gets it: one folder that adds presets
        assert sys.argv[sys.argv.index("--config-dir") + 1] == str(tmp_path / "my_conf")
    shown = capsys.readouterr().out
    assert "alpha:" in shown and "beta:" in shown

    from unlearn.cli import precheck, read_command_line

    command = read_command_line([*how, "data=two", "model=tiny-random", "eval=none", "steps=2"], "config")
    precheck(command.overrides, command.multirun, command.search)  # passes: both topics' files exist


@pytest.mark.parametrize("args,expected", [
    (["--config-dir", "nowhere", "data=two"], "error: --config-dir nowhere: no such directory"),
    (["--config-path", "nowhere", "data=two"], "error: --config-path nowhere: no such directory"),
    (["hydra.searchpath=[file://nowhere]", "data=two"], "error: hydra.searchpath names file://nowhere, which is no directory"),
    (["hydra.searchpath=file://my_conf", "data=two"], "error: hydra.searchpath must be a list of folders"),
    (["data=two"], "error: unknown data 'two': valid names: demo, local, wmdp"),
    (["--config-dir", "my_conf", "data=two", "data.chunk=???"], "error: data.chunk is required but not set"),
])
def test_a_bad_preset_folder_is_one_line(args, expected, tmp_path, monkeypatch, capsys):
    from tests.test_bad_input import precheck_error

    write_two_topics(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert precheck_error(monkeypatch, capsys, tmp_path, *args, "model=tiny-random", "eval=none").startswith(expected)
