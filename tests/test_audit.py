"""The corpus audit: influence math against hand-worked values, the CLI in a subprocess, `data.exclude` in
training, and every bad input."""

from __future__ import annotations

import json
import math
import re
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO, one_line_error
from tests.test_cli import tiny_args, unlearn
from unlearn import exclusions, influence
from unlearn.corpora import Topic
from unlearn.errors import UnlearnError

AUDIT_FILES = {"config.yaml", "manifest.json", "audit.csv", "audit.md", "audit_scores.png"}


def audit_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "unlearn.audit", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def tiny_audit_args(out: Path, forget: Path, retain: Path, *extra: str) -> list[str]:
    return ["model=tiny-random", "data=local", f"data.forget_path={forget}", f"data.retain_path={retain}",
            f"output_root={out}", *extra]


# ---------------------------------------------------------------------------------------------------------
# The math


def test_probe_gradient_by_hand():
    """x = (2, 1), y = 1 (forget), w = (0.5, -1), b = 0, no standardisation (mean 0, scale 1):
    logit = 0.5*2 - 1*1 + 0 = 0, p = sigmoid(0) = 0.5, p - y = -0.5, so g = -0.5 * (2, 1, 1) = (-1, -0.5, -0.5).
    For y = 0 (retain) the same document gives p - y = 0.5: g = (1, 0.5, 0.5)."""
    probe = influence.Probe(torch.tensor([0.5, -1.0]), torch.tensor(0.0), torch.zeros(2), torch.ones(2))
    x = torch.tensor([[2.0, 1.0], [2.0, 1.0]])
    g = influence.probe_gradients(probe, x, torch.tensor([1.0, 0.0]))
    assert torch.allclose(g, torch.tensor([[-1.0, -0.5, -0.5], [1.0, 0.5, 0.5]]))


def test_probe_gradients_match_autograd():
    torch.manual_seed(0)
    features = torch.randn(12, 5) * 3 + 1
    labels = (torch.arange(12) % 2).float()
    probe = influence.train_probe(features, labels, inverse_l2=1.0, max_iter=50)
    closed = influence.probe_gradients(probe, features, labels)
    for i in range(len(features)):
        weight = probe.weight.clone().requires_grad_(True)
        bias = probe.bias.clone().requires_grad_(True)
        logit = probe.standardise(features[i : i + 1]) @ weight + bias
        F.binary_cross_entropy_with_logits(logit, labels[i : i + 1]).backward()
        assert torch.allclose(closed[i], torch.cat([weight.grad, bias.grad[None]]), atol=1e-6)


def test_scores_by_hand():
    """Two documents' gradients against references forget {(1, 0), (1, 1)} and retain {(0, -1)}.

    GD, g = (2, 0): s_forget = (1,0).(2,0) + (1,1).(2,0) = 2 + 2 = 4, s_retain = (0,-1).(2,0) = 0;
        IFs-class = min(4, 0) = 0, plain = 4 + 0 = 4.
    GD, g = (0, 3): s_forget = 0 + 3 = 3, s_retain = -3; IFs-class = -3, plain = 0.
    GC (unit vectors; (1, 1) -> (1, 1)/sqrt 2), g = (2, 0) -> (1, 0): s_forget = 1 + 1/sqrt 2 = 1.7071,
        s_retain = 0; IFs-class = 0, plain = 1.7071.
    GC, g = (0, 3) -> (0, 1): s_forget = 0 + 1/sqrt 2 = 0.7071, s_retain = -1; IFs-class = -1, plain = -0.2929.
    Under each of the four scores the second document is the lower: the lowest half (one of two) flags it.
    """
    gradients = torch.tensor([[2.0, 0.0], [0.0, 3.0]])
    references = {"forget": torch.tensor([[1.0, 0.0], [1.0, 1.0]]), "retain": torch.tensor([[0.0, -1.0]])}
    gd = influence.class_scores(gradients, references, "gd")
    assert torch.allclose(gd, torch.tensor([[4.0, 0.0], [3.0, -3.0]]))
    assert torch.allclose(influence.ifs_class(gd), torch.tensor([0.0, -3.0]))
    assert torch.allclose(influence.plain(gd), torch.tensor([4.0, 0.0]))
    gc = influence.class_scores(gradients, references, "gc")
    r = 1 / math.sqrt(2)
    assert torch.allclose(gc, torch.tensor([[1 + r, 0.0], [r, -1.0]]))
    assert torch.allclose(influence.ifs_class(gc), torch.tensor([0.0, -1.0]))
    assert torch.allclose(influence.plain(gc), torch.tensor([1 + r, r - 1]))
    for scores in (influence.ifs_class(gd), influence.ifs_class(gc), influence.plain(gd), influence.plain(gc)):
        assert influence.lowest(scores, 0.5).tolist() == [False, True]


def test_lowest_flags_a_rounded_share_at_least_one_ties_to_the_earlier():
    assert influence.lowest(torch.tensor([3.0, 1.0, 1.0, 2.0]), 0.25).tolist() == [False, True, False, False]
    assert influence.lowest(torch.arange(10.0), 0.01).sum() == 1
    assert influence.lowest(torch.arange(340.0), 0.1).sum() == 34


def test_a_document_on_the_wrong_side_scores_lowest():
    """Two clusters of features; one forget-cluster document labelled retain. The probe, its gradients and
    IFs-class (both similarities) put that document last."""
    torch.manual_seed(0)
    centre = torch.randn(8)
    forget = centre + 0.5 * torch.randn(30, 8)
    retain = -centre + 0.5 * torch.randn(30, 8)
    retain[7] = centre + 0.5 * torch.randn(8)  # a forget document on the retain side
    features = torch.cat([forget, retain])
    labels = torch.cat([torch.ones(30), torch.zeros(30)])
    probe = influence.train_probe(features, labels, inverse_l2=1.0, max_iter=100)
    ref_forget, ref_retain = centre + 0.5 * torch.randn(5, 8), -centre + 0.5 * torch.randn(5, 8)
    references = {"forget": influence.probe_gradients(probe, ref_forget, torch.ones(5)),
                  "retain": influence.probe_gradients(probe, ref_retain, torch.zeros(5))}
    gradients = influence.probe_gradients(probe, features, labels)
    for similarity in influence.SIMILARITIES:
        scores = influence.ifs_class(influence.class_scores(gradients, references, similarity))
        assert scores.argmin().item() == 30 + 7


def test_held_out_reference_is_seeded_never_empty_never_all():
    from unlearn.audit import split_heldout

    assert torch.equal(split_heldout(40, 0.1, "42:t:forget"), split_heldout(40, 0.1, "42:t:forget"))
    assert not torch.equal(split_heldout(40, 0.1, "42:t:forget"), split_heldout(40, 0.1, "42:t:retain"))
    assert split_heldout(40, 0.1, 0).sum() == 4
    assert split_heldout(5, 0.01, 0).sum() == 1 and split_heldout(2, 0.9, 0).sum() == 1


# ---------------------------------------------------------------------------------------------------------
# The CLI and data.exclude


@pytest.fixture(scope="module")
def corpora(tmp_path_factory) -> tuple[Path, Path]:
    """40 + 40 documents, two of them (forget 3, retain 11) written for the other side."""
    folder = tmp_path_factory.mktemp("corpora")
    words = {"forget": "virus capsid genome host cell infection", "retain": "river mountain city music history art"}
    paths = []
    for side, other in (("forget", "retain"), ("retain", "forget")):
        path = folder / f"{side}.jsonl"
        lines = []
        for i in range(40):
            source = other if (side, i) in (("forget", 3), ("retain", 11)) else side
            text = " ".join(words[source].split()[j % 6] for j in range(i, i + 5 + 3 * (i % 5)))
            lines.append(json.dumps({"text": f"document {i}: {text}."}))
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture(scope="module")
def audited(tmp_path_factory, corpora) -> Path:
    """One audit of `corpora` on the tiny model; its run directory."""
    out = tmp_path_factory.mktemp("audit-out")
    done = audit_cli(*tiny_audit_args(out, *corpora, "layer=5", "audit.flag_fraction=0.1"))
    assert done.returncode == 0, done.stderr
    runs = list((out / "audit").glob("*/*"))
    assert len(runs) == 1, runs
    return runs[0]


def test_audit_cli_writes_its_run_directory(audited, corpora):
    assert AUDIT_FILES <= {p.name for p in audited.iterdir()}
    manifest = json.loads((audited / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["command"] == "audit" and manifest["layer"] == 5
    table = pd.read_csv(audited / "audit.csv")
    assert {"topic", "side", "index", "excerpt", "ifs_class_gd", "ifs_class_gc", "plain_gd", "plain_gc",
            "flagged", "digest"} <= set(table.columns)
    assert (table.groupby("side").size() == 40).all()
    scored = table[table["role"] == "scored"]
    assert len(scored) == 72  # 10% of each corpus held out as the reference (no reference files given)
    assert table.loc[table["role"] == "reference", "flagged"].sum() == 0
    assert scored["flagged"].sum() == round(0.1 * 72)
    flagged = scored[scored["flagged"]]["ifs_class_gc"]
    assert flagged.max() <= scored[~scored["flagged"]]["ifs_class_gc"].min()
    assert set(scored.loc[scored["flagged"], "rank"]) == set(range(1, 8))
    planted = scored[((scored["side"] == "forget") & (scored["index"] == 3)) | ((scored["side"] == "retain") & (scored["index"] == 11))]
    assert sorted(planted["rank"]) == [1, 2]  # the two documents written for the other side score lowest
    markdown = (audited / "audit.md").read_text()
    assert "Most suspicious forget documents" in markdown and "Most suspicious retain documents" in markdown
    assert (audited / "audit_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert manifest["topics"]["local"]["flagged"]["forget"] + manifest["topics"]["local"]["flagged"]["retain"] == 7


def test_training_leaves_the_flagged_documents_out(tmp_path, audited, corpora):
    table = pd.read_csv(audited / "audit.csv")
    flagged = {side: sorted(table[(table["side"] == side) & table["flagged"]]["index"]) for side in ("forget", "retain")}
    done = unlearn(*tiny_args(tmp_path, corpora, "steps=2", f"data.exclude={audited / 'audit.csv'}"))
    assert done.returncode == 0, done.stderr
    run = next(p for p in (tmp_path / "out").glob("*/*") if p.is_dir())
    excluded = json.loads((run / "manifest.json").read_text())["excluded"]
    for side in ("forget", "retain"):
        record = excluded["topics"]["local"][side]
        assert record["documents"] == 40 and record["excluded_indices"] == flagged[side]
        assert record["excluded"] == len(flagged[side])
    assert "trains without" in done.stdout


def test_exclusion_removes_exactly_the_flagged_texts(audited, corpora):
    from unlearn.corpora import CorpusSpec, read_texts

    texts = {side: read_texts(CorpusSpec(str(path))) for side, path in zip(("forget", "retain"), corpora)}
    topic = Topic("local", texts["forget"], texts["retain"], 512, 512)
    (kept,), record = exclusions.apply([topic], str(audited / "audit.csv"))
    table = pd.read_csv(audited / "audit.csv")
    for side in ("forget", "retain"):
        flagged = set(table[(table["side"] == side) & table["flagged"]]["index"])
        assert getattr(kept, side) == [t for i, t in enumerate(texts[side]) if i not in flagged]
        assert len(getattr(kept, side)) == 40 - len(flagged)


def test_an_exclude_file_that_does_not_match_is_refused(tmp_path, audited, corpora):
    from unlearn.corpora import CorpusSpec, read_texts

    texts = {side: read_texts(CorpusSpec(str(path))) for side, path in zip(("forget", "retain"), corpora)}
    csv = str(audited / "audit.csv")
    cases = {
        "a document more": (texts["forget"] + ["an extra document"], texts["retain"], "topic"),
        "different text": (texts["forget"][:5] + ["edited"] + texts["forget"][6:], texts["retain"], "topic"),
        "another topic": (texts["forget"], texts["retain"], "other"),
    }
    expected = {"a document more": "the audit saw 40 documents, the corpus has 41",
                "different text": "document 5 has different text than the audit saw",
                "another topic": "audits topic(s) local, which this data config does not have"}
    for case, (forget, retain, name) in cases.items():
        topic = Topic("local" if name == "topic" else name, forget, retain, 512, 512)
        with pytest.raises(UnlearnError, match=re.escape(expected[case])):
            exclusions.apply([topic], csv)


def test_an_exclude_file_that_flags_a_whole_corpus_is_refused(tmp_path, audited, corpora):
    """Nothing would be left to train on (data.cycle would then divide by zero): one line, the fix."""
    from unlearn.corpora import CorpusSpec, read_texts

    table = pd.read_csv(audited / "audit.csv")
    table.loc[table["side"] == "forget", "flagged"] = True
    every_forget = tmp_path / "every_forget.csv"
    table.to_csv(every_forget, index=False)
    texts = {side: read_texts(CorpusSpec(str(path))) for side, path in zip(("forget", "retain"), corpora)}
    with pytest.raises(UnlearnError, match=re.escape(f"data.exclude={every_forget} flags every document of the topic "
                                                     "'local' forget corpus (40): nothing would be left to train on")):
        exclusions.apply([Topic("local", texts["forget"], texts["retain"], 512, 512)], str(every_forget))


def test_training_refuses_a_mismatched_exclude_file_before_loading_weights(tmp_path, audited, corpus_files):
    """corpus_files are other corpora than the audited ones: one line, exit 1, the manifest says why."""
    done = unlearn(*tiny_args(tmp_path, corpus_files, f"data.exclude={audited / 'audit.csv'}"))
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(err) == 1, done.stderr
    assert err[0].startswith("error: data.exclude=") and "does not match the topic 'local' forget corpus" in err[0]
    run = next(p for p in (tmp_path / "out").glob("*/*") if p.is_dir())
    assert json.loads((run / "manifest.json").read_text())["status"] == "failed"
    assert not (run / "metrics.jsonl").exists() and not (run / "control_vectors.safetensors").exists()


# ---------------------------------------------------------------------------------------------------------
# Bad input


def audit_precheck_error(monkeypatch, capsys, out: Path, *args: str) -> str:
    """The audit CLI in-process; the error must come from its pre-check (exit 2, one line, nothing written)."""
    from unlearn.audit import main

    return one_line_error(monkeypatch, capsys, main, ["unlearn.audit", *args], out)


@pytest.fixture
def reference_files(tmp_path) -> dict[str, Path]:
    files = {"good": tmp_path / "ref_good.jsonl", "empty": tmp_path / "ref_empty.jsonl"}
    files["good"].write_text('{"text": "a clean reference document"}\n')
    files["empty"].write_text("\n  \n")
    return files


@pytest.mark.parametrize("argument,expected", [
    ("audit.flag_fraction=0", "audit.flag_fraction must be a number strictly between 0 and 1, got 0"),
    ("audit.flag_fraction=1", "audit.flag_fraction must be a number strictly between 0 and 1, got 1"),
    ("audit.flag_fraction=1.5", "audit.flag_fraction must be a number strictly between 0 and 1, got 1.5"),
    ("audit.flag_fraction=-0.1", "audit.flag_fraction must be a number strictly between 0 and 1"),
    ("audit.flag_fraction=abc", "audit.flag_fraction='abc' is not a number: give a number"),
    ("audit.reference.heldout_fraction=1", "audit.reference.heldout_fraction must be a number strictly between"),
    ("audit.similarity=cos", "audit.similarity='cos' is not a valid choice: give one of gc, gd"),
    ("layer=12", "layer=12 is outside this model's blocks: choose 0..11"),
    ("audit.batch_size=0", "audit.batch_size must be a positive integer"),
    ("audit.nope=1", "Could not override 'audit.nope'"),
    ("layer=3,5", "layer has several values, which only a sweep runs: add --multirun"),
    ("hydra.run.dir=/dev/null/audit", "cannot write the output directory /dev/null/audit (/dev/null is not a "
                                      "writable directory)"),
])
def test_audit_precheck_rejects(monkeypatch, capsys, tmp_path, corpus_files, argument, expected):
    out = tmp_path / "out"
    err = audit_precheck_error(monkeypatch, capsys, out, *tiny_audit_args(out, *corpus_files, argument))
    assert expected in err, err


@pytest.mark.parametrize("given,expected", [
    ({"forget": "good"}, "audit.reference.retain_path is missing but the forget class has a reference file"),
    ({"retain": "good"}, "audit.reference.forget_path is missing but the retain class has a reference file"),
    ({"forget": "good", "retain": "empty"}, "audit.reference.retain_path: corpus"),
    ({"forget": "empty", "retain": "good"}, "has no non-empty documents"),
    ({"forget": "good", "retain": "absent"}, "does not exist: give a local JSONL or .txt file"),
    ({"forget": "good", "retain": "folder"}, "is a directory: give a local JSONL or .txt file"),
    ({"forget": "table", "retain": "good"}, "is a .csv file: give a local JSONL or .txt file"),
])
def test_a_reference_set_with_a_class_missing_or_empty_is_refused(monkeypatch, capsys, tmp_path, corpus_files,
                                                                 reference_files, given, expected):
    out = tmp_path / "out"
    table = tmp_path / "reference.csv"
    table.write_text("text\nsome clean document\n")
    paths = {**reference_files, "absent": tmp_path / "no_such_reference.jsonl", "folder": tmp_path, "table": table}
    args = [f"audit.reference.{side}_path={paths[name]}" for side, name in given.items()]
    err = audit_precheck_error(monkeypatch, capsys, out, *tiny_audit_args(out, *corpus_files, *args))
    assert expected in err, err
    if "empty" in given.values():
        assert "each class needs at least one clean reference document" in err


def test_a_preset_reference_with_a_class_missing_is_refused(monkeypatch, capsys, tmp_path, corpus_files, reference_files):
    out = tmp_path / "out"
    args = tiny_audit_args(out, *corpus_files, f"data.topics.local.reference.forget={reference_files['good']}")
    err = audit_precheck_error(monkeypatch, capsys, out, *args)
    assert "data.topics.local.reference.retain is missing" in err, err


def test_training_precheck_refuses_an_exclude_file_that_is_not_an_audit(monkeypatch, capsys, tmp_path, corpus_files):
    from tests.test_bad_input import precheck_error

    not_audit = tmp_path / "other.csv"
    not_audit.write_text("a,b\n1,2\n")
    header_only = tmp_path / "header_only.csv"
    header_only.write_text("topic,side,index,digest,flagged\n")
    for path, expected in ((tmp_path / "none.csv", "does not exist: point it at an audit's audit.csv"),
                           (not_audit, "no column topic, side, index, digest, flagged"),
                           (tmp_path, f"is a directory: point it at the audit.csv inside it (data.exclude={tmp_path / 'audit.csv'})"),
                           (header_only, "has no rows: rerun python -m unlearn.audit")):
        err = precheck_error(monkeypatch, capsys, tmp_path, *tiny_args(tmp_path, corpus_files, f"data.exclude={path}"))
        assert expected in err, err


def test_the_design_command_runs_with_local_files(tmp_path, corpus_files):
    """DESIGN's `python -m unlearn.audit data=local data.forget_path=f.jsonl data.retain_path=r.jsonl`, here on the
    tiny model with GD flagging and clean reference files."""
    forget, retain = corpus_files
    out = tmp_path / "out"
    done = audit_cli(*tiny_audit_args(out, forget, retain, "audit.similarity=gd",
                                      f"audit.reference.forget_path={forget}", f"audit.reference.retain_path={retain}"))
    assert done.returncode == 0, done.stderr
    run = next((out / "audit").glob("*/*"))
    table = pd.read_csv(run / "audit.csv")
    assert (table["role"] == "scored").all() and table["flagged"].sum() == 8  # 10% of 80: no document held out
    assert table.loc[table["flagged"], "ifs_class_gd"].max() <= table.loc[~table["flagged"], "ifs_class_gd"].min()


def test_a_corpus_too_small_to_hold_a_reference_out_fails_before_weights_load(tmp_path):
    for side in ("forget", "retain"):
        (tmp_path / f"{side}.jsonl").write_text(json.dumps({"text": f"the only {side} document"}) + "\n")
    out = tmp_path / "out"
    done = audit_cli(*tiny_audit_args(out, tmp_path / "forget.jsonl", tmp_path / "retain.jsonl"))
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(err) == 1, done.stderr
    assert "the forget corpus has 1 document, too few to hold a reference out of it" in err[0]
    run = next((out / "audit").glob("*/*"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["device"] == "cpu"
    assert not (run / "audit.csv").exists()


def test_an_audit_sweep_runs_every_job_and_counts_them(tmp_path, corpus_files):
    """As a training sweep: a job that fails is recorded and the others run; the summary counts both; exit 1; the
    same command again skips the completed job and redoes the failed one."""
    forget, retain = corpus_files
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "the only forget document"}) + "\n")  # too few to hold a reference out
    sweep_dir = tmp_path / "sweep"
    done = audit_cli("--multirun", *tiny_audit_args(tmp_path / "out", forget, retain, f"data.forget_path={one},{forget}",
                                                    f"hydra.sweep.dir={sweep_dir}"))
    assert done.returncode == 1, done.stderr
    assert f"Sweep {sweep_dir}: 1 completed, 0 skipped, 1 failed" in done.stdout, done.stdout
    status = {json.loads((run / "manifest.json").read_text())["status"]: run for run in sweep_dir.iterdir()
              if (run / "manifest.json").exists()}
    assert set(status) == {"completed", "failed"} and (status["completed"] / "audit.csv").exists()
    assert "Traceback" not in done.stderr
    again = audit_cli("--multirun", *tiny_audit_args(tmp_path / "out", forget, retain, f"data.forget_path={one},{forget}",
                                                     f"hydra.sweep.dir={sweep_dir}"))
    assert f"Sweep {sweep_dir}: 0 completed, 1 skipped, 1 failed" in again.stdout, again.stdout  # resumed


@pytest.mark.parametrize("data", ["demo", "local", "wmdp", "wmdp_bio", "wmdp_cyber"])
def test_the_audit_config_composes_over_every_data_preset(data):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from unlearn.cli import CONF_DIR

    extra = {"local": ["data.forget_path=f.jsonl", "data.retain_path=r.jsonl"],
             "wmdp": ["data.topics.bio.forget.path=bio.jsonl"], "wmdp_bio": ["data.topics.bio.forget.path=bio.jsonl"]}
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("audit", overrides=[f"data={data}", *extra.get(data, [])])
        training = compose("config", overrides=[f"data={data}", *extra.get(data, [])])
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    assert cfg.audit.flag_fraction == 0.1 and cfg.data.exclude is None
    assert "audit" not in training  # python -m unlearn's config is the training config alone
    without_audit = OmegaConf.to_container(cfg, resolve=False)
    del without_audit["audit"]
    assert without_audit == OmegaConf.to_container(training, resolve=False)
