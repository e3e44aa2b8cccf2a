"""`python -m unlearn [overrides]`: check the arguments, then hand over to Hydra.

The pre-check composes the config exactly as Hydra will and runs every check that needs no weights, so a bad
argument costs a second and leaves nothing behind. Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from unlearn import sweep  # noqa: F401  (registers the resolver that names a multirun's run directories)
from unlearn import schema  # noqa: F401  (registers the config schemas in Hydra's ConfigStore)
from unlearn.errors import UnlearnError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("model", "method", "data", "eval", "logger", "experiment")
INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc",
              "--version", "--resolve", "--package", "-p"}
EXIT_BAD_INPUT = 2

def ascii_lookalike(text: str) -> str:
    """`text` with every character that Unicode lists as looking like an ASCII one replaced by it: NFKC folds
    fullwidth and compatibility forms ('ｒ' -> 'r'), then Unicode's confusables table (UTS #39) maps letters of
    other scripts ('а' Cyrillic -> 'a', 'ο' Greek -> 'o'); characters with no ASCII look-alike stay as they are."""
    if text.isascii():
        return text
    import unicodedata

    from confusable_homoglyphs import confusables  # loads a 1 MB table: only for arguments that need it

    folded = unicodedata.normalize("NFKC", text)
    replacements = {}
    for found in confusables.is_confusable(folded, greedy=True) or []:
        ascii_forms = [glyph["c"] for glyph in found["homoglyphs"] if glyph["c"].isascii()]
        if ascii_forms and not found["character"].isascii():  # ASCII letters are confusable with each other too
            replacements[found["character"]] = ascii_forms[0]
    return folded.translate(str.maketrans(replacements))


def group_options(group: str) -> list[str]:
    folder = CONF_DIR / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def normalize_argument(argument: str) -> str:
    """Replace look-alike letters in a group choice when that makes it exactly one valid name (with a warning);
    reject an unknown group choice with the closest names."""
    key, sep, value = argument.partition("=")
    group = key.lstrip("+~")
    if not sep or group not in GROUPS or "," in value or not value or value == "null":
        if not argument.isascii() and ascii_lookalike(argument) != argument:
            odd = [f"'{ch}' (U+{ord(ch):04X})" for ch in argument if not ch.isascii()]
            print(f"warning: non-ASCII characters in argument {argument!r}: {', '.join(odd)}", file=sys.stderr)
        return argument
    options = group_options(group)
    if value in options:
        return argument
    ascii_value = ascii_lookalike(value)
    odd = [f"'{ch}' (U+{ord(ch):04X})" for ch in value if not ch.isascii()]
    if ascii_value != value and ascii_value in options:
        print(f"warning: {group}={value!r} contains look-alike character(s) {', '.join(odd)}; "
              f"running {group}={ascii_value}", file=sys.stderr)
        return f"{key}={ascii_value}"
    if odd:
        raise UnlearnError(f"{group}={value!r} contains non-ASCII character(s) {', '.join(odd)}: "
                           f"type the name in ASCII; valid names: {', '.join(options)}")
    close = difflib.get_close_matches(value, options, n=1)
    hint = f"did you mean {group}={close[0]}? " if close else ""
    raise UnlearnError(f"unknown {group} '{value}': {hint}valid names: {', '.join(options)}")


def check_writable(directory: Path) -> None:
    """The run directory can be created: its first existing ancestor is a writable directory."""
    existing = directory.expanduser().absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UnlearnError(f"cannot write the output directory {directory} ({existing} is not a writable directory): "
                           "choose another with output_root=... (or hydra.sweep.dir=... for a sweep)")


def check_sweepable(swept_keys: list[str]) -> None:
    """Swept keys must name their jobs apart: a key left out of run-directory names would put every job of the
    sweep in one directory, each overwriting (or skipping as done) the one before."""
    from omegaconf import OmegaConf

    if not swept_keys:
        return
    excluded = list(OmegaConf.load(CONF_DIR / "config.yaml").hydra.job.config.override_dirname.exclude_keys)
    for key in swept_keys:
        if sweep.is_excluded(key, excluded):
            raise UnlearnError(f"cannot sweep {key}: it is left out of run-directory names ({', '.join(excluded)}), "
                               "so every value would share one run directory; run one multirun per value instead, "
                               "each with its own hydra.sweep.dir=...")


def _output_dir(cfg: DictConfig, overrides: list[str], multirun: bool) -> Path:
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    given = [o.split("=", 1)[1] for o in overrides if o.startswith(key)]
    if given:
        return Path(given[-1])
    return Path("multirun") if multirun else Path(cfg.output_root)


def precheck(overrides: list[str], multirun: bool = False) -> None:
    """Compose the config as Hydra will (first value of each sweep) and run the checks that need no weights."""
    from unlearn.run import plan
    from unlearn.tracking import check_logger

    with config_errors():
        cfg = compose_first(overrides)
        plan(cfg, method_keys(overrides))
        check_logger(cfg)
        check_writable(_output_dir(cfg, overrides, multirun))


def method_keys(overrides: list[str]) -> list[str]:
    """The `method.*` keys the command line sets (RNA refuses those of a method other than its base)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("hydra")])
    keys = [override.get_key_element().lstrip("+~") for override in parsed]
    return [key for key in keys if key.startswith("method.")]


def compose_first(overrides: list[str], config_name: str = "config") -> DictConfig:
    """The config Hydra will compose for the first job: the first value of each swept key."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not CONF_DIR.is_dir():
        raise UnlearnError(f"config directory {CONF_DIR} is missing: install unlearn from its repository with "
                           "`pip install -e .`")
    parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("hydra")])
    check_sweepable([override.get_key_element() for override in parsed if override.is_sweep_override()])
    first = []
    for override in parsed:
        if override.is_sweep_override():
            values = list(override.sweep_string_iterator())
            first.append(f"{override.get_key_element()}={values[0]}")
        else:
            first.append(override.input_line)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(config_name, overrides=first)


@contextmanager
def config_errors():
    """Hydra's and OmegaConf's errors (a bad override, a wrong type) as one-line UnlearnErrors."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except (HydraException, OmegaConfBaseException) as exc:
        raise UnlearnError(_first_line(exc)) from None


LIST_KEYS = "python -m unlearn --cfg job lists every key with its value"
EXPECTED = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false", "String": "a string"}


def _first_line(exc: Exception) -> str:
    """One line: OmegaConf's schema errors (here or as the cause of Hydra's) name the key, what was given, what
    is expected and where to list the keys; any other error keeps its own first lines."""
    from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, ValidationError

    cause = exc if getattr(exc, "full_key", None) else exc.__cause__
    key = getattr(cause, "full_key", None)
    if key and isinstance(cause, MissingMandatoryValue):
        return f"{key} is required but not set: give {key}=... ({LIST_KEYS}; ??? marks the unset ones)"
    if key and isinstance(cause, ConfigKeyError):
        return _unknown_key(key, getattr(cause, "object_type", None))
    if key and isinstance(cause, ValidationError):
        return _wrong_type(key, str(cause).splitlines()[0])
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines else type(exc).__name__
    if "not in struct" in text or "Could not override" in text:
        text += f" (check the key's spelling; {LIST_KEYS})"
    return text


def _unknown_key(key: str, schema: type | None) -> str:
    parent, _, name = key.rpartition(".")
    keys = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else []
    close = difflib.get_close_matches(name, keys, n=1)
    hint = f"did you mean {'.'.join(filter(None, (parent, close[0])))}? " if close else ""
    where = f"a key of {parent}" if parent else "a config key"
    return f"{key} is not {where}: {hint}the keys there are {', '.join(keys)} (check the spelling; {LIST_KEYS})"


def _wrong_type(key: str, message: str) -> str:
    import re

    found = re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", message)
    if not found:
        return f"{key}: {message} ({LIST_KEYS})"
    expected = EXPECTED.get(found[2], found[2])
    return f"{key}={found[1]!r} is not {expected}: give {expected}, e.g. {key}=... ({LIST_KEYS})"


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    from unlearn.sweep import already_completed

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    save_model = cfg.save_model if cfg.save_model is not None else not multirun
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if multirun and already_completed(cfg, run_dir):
        print(f"Skipping {run_dir}: already completed with this config (sweep.force=true redoes it)")
        return
    from unlearn.run import run  # after the skip check: a skipped job (a fresh worker process) needs no torch

    try:
        run(cfg, run_dir, save_model=bool(save_model), multirun=multirun)
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if not multirun:  # in a sweep the job is recorded as failed and the others go on
            sys.exit(1)
    except KeyboardInterrupt:
        print(f"interrupted: the run directory {run_dir} keeps the metrics so far", file=sys.stderr)
        sys.exit(130)
    except Exception:
        if not multirun:
            raise
        traceback.print_exc()  # a bug, not a bad config: the manifest says failed, the sweep goes on
    print(f"Run directory: {run_dir}")


def main() -> None:
    cli(hydra_main, precheck)


def cli(entry, check) -> None:
    """Normalise the arguments, `check(overrides, multirun)` them (an UnlearnError is one line and exit 2),
    then hand over to the Hydra entry."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    arguments = sys.argv[1:]
    try:
        arguments = [normalize_argument(a) if not a.startswith("-") else a for a in arguments]
        if not INFO_FLAGS.intersection(arguments):
            multirun = "--multirun" in arguments or "-m" in arguments
            check([a for a in arguments if not a.startswith("-")], multirun)
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    sys.argv = [sys.argv[0], *arguments]
    entry()


if __name__ == "__main__":
    main()
