"""The demo tasks' data, for lm-eval's `custom_dataset` key: JSON Lines files beside this module.

lm-eval imports `!function demo_data.jsonl_beside_this_file` relative to the task YAML and calls it with the
task's `dataset_kwargs` (and its metadata, ignored here), so the tasks read their own files from any working
directory, in unlearn and on lm-eval's own command line alike.
"""

from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def jsonl_beside_this_file(data_files: dict, **metadata) -> datasets.DatasetDict:
    """A DatasetDict with one split per entry of `data_files` (file names relative to this directory)."""
    files = {split: str(HERE / name) for split, name in data_files.items()}
    return datasets.load_dataset("json", data_files=files)
