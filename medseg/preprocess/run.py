"""`run_preprocess`: the whole `medseg preprocess` job on a dataset (validate, fingerprint, plan,
then every case into the cache), in parallel worker processes, resumable after a kill."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import yaml
from pydantic import PrivateAttr, ValidationError

from medseg.errors import ConfigError, first_validation_problem
from medseg.preprocess.plan import Plan
from medseg.preprocess.planner import PlannerSettings, make_plan
from medseg.schema import StrictModel

Progress = Callable[[str, int, int], None]  # (stage, done, total)


class PreprocessConfig(StrictModel):
    """configs/preprocess.yaml."""

    labels: dict[int, str] | None = None  # declare labels for manifests that do not
    label_codes: dict | None = None  # DICOM codes per label value or name, over the dataset's (medseg.label_codes)
    label_code_table: str | None = None  # YAML/JSON {label name: codes} extending the built-in table
    planner: PlannerSettings = PlannerSettings()
    overrides: dict = {}  # merged over the planned Plan fields
    resample_irregular: bool = False  # read gantry-tilted / gapped DICOM series onto a regular grid (else refused)
    _source: str = PrivateAttr(default="the preprocess config")  # the YAML file, for error messages


def load_preprocess_config(path: str | os.PathLike | None) -> PreprocessConfig:
    """configs/preprocess.yaml-style file -> PreprocessConfig (defaults when `path` is None)."""
    if path is None:
        return PreprocessConfig()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
        config = PreprocessConfig.model_validate(data)
        config._source = str(path)
        if config.label_code_table:  # relative to the config file
            config.label_code_table = str(path.parent / Path(config.label_code_table).expanduser())
        return config
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc}); fix the YAML") from None
    except ValidationError as exc:
        raise ConfigError(f"{path}: {first_validation_problem(exc)}; see configs/preprocess.yaml for the valid keys") from None


@dataclass
class RunSummary:
    workdir: Path
    plan: Plan
    processed: list[str]
    skipped_unchanged: list[str]
    invalid: list  # Problems of cases left out (with --skip-invalid)
    cases_per_label: dict[int, int] | None = None  # label value -> cases whose mask holds it
    labels_declared: bool = True  # False: the labels are the values found in the masks


def _check_labels(labels: dict[int, str], source: str) -> None:
    from medseg.preprocess.plan import check_label_set

    try:
        check_label_set(labels)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _label_codes(manifest, config: PreprocessConfig, labels: dict[int, str]) -> dict:
    """DICOM codes for the plan's labels: config, then dataset, then user table, then built-in table."""
    from medseg.label_codes import load_code_table, parse_label_codes, resolve_label_codes

    declared = {**manifest.label_codes, **parse_label_codes(config.label_codes, labels, "label_codes in the preprocess config", ConfigError)}
    table = load_code_table(config.label_code_table) if config.label_code_table else None
    return resolve_label_codes(labels, declared, table, context=manifest.name)


def _write_json(path: Path, data) -> None:
    from medseg.io.atomic import atomic_output

    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")


def _pool_map(func, items: list, workers: int, progress: Progress | None, stage: str) -> Iterable:
    """Yield func(item) for each item (any order), `workers` processes; reports progress."""
    total = len(items)
    if progress:
        progress(stage, 0, total)
    if workers <= 1 or total <= 1:
        for i, item in enumerate(items):
            yield func(item)
            if progress:
                progress(stage, i + 1, total)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(min(workers, total)) as pool:
        for i, result in enumerate(pool.imap_unordered(func, items, chunksize=1)):
            yield result
            if progress:
                progress(stage, i + 1, total)


def _inspect(args):
    from medseg.preprocess.validate import inspect_case

    case, labels, channels, resample_irregular = args
    return inspect_case(case, labels, channels, resample_irregular)


def _process(args):
    from medseg.io import is_readable_image_path, read_volume
    from medseg.preprocess.cache import write_case
    from medseg.preprocess.case import preprocess_case

    case, stamp, workdir, plan_json, resample_irregular = args
    from medseg.errors import InputError, MedsegError

    plan = Plan.model_validate_json(plan_json)
    try:
        images = [read_volume(p, resample_irregular=resample_irregular and not is_readable_image_path(Path(p))) for p in case.images]
        label = read_volume(case.label) if case.label else None
        result = preprocess_case(images, plan, label)
    except MedsegError as exc:  # name the case: the message alone does not say which one
        exc.args = (f"case {case.case_id}: {exc}",)
        raise
    except Exception as exc:  # an unexpected failure still names its case (and keeps its type in the line)
        raise InputError(f"case {case.case_id}: preprocessing failed ({type(exc).__name__}: {exc}); check its image and label, "
                         "or leave it out of the manifest") from exc
    write_case(workdir, case.case_id, result, stamp)
    return case.case_id


def run_preprocess(
    dataset: str | os.PathLike,
    workdir: str | os.PathLike,
    config: PreprocessConfig | None = None,
    workers: int = 1,
    skip_invalid: bool = False,
    progress: Progress | None = None,
) -> RunSummary:
    """Validate the dataset, write manifest.json, fingerprint.json and plan.json into `workdir`,
    then preprocess every case whose inputs or plan changed since the last run.

    Raises `ValidationFailed` (with `.problems`) when a case is invalid, unless `skip_invalid`.
    """
    from medseg.data.manifest import load_manifest
    from medseg.preprocess.cache import cache_stamp, clean_partial
    from medseg.preprocess.fingerprint import compute_fingerprint
    from medseg.preprocess.validate import ValidationFailed

    config = config or PreprocessConfig()
    workdir = Path(workdir)
    manifest = load_manifest(dataset)
    if config.labels:
        manifest.labels = dict(config.labels)
    if manifest.labels:
        manifest.labels.setdefault(0, "background")
        _check_labels(manifest.labels, f"labels declared for {dataset}")
    from medseg.io.atomic import check_output_folder, check_plain_name, make_output_folder

    for c in manifest.cases:  # each becomes a folder preprocessed/<case_id>: it must stay inside --out
        check_plain_name(c.case_id, "case_id", dataset)
    check_output_folder(workdir, "--out")  # created once the plan is made: a refused run leaves nothing
    clean_partial(workdir)

    reports = list(_pool_map(_inspect, [(c, manifest.labels, len(manifest.channel_names) or None, config.resample_irregular)
                                        for c in manifest.cases], workers, progress, "validate"))
    problems = [p for r in reports for p in r.problems]
    if problems and not skip_invalid:
        raise ValidationFailed(problems)
    valid = {r.case_id: r for r in reports if not r.problems}
    cases = [c for c in manifest.cases if c.case_id in valid]
    for c in cases:
        c.sha256 = valid[c.case_id].sha256
    resolved = manifest.model_copy(update={"cases": cases})

    fingerprint = compute_fingerprint(manifest.name, manifest.channel_names, manifest.modalities, manifest.labels, [valid[c.case_id] for c in cases])
    if not manifest.labels:
        _check_labels({int(k): v for k, v in fingerprint["labels"].items()}, f"label values found in the masks of {dataset}")
    try:
        plan = make_plan(fingerprint, config.planner, config.overrides)
    except ConfigError as exc:
        if not config.overrides:
            raise
        raise ConfigError(f"{config._source}: {exc}; fix `overrides:` there") from None  # name the file they came from
    plan.label_codes = {**_label_codes(manifest, config, plan.labels), **plan.label_codes}  # overrides win
    plan.things = manifest.things if plan.things is None else plan.things
    plan.border_of = plan.border_of or manifest.border_of
    make_output_folder(workdir, "--out")
    _write_json(workdir / "manifest.json", json.loads(resolved.model_dump_json()))
    _write_json(workdir / "fingerprint.json", fingerprint)
    plan.save(workdir / "plan.json")

    digest = plan.digest()
    todo, unchanged = [], []
    for c in cases:
        input_hash = hashlib.sha256("".join(c.sha256[p] for p in sorted(c.sha256)).encode()).hexdigest()
        stamp = {"input_sha256": input_hash, "plan_digest": digest}
        if cache_stamp(workdir, c.case_id) == stamp:
            unchanged.append(c.case_id)
        else:
            todo.append((c, stamp, str(workdir), plan.model_dump_json(), config.resample_irregular))
    done = list(_pool_map(_process, todo, workers, progress, "preprocess"))
    return RunSummary(workdir, plan, sorted(done), unchanged, problems,
                      {int(k): n for k, n in fingerprint["cases_per_label"].items()}, fingerprint["labels_declared"])
