"""The command line's pre-check, shared by `python -m unlearn` and `python -m unlearn.audit`: Hydra's flags read,
look-alike letters in group choices folded, every job's config composed exactly as Hydra will (every combination
of a sweep) and checked, the output directory writable; Hydra's and OmegaConf's errors worded as one line.

    run(hydra_entry, check, "config")   # errors: one line on stderr, exit status 2; then Hydra runs the entry
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from unlearn import schema  # noqa: F401  (registers the config schemas in Hydra's ConfigStore)
from unlearn import slurm, sweep  # sweep also registers the resolver that names a multirun's run directories
from unlearn.errors import EXIT_BAD_INPUT, UnlearnError, first_line, one_line

log = logging.getLogger(__name__)


def bundled_conf_dir() -> Path:
    """The bundled configs: conf/ ships inside the package in a wheel (unlearn/conf); in a checkout (editable
    install, or the repository on PYTHONPATH) it is the repository's conf/, beside the package."""
    package = Path(__file__).resolve().parent
    return package / "conf" if (package / "conf").is_dir() else package.parent / "conf"


CONF_DIR = bundled_conf_dir()
GROUPS = ("model", "method", "data", "eval", "logger", "experiment")
INFO_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc",
              "--version", "--resolve", "--package", "-p"}
# Hydra's flags that take a value (--info's is optional: one of its choices)
VALUE_FLAGS = {"--config-path": "-cp", "--config-name": "-cn", "--config-dir": "-cd", "--cfg": "-c",
               "--package": "-p", "--experimental-rerun": None}
INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}
# Hydra does one of these a run (with two it raises a ValueError before its own error handling)
MODE_FLAGS = {"--run": "-r", "--multirun": "-m", "--cfg": "-c", "--info": "-i", "--shell-completion": "-sc"}
SEARCHPATH = "hydra.searchpath"


@dataclasses.dataclass
class ConfigSearch:
    """Where Hydra finds the configs of one command line: the primary folder (the bundled conf/, or a
    --config-path that holds the config) and the folders that add presets (--config-dir), which Hydra puts
    after the primary folder and before the command line's hydra.searchpath."""

    config_name: str = "config"
    primary: Path = CONF_DIR
    added: tuple[Path, ...] = ()

    def overrides(self, overrides: list[str]) -> list[str]:
        """`overrides` with the added folders at the head of hydra.searchpath, as Hydra searches them: the
        pre-check's loader then composes from the same search path as the run."""
        from hydra.core.override_parser.overrides_parser import OverridesParser

        given = [o for o in overrides if o.partition("=")[0] == SEARCHPATH]
        if not given and not self.added:
            return list(overrides)
        if given:
            with config_errors():
                entries = OverridesParser.create().parse_override(given[-1]).value()
        else:  # a primary config of one's own may set it
            primary = OmegaConf.load(self.primary / f"{self.config_name}.yaml")
            entries = OmegaConf.select(primary, SEARCHPATH) or []
        if not isinstance(entries, (list, ListConfig)):
            raise UnlearnError(f"{SEARCHPATH} must be a list of folders, e.g. {SEARCHPATH}=[file://my_conf]")
        for entry in map(str, entries):  # Hydra itself only warns, and then finds no preset there
            if entry.startswith("file://") and not Path(entry[len("file://"):]).expanduser().is_dir():
                raise UnlearnError(f"{SEARCHPATH} names {entry}, which is no directory: give the folder that holds "
                                   f"your presets, e.g. {SEARCHPATH}=[file://my_conf]")
        entries = [f"file://{folder}" for folder in self.added] + [str(entry) for entry in entries]
        quoted = ",".join(f"'{entry}'" for entry in entries)
        return [o for o in overrides if o not in given] + [f"{SEARCHPATH}=[{quoted}]"]

    def searchpath_overrides(self, overrides: list[str]) -> list[str]:
        return [o for o in self.overrides(overrides) if o.partition("=")[0] == SEARCHPATH]


@dataclasses.dataclass
class CommandLine:
    """The arguments as Hydra will read them: its flags (each with its value) and the overrides."""

    flags: list[str]
    overrides: list[str]
    search: ConfigSearch

    @property
    def multirun(self) -> bool:
        return "--multirun" in self.flags or "-m" in self.flags

    @property
    def informational(self) -> bool:
        return bool(INFO_FLAGS.intersection(self.flags))

    def argv(self) -> list[str]:
        return [*self.flags, *self.overrides]  # flags first: Hydra's parser takes the overrides in one run


def read_command_line(arguments: list[str], config_name: str) -> CommandLine:
    """Hydra's flags apart from the overrides. A folder of presets is found the Hydra way: `--config-dir DIR`
    adds it; so does `--config-path DIR` when DIR holds no config of that name (with one, DIR is the primary
    folder as in Hydra, and the bundled presets stay in the search path after it); relative folders are taken
    from the working directory; `hydra.searchpath=[file://DIR]` adds DIR too. Two of Hydra's modes at once
    (--multirun --cfg job) are refused here, where Hydra would raise."""
    flags, overrides, values = [], [], {}
    position = 0
    while position < len(arguments):
        argument = arguments[position]
        position += 1
        flag, sep, value = argument.partition("=")
        long_flag = next((name for name, short in VALUE_FLAGS.items() if flag in (name, short)), None)
        if long_flag is not None:
            if not sep:
                if position == len(arguments):
                    raise UnlearnError(f"{flag} needs a value")
                value, position = arguments[position], position + 1
            values[long_flag] = value
        elif argument in ("--info", "-i") and position < len(arguments) and arguments[position] in INFO_CHOICES:
            flags += [argument, arguments[position]]
            position += 1
        elif argument.startswith("-"):
            flags.append(argument)
        else:
            overrides.append(argument)
    given = set(values) | {flag.partition("=")[0] for flag in flags}  # values: under the long name (-c: --cfg)
    modes = [name for name, short in MODE_FLAGS.items() if {name, short} & given]
    if len(modes) > 1:
        hint = " (one job of a sweep: its overrides with one value each and --cfg job)" if "--multirun" in modes else ""
        raise UnlearnError(f"{' and '.join(modes)} can't be given together: Hydra does one of "
                           f"{', '.join(MODE_FLAGS)} at a time; drop all but one{hint}")
    config_name = values.get("--config-name", config_name)
    config_dir = values.pop("--config-dir", None)
    added = [_folder(config_dir, "--config-dir")] if config_dir else []
    primary = CONF_DIR
    if "--config-path" in values:
        folder = _folder(values.pop("--config-path"), "--config-path")
        if (folder / f"{config_name}.yaml").is_file():
            primary = folder
            values["--config-path"] = str(folder)
            if not added:
                added = [CONF_DIR]
        elif added:
            raise UnlearnError(f"--config-path {folder} holds no {config_name}.yaml, so it only adds presets, as "
                               "--config-dir does: give one folder with --config-dir, more with "
                               f"{SEARCHPATH}=[file://DIR1,file://DIR2]")
        else:
            added = [folder]
    if added:
        values["--config-dir"] = str(added[0])
    for flag, value in values.items():
        flags += [flag, value]
    return CommandLine(flags, overrides, ConfigSearch(config_name, primary, tuple(added)))


def _folder(given: str, flag: str) -> Path:
    folder = Path(given).expanduser().absolute()
    if not folder.is_dir():
        raise UnlearnError(f"{flag} {given}: no such directory ({folder}); give the folder that holds your presets, "
                           "e.g. my_conf with my_conf/data/two.yaml")
    return folder

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


def group_options(group: str, search: ConfigSearch | None = None, overrides: list[str] = ()) -> list[str]:
    """The presets of a config group in the whole search path (bundled, --config-dir, hydra.searchpath),
    without the schemas the ConfigStore holds beside them."""
    from hydra.core.object_type import ObjectType

    search = search or ConfigSearch()
    with config_errors(), config_loader(search) as loader:
        options = loader.get_group_options(group, results_filter=ObjectType.CONFIG, config_name=search.config_name,
                                           overrides=search.searchpath_overrides(list(overrides)))
    return sorted(name for name in options if not name.endswith("_schema"))


def normalize_argument(argument: str, options_of: Callable[[str], list[str]] = group_options) -> str:
    """Replace look-alike letters in a group choice when that makes it exactly one valid name (with a warning);
    reject an unknown group choice with the closest names."""
    key, sep, value = argument.partition("=")
    group = key.lstrip("+~")
    if not sep or group not in GROUPS or "," in value or not value or value == "null":
        if not argument.isascii() and ascii_lookalike(argument) != argument:
            odd = [f"'{ch}' (U+{ord(ch):04X})" for ch in argument if not ch.isascii()]
            print(f"warning: non-ASCII characters in argument {argument!r}: {', '.join(odd)}", file=sys.stderr)
        return argument
    options = options_of(group)
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


def check_sweepable(swept_keys: list[str], excluded: list[str]) -> None:
    """Swept keys must name their jobs apart: a key left out of run-directory names (`excluded`) would put every
    job of the sweep in one directory, each overwriting (or skipping as done) the one before."""
    for key in swept_keys:
        if sweep.is_excluded(key, excluded):
            raise UnlearnError(f"cannot sweep {key}: it is left out of run-directory names ({', '.join(excluded)}), "
                               "so every value would share one run directory; run one multirun per value instead, "
                               "each with its own hydra.sweep.dir=...")


def precheck(overrides: list[str], multirun: bool = False, search: ConfigSearch | None = None) -> None:
    """`python -m unlearn`'s pre-check: every job's plan (the checks that need no weights) and its logger."""
    from unlearn.run import plan
    from unlearn.tracking import check_logger

    def check(cfg: DictConfig, job: list[str]) -> None:
        plan(cfg, method_keys(job))
        check_logger(cfg)

    check_jobs(overrides, multirun, search or ConfigSearch("config"), check)


def check_jobs(overrides: list[str], multirun: bool, search: ConfigSearch,
               check: Callable[[DictConfig, list[str]], None]) -> None:
    """Compose the config of every job Hydra will run (each combination of a sweep) exactly as Hydra will, from
    the same search path, and `check(config, job overrides)` each: a bad value in a sweep stops it before any
    job starts. Then the output directory Hydra will write to must be writable."""
    with config_errors(), config_loader(search) as loader:
        master = loader.load_configuration(search.config_name, search.overrides(overrides), run_mode=RunMode.MULTIRUN,
                                           from_shell=True, validate_sweep_overrides=False)
        multirun = multirun or master.hydra.mode == RunMode.MULTIRUN  # an experiment preset can ask for one
        jobs, swept = sweep.planned_jobs(loader, master)
        if not multirun and swept:
            raise UnlearnError(f"{swept[0]} has several values, which only a sweep runs: add --multirun to run one "
                               f"job per value (or write a list as {swept[0]}=[...])")
        check_sweepable(swept, list(master.hydra.job.config.override_dirname.exclude_keys))
        if multirun:  # a launcher runs the jobs of a multirun only
            slurm.check_launcher(master.hydra)
        compose_job = job_composer(loader, master, swept)
        for number, job in enumerate(jobs, 1):
            with job_named(number, len(jobs), [o for o in job if o.partition("=")[0] in swept]):
                check(compose_job(job), job)
        check_writable(Path(master.hydra.sweep.dir if multirun else master.hydra.run.dir))


def job_composer(loader, master: DictConfig, swept: list[str]):
    """`compose(job_overrides)`: a job's config as the launcher composes it (`load_sweep_config`) and as the job
    sees it (without `hydra`), composing Hydra's defaults (the slow part, ~0.5 s) once per choice of config
    groups and other fixed overrides.

    Hydra applies an override of a plain key (not a config group) to the config after composing the defaults,
    in command-line order. A swept `key=value` of a plain key that no other override of the job touches is
    applied here the same way (`OmegaConf.update`), to a copy of the job's composed defaults; any other override
    (a group choice, `+`/`++`/`~`, a package, a key another override also sets) is composed by Hydra itself."""
    import copy

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    parser = OverridesParser.create()
    is_group = group_detector(loader, master)
    composed: dict[tuple[str, ...], DictConfig] = {}

    def compose_fully(overrides: tuple[str, ...]) -> DictConfig:
        if overrides not in composed:
            cfg = loader.load_sweep_config(master, list(overrides))
            with open_dict(cfg):
                del cfg["hydra"]  # as run_job hands it to the job
            composed[overrides] = cfg
        return composed[overrides]

    def compose(job: list[str]) -> DictConfig:
        parsed = parser.parse_overrides(job)
        late = [o for o in parsed if o.get_key_element() in swept and is_plain_change(o, parsed, is_group)]
        cfg = copy.deepcopy(compose_fully(tuple(o.input_line for o in parsed if o not in late)))
        try:
            for override in late:
                OmegaConf.update(cfg, override.key_or_group, override.value(), merge=True)  # as Hydra applies it
        except OmegaConfBaseException:
            return copy.deepcopy(compose_fully(tuple(job)))  # raises the error in Hydra's words
        return cfg

    return compose


def is_plain_change(override, job: list, is_group) -> bool:
    """`key=value` of a key that is not a config group, which no other override of the job sets (so the order
    Hydra applies them in cannot matter)."""
    from hydra.core.override_parser.types import OverrideType

    if override.type != OverrideType.CHANGE or override.package is not None or override.is_hydra_override():
        return False
    key = override.key_or_group
    if is_group(key):
        return False
    # what Hydra applies after composing (its defaults list's Overrides): a dict value, or a key that is no group
    others = [o.key_or_group for o in job
              if o is not override and (isinstance(o.value(), dict) or not is_group(o.key_or_group))]
    return not any(other == key or other.startswith(key + ".") or key.startswith(other + ".") for other in others)


def group_detector(loader, master: DictConfig):
    """`is_group(key)`: whether Hydra reads `key=...` as a config group choice (a folder of configs in its search
    path, or a ConfigStore group), asked of the loader's public interface once per parent group."""
    from hydra.core.object_type import ObjectType

    groups: dict[str, list[str]] = {}

    def is_group(key: str) -> bool:
        parent, _, name = key.rpartition("/")
        if parent not in groups:
            groups[parent] = loader.get_group_options(parent, results_filter=ObjectType.GROUP,
                                                      config_name=master.hydra.job.config_name,
                                                      overrides=list(master.hydra.overrides.hydra))
        return name in groups[parent]

    return is_group


@contextmanager
def config_loader(search: ConfigSearch | None = None):
    """Hydra's config loader on the primary config folder (the bundled conf/ unless the command line gives one
    of its own), as `python -m unlearn` uses it; `search.overrides` adds the other folders to what it loads."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    primary = (search or ConfigSearch()).primary
    if not (primary / "config.yaml").is_file() and primary == CONF_DIR:
        raise UnlearnError(f"the bundled configs are missing from {CONF_DIR}: reinstall unlearn (pip install "
                           "unlearn, or pip install -e . in its repository)")
    with initialize_config_dir(str(primary), version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


@contextmanager
def job_named(number: int, total: int, swept_values: list[str]):
    """A check of one job of a sweep fails naming the job and its swept values (a single run's, as it is)."""
    try:
        with config_errors():
            yield
    except UnlearnError as exc:
        if total == 1:
            raise
        raise UnlearnError(f"job {number} of {total} of the sweep ({', '.join(swept_values)}): {exc}") from None


def method_keys(overrides: list[str]) -> list[str]:
    """The `method.*` keys the command line sets (RNA refuses those of a method other than its base)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("hydra")])
    keys = [override.get_key_element().lstrip("+~") for override in parsed]
    return [key for key in keys if key.startswith("method.")]


@contextmanager
def config_errors():
    """Hydra's and OmegaConf's errors (a bad override, a wrong type) as one-line UnlearnErrors."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except (HydraException, OmegaConfBaseException) as exc:
        raise UnlearnError(_config_error(exc)) from None


LIST_KEYS = "the same command with --cfg job lists every key with its value"  # python -m unlearn or unlearn.audit
EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _config_error(exc: Exception) -> str:
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
        return _wrong_type(cause)
    text = one_line(exc, lines=2)
    if "not in struct" in text or "Could not override" in text:
        text += f" (check the key's spelling; {LIST_KEYS})"
    return text


def _unknown_key(key: str, node_type: type | None) -> str:
    parent, _, name = key.rpartition(".")
    keys = [f.name for f in dataclasses.fields(node_type)] if dataclasses.is_dataclass(node_type) else []
    close = difflib.get_close_matches(name, keys, n=1)
    hint = f"did you mean {'.'.join(filter(None, (parent, close[0])))}? " if close else ""
    where = f"a key of {parent}" if parent else "a config key"
    return f"{key} is not {where}: {hint}the keys there are {', '.join(keys)} (check the spelling; {LIST_KEYS})"


def _wrong_type(error) -> str:
    """A value the schema refuses, worded from the error's fields: the key, the value given and the field's type
    in its schema (the dataclass the error names, `object_type`)."""
    import typing
    from enum import Enum

    key, value = error.full_key, error.value
    given = "null" if value is None else repr(value)  # as it was typed
    expected = _field_type(error.object_type, str(error.key))
    if expected is None and error.object_type is None and value is None:  # `+data.topics.new={...}`: OmegaConf
        # 2.3 refuses a mapping for a typed node and its error carries no field but the message
        return (f"cannot add {key} as a whole from the command line (OmegaConf 2.3 assigns no mapping to a typed "
                "node): write it in a preset of your own, e.g. conf/data/<name>.yaml starting with "
                f"`defaults: [data_schema, _self_]`, and choose it with data=<name> ({LIST_KEYS})")
    if isinstance(expected, type) and issubclass(expected, Enum):  # a closed choice
        choices = ", ".join(member.value for member in expected)
        return f"{key}={given} is not a valid choice: give one of {choices} ({LIST_KEYS})"
    if typing.get_origin(expected) in (list, tuple):
        return f"{key} is a list: give one, e.g. {key}=[a,b] ({LIST_KEYS})"
    if expected in EXPECTED:
        what = EXPECTED[expected]
        return f"{key}={given} is not {what}: give {what}, e.g. {key}=... ({LIST_KEYS})"
    return f"{key}: {first_line(error)} ({LIST_KEYS})"


def _field_type(node_type: type | None, name: str):
    """The type of field `name` of a schema dataclass (Optional unwrapped), or None."""
    import typing

    if not dataclasses.is_dataclass(node_type):
        return None
    expected = typing.get_type_hints(node_type).get(name)
    arguments = [a for a in typing.get_args(expected) if a is not type(None)]
    if typing.get_origin(expected) is typing.Union and len(arguments) == 1:
        return arguments[0]
    return expected


def run(entry, check, config_name: str) -> None:
    """Read Hydra's flags, normalise the overrides, `check(overrides, multirun, search)` them (an UnlearnError
    is one line and exit 2), then hand over to the Hydra entry."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        command = read_command_line(sys.argv[1:], config_name)
        options: dict[str, list[str]] = {}

        def options_of(group: str) -> list[str]:
            if group not in options:
                options[group] = group_options(group, command.search, command.overrides)
            return options[group]

        command.overrides = [normalize_argument(a, options_of) for a in command.overrides]
        if not command.informational:
            check(command.overrides, command.multirun, command.search)
    except UnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    sys.argv = [sys.argv[0], *command.argv()]
    entry()
