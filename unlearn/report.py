"""`python -m unlearn.report <sweep dir>`: every run of a sweep in one table, and the plots that compare them.

Writes into the sweep directory (or `--output-dir`):

    report.csv                 one row per run: status, settings, accuracies, robustness, probes, losses, and the
                               git sha and package versions its manifest.json recorded
    report.md                  the same, fewer columns, and the code and package versions (also printed)
    heatmap_<method>.png       layer x coefficient: forget and retain accuracy after unlearning (final
                               forget/retain losses when the runs have no evaluation); not for one cell
    pareto.png                 forget vs retain accuracy of every run, the Pareto front marked
    rna_robustness.png         RNA: robustness drop (retain accuracy lost when a forget keyword is inserted) vs nu
    attacks_recovered.png      knowledge-recovery attacks: the recovered fraction of the forget gap per method

Coefficient = `method.steering_coeff` (RMU, RNA over RMU), `method.beta` (Adaptive RMU, RNA over it) or
`method.alpha` (NPO, SimNPO, RNA over them: their forget term has no target scale, so the retain weight is the
knob). Runs are grouped by variant: the method with its base and retain term, e.g. `npo+kl`, `rna/simnpo+mse`.
Forget (retain) accuracy = the `forget_acc` (`retain_acc`) the run stored with each evaluation in results.json,
the unweighted mean `acc` of its forget (retain) tasks (unlearn.accuracy).
Attack columns (`<attack>_forget_acc`, `<attack>_retain_acc`, `<attack>_recovered`) are read from results.json's
`attacks`, where the run computed them.
Runs that failed, were interrupted or are still running are listed with their status and the losses they got
to; only completed runs enter the plots. A run whose manifest.json or config.yaml cannot be read, or whose
results.json cannot be read though it completed, is listed as `unreadable: <file>: <why>`, never as completed.
Safe to run on a sweep that is still going.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import numbers
import statistics
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from unlearn import rundir
from unlearn.errors import EXIT_BAD_INPUT, first_line
from unlearn.methods import PO_METHODS, base_of, variant
from unlearn.schema import ATTACKS

LOSSES = ("loss", "forget_loss", "retain_loss")


# ---------------------------------------------------------------------------------------------------------
# Reading a run


def _base(method: dict) -> str | None:
    return base_of(method["name"], method.get("base")) if method.get("name") else None


def coefficient(config: dict) -> tuple[str | None, Any]:
    """The setting a method's heatmap sweeps: ("steering_coeff", c), ("beta", beta) or, for PO methods, ("alpha", alpha)."""
    method = config.get("method") or {}
    key = {"adaptive_rmu": "beta", "npo": "alpha", "simnpo": "alpha"}.get(_base(method), "steering_coeff")
    return (key, _text(method.get(key))) if key in method else (None, None)


def run_row(run_dir: Path, sweep_dir: Path) -> dict[str, Any]:
    """One table row: what the run's config.yaml, manifest.json, results.json and metrics.jsonl say."""
    unreadable = []  # (file, why) of each file that is there but cannot be read
    config = _read(run_dir / rundir.CONFIG, lambda text: OmegaConf.to_container(OmegaConf.create(text)), unreadable)
    manifest = _read(run_dir / rundir.MANIFEST, json.loads, unreadable)
    status = manifest.get("status", "not started")
    results = {}
    if status == "completed":  # a results.json next to an unfinished manifest belongs to an earlier attempt
        results = _read(run_dir / rundir.RESULTS, json.loads, unreadable, needed=True)
    if unreadable:
        status = "unreadable: " + "; ".join(f"{file}: {why}" for file, why in unreadable)
    method, versions = config.get("method") or {}, manifest.get("versions") or {}
    po, rna = _base(method) in PO_METHODS, method.get("name") == "rna"
    coeff_key, coeff = coefficient(config)
    return {
        "run": str(run_dir.relative_to(sweep_dir)) if run_dir != sweep_dir else ".", "status": status,
        "method": method.get("name", manifest.get("method")), "base": method.get("base") if rna else None,
        "variant": variant(method["name"], method.get("base"), method.get("retain_loss")) if method.get("name")
        else manifest.get("method"),
        "retain_loss": method.get("retain_loss") if po else None, "beta": method.get("beta") if po else None,
        "model": (config.get("model") or {}).get("name", manifest.get("model")),
        "layer": config.get("layer", manifest.get("layer")), "update_layers": _text(manifest.get("update_layers")),
        "coeff_key": coeff_key, "coeff": coeff, "coeff_used": _text(manifest.get("steering_coeffs")),
        "nu": method.get("nu") if rna else None, "alpha": _text(method.get("alpha")),
        **{key: config.get(key) for key in ("steps", "lr", "seed")},
        **_evaluation_columns(results), **_attack_columns(results), **_training_columns(run_dir, results),
        **{key: manifest.get(key) for key in ("started", "ended", "error")},
        "git_sha": versions.get("unlearn_git_sha"),
        "versions": " ".join(f"{name}={version}" for name, version in versions.items()
                             if name != "unlearn_git_sha") or None,
    }


def _evaluation_columns(results: dict) -> dict[str, Any]:
    columns: dict[str, Any] = {}
    for section in ("before", "after"):
        evaluation = results.get(section) or {}
        columns.update({f"{key}_{section}": evaluation.get(key) for key in ("forget_acc", "retain_acc")})
        robustness = evaluation.get("robustness") or {}
        columns.update({f"robust_{what}_{section}": robustness.get(what) for what in ("clean", "perturbed", "drop")})
        for text_set in ("forget", "retain"):
            stats = (evaluation.get("probes") or {}).get(text_set) or {}
            cosines = [c for c in (stats.get("cosine") or {}).values() if isinstance(c, (int, float))]
            columns[f"probe_{text_set}_norm_{section}"] = stats.get("mean_norm")
            columns[f"probe_{text_set}_cos_{section}"] = statistics.fmean(cosines) if cosines else None
            columns[f"probe_{text_set}_confidence_{section}"] = stats.get("confidence")
        columns.update({f"acc_{section}/{task}": metrics.get("acc")
                        for task, metrics in (evaluation.get("tasks") or {}).items()})
    return columns


def _attack_columns(results: dict) -> dict[str, Any]:
    """Per attack: forget and retain accuracy after it and the recovered fraction, as the run stored them; for
    the optimised attacks (scored on held-out questions) also the base model's held-out accuracy, clean and
    attacked (null for the other attacks)."""
    stored = {"forget_acc": "forget_acc", "retain_acc": "retain_acc", "recovered": "recovered_fraction"}
    held = {"base_clean": "base_forget_acc_clean", "base_attacked": "base_forget_acc_attacked"}
    columns = {}
    for name in ATTACKS:
        entry = (results.get("attacks") or {}).get(name) or {}
        columns.update({f"{name}_{column}": entry.get(key) for column, key in stored.items()})
        columns.update({f"{name}_{column}": (entry.get("heldout") or {}).get(key) for column, key in held.items()})
    return columns


def _training_columns(run_dir: Path, results: dict) -> dict[str, Any]:
    """Last losses (mean over topics) and median step time: from results.json when the run completed, else from
    metrics.jsonl."""
    records = pd.DataFrame(_read_metrics(run_dir / rundir.METRICS), columns=["topic", *LOSSES, "step_time_s"])
    training = results.get("training") or {}
    lasts = pd.DataFrame([topic["last"] for topic in (training.get("topics") or {}).values() if topic.get("last")],
                         columns=list(LOSSES))
    if lasts.empty:
        lasts = records.groupby("topic", dropna=False).tail(1)
    # the upper median, as unlearn.run computes it for a run that completed
    step_time = pd.to_numeric(records["step_time_s"]).quantile(0.5, interpolation="higher")
    return {"steps_done": len(records), **{f"final_{key}": float(pd.to_numeric(lasts[key]).mean()) for key in LOSSES},
            "median_step_time_s": training.get("median_step_time_s") or float(step_time)}


def _read(path: Path, parse, unreadable: list[tuple[str, str]], needed: bool = False) -> dict:
    """The file's mapping; {} when it is absent (a run not yet that far), or when it cannot be read, which is
    then added to `unreadable` with why (absence too, where the run must have written it)."""
    try:
        loaded = parse(path.read_text(encoding="utf-8"))
        if not isinstance(loaded, dict):
            raise ValueError(f"holds a {type(loaded).__name__}, not a mapping")
        return loaded
    except FileNotFoundError:
        why = "missing" if needed else None
    except Exception as exc:  # cut short, not JSON/YAML, unreadable: say so instead of passing as complete
        why = first_line(exc)
    if why:
        unreadable.append((path.name, why))
    return {}


def _read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl, without a last line cut short by a run still writing or killed."""
    records: list[dict] = []
    with contextlib.suppress(OSError):
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                records.append(json.loads(line))
    return records


def _text(value: Any) -> Any:
    """Lists (per-topic values) as `a/b`, so every cell is a scalar."""
    if isinstance(value, (list, tuple)):
        return "/".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return value


def collect(sweep_dir: Path) -> pd.DataFrame:
    """One row per run, in a stable order. A column of numbers is numeric (of integers only: Int64, so a 3 stays 3
    where another run lacks the value), any other keeps its text and None; a column only some runs have
    (per-task) is missing elsewhere."""
    from unlearn.sweep import find_run_dirs

    rows = sorted((run_row(run_dir, sweep_dir) for run_dir in find_run_dirs(sweep_dir) if not _is_audit(run_dir)),
                  key=lambda r: (r["variant"] is None, str(r["variant"]), _order(r["layer"]), _order(r["coeff"]),
                                 _order(r["nu"]), r["run"]))
    frame = pd.DataFrame(rows, dtype=object).apply(_typed)
    per_task = sorted(column for column in frame.columns if column.startswith("acc_"))
    return frame[[column for column in frame.columns if not column.startswith("acc_")] + per_task]


def _is_audit(run_dir: Path) -> bool:
    """A corpus audit's directory (python -m unlearn.audit): its results are its own audit.md and audit.csv."""
    manifest = rundir.read_json(run_dir / rundir.MANIFEST)
    return isinstance(manifest, dict) and manifest.get("command") == "audit"


def _typed(column: pd.Series) -> pd.Series:
    """Integers as Int64, other numbers (or none at all) as float, anything else (text, or numbers mixed with
    text) as given, None where missing."""
    given = column.dropna()
    if not given.map(_is_number).all():
        return column.where(column.notna(), None)
    return column.astype("Int64" if given.map(lambda v: isinstance(v, numbers.Integral)).all() else float)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _order(value: Any) -> tuple:
    """Numbers by value, before text (a per-topic `a/b`)."""
    return (0, float(value), "") if _is_number(value) else (1, 0.0, str(value))


def _completed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["status"] == "completed"]


# ---------------------------------------------------------------------------------------------------------
# Tables


def markdown(frame: pd.DataFrame, sweep_dir: Path) -> str:
    """A Markdown table; run names show only the overrides that differ between runs. Then the code and package
    versions the runs recorded."""
    labels, common = short_labels(list(frame["run"]))
    counts = frame["status"].value_counts().sort_index()
    lines = [f"# Sweep {sweep_dir}", "", f"{len(frame)} runs: " + ", ".join(f"{n} {status}" for status, n in counts.items())]
    if common:
        lines.append(f"Common to every run: `{common}`")
    table = _table(frame.assign(run=labels))
    lines += ["", table.to_markdown(index=False, disable_numparse=True)]  # cells are formatted strings already
    if "forget acc %" in table.columns:
        lines += ["", "Accuracies in percent, before -> after unlearning; robustness drop = clean minus "
                      "keyword-perturbed retain accuracy (RNA paper)."]
    if any(f"{name}: forget % (recovered)" in table.columns for name in ATTACKS):
        lines += ["Attacks: forget accuracy after the attack, and in brackets the recovered fraction of the forget "
                  "gap, (attacked - after) / (before - after); prefix and latent: on the held-out questions only "
                  "(before = the base model's, after = the unlearned model's held-out accuracy), with the base "
                  "model under the same attack beside them."]
    shas, packages = (sorted(frame[column].dropna().unique()) for column in ("git_sha", "versions"))
    if shas or packages:  # what the runs ran: each distinct git sha and package set their manifests recorded
        lines += ["", "Code: unlearn " + (", ".join(f"`{sha}`" for sha in shas) or "unknown"),
                  *(f"Packages: `{versions}`" for versions in packages)]
    return "\n".join(lines) + "\n"


def _table(frame: pd.DataFrame) -> pd.DataFrame:
    """The table's columns as text; a column that no run fills is left out (run and status never are)."""
    table = pd.DataFrame({
        "run": _cells(frame["run"]), "status": _cells(frame["status"]), "method": _cells(frame["variant"]),
        "layer": _cells(frame["layer"]), "coeff": _cells(frame["coeff"], "g"), "nu": _cells(frame["nu"], "g"),
        "forget acc %": _arrow(frame, "forget_acc"), "retain acc %": _arrow(frame, "retain_acc"),
        "robust drop %": _arrow(frame, "robust_drop"),
        **{column: cells for name in ATTACKS for column, cells in (
            (f"{name}: forget % (recovered)", _attack_cells(frame, name)),
            (f"{name}: base % clean -> attacked", _base_cells(frame, name)))},
        "forget loss": _cells(frame["final_forget_loss"], ".4g"),
        "retain loss": _cells(frame["final_retain_loss"], ".4g"),
        "step s": _cells(frame["median_step_time_s"], ".3g"), "error": _cells(frame["error"])})
    return table.loc[:, table.columns.isin(["run", "status"]) | table.ne("").any()]


def _cells(column: pd.Series, spec: str = "") -> pd.Series:
    """Numbers formatted by `spec`, anything else as text on one line without `|` (it would split the cell)."""
    # through object: pandas 2 maps a nullable Int64 column with gaps as floats (3 -> 3.0), pandas 3 as ints
    text = column.astype(object).map(lambda v: "" if pd.isna(v) else format(v, spec) if _is_number(v) else str(v))
    return text.str.replace("|", "/").str.replace("\n", " ").str[:120]


def _percent(column: pd.Series) -> pd.Series:
    return column.map(lambda v: "-" if pd.isna(v) else f"{100 * v:.1f}")


def _arrow(frame: pd.DataFrame, key: str) -> pd.Series:
    """`before -> after` in percent; the after value alone for a run not evaluated before unlearning."""
    before, after = frame[f"{key}_before"], frame[f"{key}_after"]
    text = (_percent(before) + " -> ").where(before.notna(), "") + _percent(after)
    return text.where(before.notna() | after.notna(), "")


def _base_cells(frame: pd.DataFrame, name: str) -> pd.Series:
    """The base model's held-out forget accuracy in percent, clean -> under the same attack (its control)."""
    clean, attacked = frame[f"{name}_base_clean"], frame[f"{name}_base_attacked"]
    return (_percent(clean) + " -> " + _percent(attacked)).where(attacked.notna(), "")


def _attack_cells(frame: pd.DataFrame, name: str) -> pd.Series:
    """Forget accuracy after the attack in percent, and the recovered fraction in brackets."""
    forget, recovered = frame[f"{name}_forget_acc"], frame[f"{name}_recovered"]
    text = _percent(forget) + recovered.map(lambda v: "" if pd.isna(v) else f" ({v:.0%})")
    return text.where(forget.notna(), "")


def short_labels(names: list[str]) -> tuple[list[str], str]:
    """Each run name without the `key=value` items every run shares; those shared items, joined."""
    items = [name.split(",") for name in names]
    shared = set.intersection(*(set(i) for i in items)) if len(items) > 1 else set()
    labels = [",".join(i for i in parts if i not in shared) or name for parts, name in zip(items, names)]
    return labels, ",".join(i for i in items[0] if i in shared) if items else ""


# ---------------------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works on a headless node
    import matplotlib.pyplot as plt
    return plt


def _save(figure, path: Path) -> Path:
    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    finally:
        _pyplot().close(figure)
    rundir.write_bytes_atomic(path, buffer.getvalue())  # a reader never sees half an image
    return path


def plot_heatmaps(frame: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Per method: layer x coefficient heatmaps of forget and retain accuracy after unlearning (of the final
    forget and retain losses when its runs were not evaluated). Cells average runs that share them (e.g.
    different nu); a cell with only unfinished runs says so. A method swept at one layer and one coefficient
    gets none: one cell shows nothing that the table doesn't."""
    placed = frame[frame["variant"].notna() & frame["layer"].notna()]
    written = []
    for method, mine in placed.groupby(placed["variant"].astype(str)):
        done = _completed(mine)
        if done.empty or len(mine[["layer", "coeff"]].drop_duplicates()) < 2:
            continue
        panels = ([("forget_acc_after", "forget accuracy after (%)", 100.0),
                   ("retain_acc_after", "retain accuracy after (%)", 100.0)] if done["forget_acc_after"].notna().any()
                  else [("final_forget_loss", "final forget loss", 1.0), ("final_retain_loss", "final retain loss", 1.0)])
        written.append(_heatmap_figure(method, mine, panels, out_dir / f"heatmap_{method.replace('/', '_over_')}.png"))
    return written


def _heatmap_figure(method: str, rows: pd.DataFrame, panels, path: Path) -> Path:
    layers, coeffs = (sorted(rows[key].unique(), key=_order) for key in ("layer", "coeff"))
    figure, axes = _pyplot().subplots(1, len(panels), squeeze=False, layout="constrained", figsize=(
        1.2 + 1.1 * len(coeffs) * len(panels) + 2 * len(panels), 1.6 + 0.5 * len(layers)))
    figure.suptitle(method)
    for axis, (key, title, scale) in zip(axes[0], panels):
        # per cell: mean and count over its completed runs, and the statuses of all its runs
        value = (scale * rows[key]).where(rows["status"] == "completed")
        cells = rows.assign(value=value).groupby(["layer", "coeff"], sort=False).agg(
            mean=("value", "mean"), n=("value", "count"), status=("status", lambda s: "/".join(sorted(set(s)))))
        grid = cells["mean"].unstack(sort=False).reindex(index=layers, columns=coeffs)  # (layers, coeffs)
        image = axis.imshow(grid.to_numpy(dtype=float), cmap="viridis", aspect="auto", origin="lower")
        figure.colorbar(image, ax=axis)
        for (layer, coeff), mean, n, status in cells.itertuples():
            note = (f"{mean:.3g}" + (f"\n(n={n})" if n > 1 else "")) if n else status
            dark = n > 0 and image.norm(mean) < 0.6  # viridis is dark at the low end
            axis.text(coeffs.index(coeff), layers.index(layer), note, ha="center", va="center", fontsize=7,
                      color="white" if dark else "black")
        axis.set(xticks=range(len(coeffs)), xticklabels=map(str, coeffs), yticks=range(len(layers)),
                 yticklabels=map(str, layers), ylabel="layer",
                 xlabel=f"method.{next(iter(rows['coeff_key'].dropna()), 'coefficient')}")
        axis.set_title(title, fontsize=10)
    return _save(figure, path)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats: forget accuracy as low, retain accuracy as high, one of
    them strictly better."""
    return [i for i, (forget, retain) in enumerate(points)
            if not any(f <= forget and r >= retain and (f < forget or r > retain) for f, r in points)]


def plot_pareto(frame: pd.DataFrame, out_dir: Path) -> Path | None:
    done = _completed(frame).dropna(subset=["forget_acc_after", "retain_acc_after"])
    if done.empty:
        return None
    done = done.assign(forget=100 * done["forget_acc_after"], retain=100 * done["retain_acc_after"])
    front = done.iloc[pareto_front(list(zip(done["forget"], done["retain"])))].sort_values(["forget", "retain"])
    figure, axis = _pyplot().subplots(figsize=(7, 5))
    for method, mine in done.groupby(done["variant"].astype(str)):
        axis.scatter(mine["forget"], mine["retain"], label=method, alpha=0.8)
    axis.plot(front["forget"], front["retain"], "k--", lw=1, label="Pareto front")
    axis.scatter(front["forget"], front["retain"], s=120, facecolors="none", edgecolors="black")
    for run in front.itertuples():  # its swept settings, e.g. `rmu L7 steering_coeff=6.5`
        setting = f"{run.variant} L{run.layer} {run.coeff_key}={run.coeff}" + (
            f" nu={run.nu:g}" if pd.notna(run.nu) else "")
        axis.annotate(setting, (run.forget, run.retain), fontsize=6, xytext=(4, 4), textcoords="offset points")
    base = done.dropna(subset=["forget_acc_before", "retain_acc_before"])
    if not base.empty:
        axis.scatter([100 * base["forget_acc_before"].iloc[0]], [100 * base["retain_acc_before"].iloc[0]], marker="*",
                     s=200, color="red", label="before unlearning")
    axis.set(xlabel="forget accuracy after (%)  (lower is better)",
             ylabel="retain accuracy after (%)  (higher is better)",
             title=f"forget vs retain: {len(done)} completed runs, {len(front)} on the Pareto front")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return _save(figure, out_dir / "pareto.png")


RNA_LINE_EXTRAS = ("alpha", "lr", "steps")  # the RNA plot's lines: one per variant, layer, coefficient and these


def plot_rna(frame: pd.DataFrame, out_dir: Path) -> Path | None:
    """RNA: robustness drop after unlearning against nu, one line per variant (base and retain term), layer,
    coefficient and RNA_LINE_EXTRAS setting; the base model's drop and each plain base method's (runs of this
    sweep without RNA) as reference lines."""
    done = _completed(frame).assign(drop=lambda f: 100 * f["robust_drop_after"])
    rna = done[(done["method"] == "rna") & done["nu"].notna() & done["drop"].notna()]
    if rna.empty:
        return None
    figure, axis = _pyplot().subplots(figsize=(7, 4.5))
    line_keys = ["variant", "layer", "coeff", *RNA_LINE_EXTRAS]
    # Name a line by the settings that tell it apart from the others: plus alpha, lr or steps where swept.
    varying = [key for key in RNA_LINE_EXTRAS if rna[key].nunique(dropna=False) > 1]
    lines = rna.groupby(line_keys, dropna=False, sort=False)
    for _, mine in sorted(lines, key=lambda group: tuple(map(_order, group[1].iloc[0][line_keys]))):
        first = mine.iloc[0]
        label = (f"RNA over {first['variant'].removeprefix('rna/')}, layer {first['layer']}, "
                 f"{first['coeff_key']}={first['coeff']}" + "".join(f", {key}={first[key]}" for key in varying))
        mine.groupby("nu")["drop"].mean().plot(ax=axis, style="o-", label=label)
    styles = iter(("--", "-.", (0, (5, 1)), (0, (1, 1))))
    plain = done[done["method"] != "rna"].dropna(subset=["drop"]).groupby(done["variant"].astype(str))["drop"]
    for base in sorted({str(v).removeprefix("rna/") for v in rna["variant"]} & set(plain.groups)):
        drops = plain.get_group(base)
        axis.axhline(drops.mean(), color="gray", ls=next(styles, "--"),
                     label=f"{base} without RNA (mean of {len(drops)} runs)")
    before = rna["robust_drop_before"].dropna()
    if not before.empty:
        axis.axhline(100 * before.iloc[0], color="red", ls=":", label="before unlearning")
    positive = rna["nu"][rna["nu"] > 0]
    if not positive.empty and positive.max() / positive.min() > 20:
        axis.set_xscale("symlog", linthresh=positive.min())  # nu spans decades (0 = plain RMU included)
        # margins on a log scale; the left one stops short of symlog's (meaningless) negative ticks
        axis.set_xlim(-positive.min() / 2, positive.max() * 1.5)
    axis.set(xlabel="nu (RNA noise scale)", ylabel="robustness drop (points)  (lower is better)",
             title="retain accuracy lost when a forget keyword is inserted")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    return _save(figure, out_dir / "rna_robustness.png")


def plot_attacks(frame: pd.DataFrame, out_dir: Path) -> Path | None:
    """Per method, one bar per attack: the mean recovered fraction of the forget gap over its completed runs,
    each run a dot on its bar. 0 = nothing came back, 1 = the base model's forget accuracy is back."""
    done = _completed(frame)
    runs = (done[[f"{name}_recovered" for name in ATTACKS]].astype(float).set_axis(list(ATTACKS), axis=1)
            .set_index(done["method"].astype(str)).dropna(axis=1, how="all").dropna(how="all"))  # (run, attack)
    if runs.empty:
        return None
    means = runs.groupby(level=0).mean()  # (method, attack), methods sorted
    figure, axis = _pyplot().subplots(figsize=(1.5 + 0.6 * len(means) * len(means.columns), 4.5))
    means.plot.bar(ax=axis, width=0.8, alpha=0.8, rot=0, xlabel="")  # a group of bars per method
    for attack, bars in zip(means.columns, axis.containers):
        for method, bar in zip(means.index, bars):
            recovered = runs.loc[[method], attack].dropna()
            axis.scatter([bar.get_x() + bar.get_width() / 2] * len(recovered), recovered, color="black", s=10,
                         zorder=3)
    axis.axhline(0, color="gray", lw=0.8)
    axis.axhline(1, color="red", ls=":", lw=1, label="all of the forget gap")
    axis.set(ylabel="recovered fraction of the forget gap", title="knowledge recovered by each attack (dots: runs)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="y")
    return _save(figure, out_dir / "attacks_recovered.png")


# ---------------------------------------------------------------------------------------------------------
# Command line


def report(sweep_dir: Path, out_dir: Path | None = None) -> tuple[str, list[Path]]:
    """Write the table and plots; returns the Markdown and the files written. Raises ValueError on no runs."""
    out_dir = Path(out_dir or sweep_dir)
    frame = collect(sweep_dir)
    if frame.empty:
        from unlearn.sweep import find_run_dirs

        if any(map(_is_audit, find_run_dirs(sweep_dir))):
            raise ValueError(f"{sweep_dir} holds corpus audits, not training runs: each audit's results are its "
                             "audit.md and audit.csv (the report tabulates `python -m unlearn --multirun ...` runs)")
        raise ValueError(f"no runs in {sweep_dir}: expected run directories with a manifest.json, as "
                         "`python -m unlearn --multirun ...` writes them")
    out_dir.mkdir(parents=True, exist_ok=True)
    text = markdown(frame, sweep_dir)
    rundir.write_text_atomic(out_dir / "report.csv", frame.to_csv(index=False, lineterminator="\n"))
    rundir.write_text_atomic(out_dir / "report.md", text)
    written = [out_dir / "report.csv", out_dir / "report.md", *plot_heatmaps(frame, out_dir)]
    return text, written + [path for path in (plot_pareto(frame, out_dir), plot_rna(frame, out_dir),
                                              plot_attacks(frame, out_dir)) if path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unlearn.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun's directory, e.g. multirun/2026-11-22/10-00-00-123456")
    parser.add_argument("--output-dir", type=Path, default=None, help="where to write (default: the sweep directory)")
    args = parser.parse_args(argv)
    try:
        if not args.sweep_dir.is_dir():
            raise ValueError(f"{args.sweep_dir} is not a directory: give a sweep directory (hydra.sweep.dir of a "
                             "multirun)")
        text, written = report(args.sweep_dir, args.output_dir)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # --output-dir (or the sweep directory) cannot be written
        where = f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc)
        print(f"error: could not write the report to {args.output_dir or args.sweep_dir} ({where}): give --output-dir "
              "a folder you can write to", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(text)
    print("Wrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
