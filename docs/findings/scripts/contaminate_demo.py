"""Contaminated copies of the bundled demo corpora, and how well an audit finds the contamination.

    python docs/findings/scripts/contaminate_demo.py write --fraction 0.10 --seed 0 --out /tmp/demo-c10
    python -m unlearn.audit data.topics.virology.forget.path=/tmp/demo-c10/forget.jsonl \
        data.topics.virology.retain.path=/tmp/demo-c10/retain.jsonl
    python docs/findings/scripts/contaminate_demo.py score /tmp/demo-c10 outputs/audit/<date>/<time>

`write` moves a seeded `fraction` of each side's documents (rounded half up: 9 of 170 at 5%, 17 at 10%) to
the other side, each inserted at a seeded random position (so the training batches, which read the files in
order, meet them throughout), and records the moves in moved.csv. Both corpora keep 170 documents. The audit
keeps the demo preset's clean held-out reference files.

`score` prints, for each of the audit's four scores (IFs-class and plain, GD and GC), the share of moved
documents among the lowest-scored `--lowest` (default 10%) of the scored documents, and the share of the moved
documents found there (at 5% contamination at most 18 of the lowest 34 can be moved: a share of 0.529), and the
same for a baseline without gradients: the probe's confidence in each document's given label.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from pathlib import Path

DEMO = Path(__file__).resolve().parents[3] / "unlearn" / "data" / "demo"
SIDES = ("forget", "retain")
SCORES = ("ifs_class_gd", "ifs_class_gc", "plain_gd", "plain_gc")


def read_jsonl(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def contaminate(corpora: dict[str, list[str]], fraction: float, seed: int) -> tuple[dict[str, list[str]], list[dict]]:
    """Move `fraction` of each side to the other; returns the new corpora and one record per moved document."""
    rng = random.Random(seed)
    picked = {side: set(rng.sample(range(len(texts)), math.floor(fraction * len(texts) + 0.5)))
              for side, texts in corpora.items()}
    # (text, original side, original index); the documents that stay keep their order
    result = {side: [(t, side, i) for i, t in enumerate(texts) if i not in picked[side]] for side, texts in corpora.items()}
    for side, other in (("forget", "retain"), ("retain", "forget")):
        for i in sorted(picked[side]):
            result[other].insert(rng.randrange(len(result[other]) + 1), (corpora[side][i], side, i))
    moved = [{"side": side, "index": index, "from_side": origin, "from_index": original}
             for side in SIDES for index, (_, origin, original) in enumerate(result[side]) if origin != side]
    return {side: [t for t, _, _ in rows] for side, rows in result.items()}, moved


def write(args) -> None:
    import pandas as pd

    corpora = {side: read_jsonl(DEMO / f"{side}.jsonl") for side in SIDES}
    new, moved = contaminate(corpora, args.fraction, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for side, texts in new.items():
        (out / f"{side}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    pd.DataFrame(moved).to_csv(out / "moved.csv", index=False)
    counts = {side: sum(m["side"] == side for m in moved) for side in SIDES}
    print(f"{out}: {counts['forget']} retain documents now in forget.jsonl, {counts['retain']} forget documents "
          f"now in retain.jsonl ({len(new['forget'])} + {len(new['retain'])} documents)")


def score(args) -> None:
    import pandas as pd

    moved = pd.read_csv(Path(args.corpora) / "moved.csv")
    table = pd.read_csv(Path(args.audit) / "audit.csv")
    table = table[table["role"] == "scored"].merge(moved[["side", "index"]].assign(moved=True), how="left",
                                                   on=["side", "index"])
    table["moved"] = table["moved"].fillna(False).astype(bool)
    count = max(1, round(args.lowest * len(table)))
    total = int(table["moved"].sum())
    print(f"{total} moved among {len(table)} scored documents; the lowest {count} by each score:")
    print("| score | moved among the lowest | share of the lowest | share of the moved found |\n|---|---|---|---|")
    # Beside the influence scores, the simplest detector: the probe's own confidence in the label it was given
    # (p(forget) for a forget document, 1 - p(forget) for a retain one); lowest first, as for the scores.
    table["probe_confidence"] = table["p_forget"].where(table["side"] == "forget", 1 - table["p_forget"])
    for column in (*SCORES, "probe_confidence"):
        found = int(table.sort_values(column, kind="stable").head(count)["moved"].sum())
        print(f"| {column} | {found} / {count} | {found / count:.3f} | {found / total:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    w = commands.add_parser("write", help="write contaminated copies of the demo corpora")
    w.add_argument("--fraction", type=float, required=True, help="share of each side moved to the other")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--out", required=True, help="directory for forget.jsonl, retain.jsonl, moved.csv")
    w.set_defaults(run=write)
    s = commands.add_parser("score", help="share of moved documents among an audit's lowest scores")
    s.add_argument("corpora", help="the directory `write` filled")
    s.add_argument("audit", help="the audit's run directory (holds audit.csv)")
    s.add_argument("--lowest", type=float, default=0.10, help="share of scored documents inspected (default 0.10)")
    s.set_defaults(run=score)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
