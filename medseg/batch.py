"""Many scans through one predictor: every output path checked before any work, one inference per
case written in every asked format, one failing case never losing the rest.

API level (it calls `medseg.api.read_scan`, `load_model` and `write`; `medseg.api.infer` is `infer`
here). `medseg infer` and `medseg run` pipelines call `infer`; front ends that loop themselves
(a PACS worker, a sharded job) call `plan_outputs` and `segment_case`.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from medseg.errors import ConfigError, InputError, MedsegError

log = logging.getLogger(__name__)

from medseg.output_paths import (  # noqa: F401  (re-exported: front ends that loop themselves use them)
    FILE_SUFFIXES, MULTI_FORMAT_NAMES, OBJECT_FORMATS, Cases, Outputs, check_formats_apply, first_output, parse_formats,
    plan_outputs,
)


def segment_case(predictor, paths: list[Path], targets: Outputs, *, series: str | None = None,
                 probabilities: bool = False, prompts: list | None = None) -> None:
    """Predict one case (one path per channel) once and write it in every format of `targets`.
    DICOM outputs reference the first channel's series. prompts: a promptable bundle's objects
    (`medseg.interactive.prompts.ObjectPrompts`), each segmented from its prompts."""
    from medseg.api import read_scan, write
    from medseg.io.atomic import check_output_dir

    for target in targets.values():
        check_output_dir(target)  # fail before a long prediction
    scan = read_scan(paths, series=series, **predictor.read_options)
    if "rtstruct" in targets and scan.datasets is not None:  # refuse before a long prediction
        from medseg.io.dicom import refuse_multiframe

        refuse_multiframe(scan.datasets)
    objects = any(f in OBJECT_FORMATS for f in targets)
    if prompts is not None:
        from medseg.interactive.session import segment_with_prompts

        segmentation = segment_with_prompts(predictor, scan, prompts)
    else:
        segmentation = predictor.segment(scan, probabilities=probabilities or objects)
    beside = first_output(targets)
    for format, target in targets.items():
        write(segmentation, target, format, probabilities=probabilities and target == beside)


@dataclass
class CaseResult:
    case_id: str
    seconds: float
    outputs: Outputs


@dataclass
class BatchResult:
    done: list[CaseResult] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (case id, one-line error)
    peak_memory_mb: float = 0.0
    many: bool = False  # the input named many scans (a table is printed, failures do not raise)
    skipped: list[str] = field(default_factory=list)  # done by an earlier run, outputs intact (the ledger)
    busy: list[str] = field(default_factory=list)  # claimed by another live process
    job_lines: list[str] = field(default_factory=list)  # the whole job's summary, from the ledger
    report: bool = True  # False on torchrun ranks > 0: only rank 0 prints
    review_page: Path | None = None  # infer(report=True): the HTML review page (medseg.report)


def run_case(predictor, paths: list[Path], targets: Outputs, *, series: str | None, probabilities: bool,
             stop_on_error: bool = False) -> tuple[float, str | None]:
    """`segment_case` timed: (seconds, None) or (seconds, its one-line error); a bug on one case
    is reported as an internal error so a batch goes on (unless `stop_on_error`: raised as is)."""
    start = time.perf_counter()
    try:
        segment_case(predictor, paths, targets, series=series, probabilities=probabilities)
    except MedsegError as exc:
        if stop_on_error:
            raise
        return time.perf_counter() - start, str(exc)
    except Exception as exc:  # a bug on one case must not lose the rest of a batch
        if stop_on_error:
            raise
        log.debug("case failed", exc_info=True)
        return time.perf_counter() - start, f"internal error: {type(exc).__name__}: {exc}"
    return time.perf_counter() - start, None


def segment_cases(predictor, cases: Cases, outputs: list[Outputs], *, series: str | None = None,
                  probabilities: bool = False, stop_on_error: bool = False,
                  progress: Callable[[str], None] | None = None) -> BatchResult:
    """Segment every case into its outputs. A failing case is recorded and the rest go on, unless
    `stop_on_error` (one scan: its error is raised as is). `progress` receives one line per case."""
    result = BatchResult()
    say = progress or (lambda line: None)
    for n, ((case_id, paths), targets) in enumerate(zip(cases, outputs), start=1):
        seconds, error = run_case(predictor, paths, targets, series=series, probabilities=probabilities,
                                  stop_on_error=stop_on_error)
        if error is not None:
            result.failures.append((case_id, error))
            say(f"[{n}/{len(cases)}] {case_id}: FAILED: {error}")
            continue
        result.done.append(CaseResult(case_id, seconds, targets))
        say(f"[{n}/{len(cases)}] {case_id}: {seconds:.1f} s -> {', '.join(map(str, targets.values()))}")
    result.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def written_files(targets: Outputs, probabilities: bool) -> list[Path]:
    """Every file one case writes: its outputs, and the probability maps beside the first."""
    from medseg.api import probabilities_path

    files = list(targets.values())
    return files + [probabilities_path(first_output(targets))] if probabilities else files


def remove_temporaries(files: list[Path], pid: int) -> None:
    """Delete the temporary files (`medseg.io.atomic.atomic_output` names) that process `pid`,
    now dead, left beside `files`."""
    import shutil

    from medseg.io.atomic import full_suffix

    for path in files:
        suffix = full_suffix(path)
        stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
        tmp = path.with_name(f".{stem}.tmp-{pid}{suffix}")
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink(missing_ok=True)


def segment_sharded(predictor, cases: Cases, outputs: list[Outputs], folder: Path, *, shard, key: str,
                    series: str | None = None, probabilities: bool = False, max_attempts: int = 3,
                    lease_s: float = 3600.0, progress: Callable[[str], None] | None = None) -> BatchResult:
    """This shard's cases of a many-scan job, exactly once across runs, through the ledger in
    `folder` (`medseg.inference.ledger`): a case done before with intact outputs is skipped, a
    failed one retried until it failed `max_attempts` times, a dead process's claim taken over.
    Under torchrun the ranks meet at a (gloo) barrier, then rank 0 reports the whole job."""
    from medseg.inference.ledger import Ledger, job_summary, shard_of, wait_for_ranks

    result = BatchResult(many=True, report=not shard.torchrun or shard.index == 0)
    say = progress if result.report and progress else (lambda line: None)
    ledger = Ledger(folder, key, rank=shard.index, world=shard.count, lease_s=lease_s)
    started, ids = time.time(), [case_id for case_id, _ in cases]
    try:
        records = ledger.refresh()
        todo = []
        for i, ((case_id, paths), targets) in enumerate(zip(cases, outputs)):
            record = records.get(case_id)
            if shard_of(i, shard.count) != shard.index:
                continue
            if record is not None and record.state == "done" and ledger.intact(record):
                result.skipped.append(case_id)
            elif record is not None and record.state == "failed" and record.failures >= max_attempts:
                result.failures.append((case_id, f"{record.error} (failed {record.failures} times; not retried: "
                                                 f"fix the input, then delete {folder / 'medseg-ledger'} or raise --retries)"))
            elif record is not None and record.state in ("pending", "claimed") and ledger.claim_alive(record):
                result.busy.append(case_id)
            else:
                if record is not None and record.host == ledger.host and record.state in ("pending", "claimed"):
                    remove_temporaries(written_files(targets, probabilities), record.pid)  # left by the dead claim
                todo.append((case_id, paths, targets))
        ledger.pending([case_id for case_id, _, _ in todo])
        if shard.count > 1 or result.skipped:
            say(f"shard {shard.index}/{shard.count}: {len(todo)} case(s) to do, {len(result.skipped)} already done, "
                f"{len(result.busy)} claimed by another live process")
        for n, (case_id, paths, targets) in enumerate(todo, start=1):
            ledger.claim(case_id)
            seconds, error = run_case(predictor, paths, targets, series=series, probabilities=probabilities)
            if error is None:
                ledger.done(case_id, seconds, written_files(targets, probabilities))
                result.done.append(CaseResult(case_id, seconds, targets))
            else:
                ledger.failed(case_id, error, seconds)
                result.failures.append((case_id, error))
            ledger.refresh()
            counts = ledger.counts(ids)
            what = f"FAILED: {error}" if error is not None else f"{seconds:.1f} s -> {', '.join(map(str, targets.values()))}"
            say(f"[{n}/{len(todo)}; job {counts['done']}/{len(ids)} done] {case_id}: {what}")
        if shard.torchrun:
            wait_for_ranks(ledger, ids, say)
        ledger.refresh()
        result.job_lines = job_summary(ledger, ids, since=started)
        if shard.torchrun and shard.index == 0:  # rank 0's exit status stands for the job
            result.failures = [(r.case, r.error) for r in map(ledger.cases.get, ids) if r is not None and r.state == "failed"]
    finally:
        ledger.close()
    result.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def summary_lines(result: BatchResult, rows: int = 100) -> list[str]:
    """The table printed after a batch: one row per case of this process (the slowest `rows` of
    a bigger batch), the counts, then the whole job's lines from the ledger. Nothing on torchrun
    ranks > 0."""
    if not result.report:
        return []
    shown = sorted(result.done, key=lambda r: -r.seconds)[:rows] if len(result.done) > rows else result.done
    lines = [f"{'case':<40} {'result':<8} seconds"] if shown or result.failures else []
    lines += [f"{r.case_id:<40} {'ok':<8} {r.seconds:.1f}" for r in shown]
    if len(shown) < len(result.done):
        lines.append(f"... and {len(result.done) - len(shown)} faster case(s)")
    lines += [f"{case_id:<40} {'FAILED':<8} {message}" for case_id, message in result.failures]
    counts = f"{len(result.done)} ok, {len(result.failures)} failed"
    if result.skipped:
        counts += f", {len(result.skipped)} already done (outputs intact, skipped)"
    if result.busy:
        counts += f", {len(result.busy)} left to the live process that claimed them"
    lines.append(counts)
    return lines + result.job_lines


def log_infer_run(predictor, model_refs, workdir: Path | None, result: BatchResult, options: dict) -> None:
    """One MLflow run per `medseg infer`, in the dataset's experiment beside training and evaluation.

    Logged to `workdir`'s store, else to the store of the workdir the first bundle was trained in
    (bundles live in WORKDIR/models/<preset>/fold_k), else only when MLFLOW_TRACKING_URI is set.
    """
    from medseg import tracking

    if workdir is None:
        parents = Path(predictor.bundles[0].path).resolve().parents
        candidate = parents[2] if len(parents) > 2 else None
        if candidate is not None and (candidate / "plan.json").is_file():
            workdir = candidate
    if workdir is None and not os.environ.get("MLFLOW_TRACKING_URI"):
        return
    dataset = predictor.bundle.plan.dataset_name
    with tracking.open_tracker(workdir, dataset, run_name="infer", tags={"medseg.command": "infer", "dataset": dataset}) as tracker:
        tracker.log_params({"infer.model": ",".join(map(str, model_refs))[:500], **{f"infer.{k}": v for k, v in options.items()}})
        seconds = [r.seconds for r in result.done]
        tracker.log_metrics({
            "cases_ok": len(result.done), "cases_failed": len(result.failures), "peak_memory_mb": result.peak_memory_mb,
            **({"seconds_per_case": sum(seconds) / len(seconds)} if seconds else {}),
        })
        if result.review_page is not None:
            tracker.log_artifact(result.review_page)


def infer(input: str | os.PathLike, model, output: str | os.PathLike | None = None, *,
          format: str | Sequence[str] = "nifti", series: str | None = None, probabilities: bool = False,
          workdir: str | os.PathLike | None = None, progress: Callable[[str], None] | None = None,
          shard: str | None = None, retries: int = 2, report: bool = False, prompt: str | os.PathLike | None = None,
          **model_options) -> BatchResult:
    """Segment one scan or many (a folder, a manifest) with a model, writing each in every format.

    input: as `medseg infer` takes it (see `medseg.data.cases.discover_cases`); model: what
    `medseg.load_model` takes (bundle folder, run id, runs:/ URI, registered name, or a list);
    format: "nifti", "dicom-seg", "rtstruct" or several ("nifti,rtstruct"); model_options: the
    keyword arguments of `medseg.load_model` (folds, device, precision, tta, overlap, ...).
    One scan: its error is raised. Many: failures are collected in the result, and the job runs
    through a ledger in the output folder (`segment_sharded`): a rerun does only what is not done,
    retrying a failed case `retries` times. shard: "I/N" (this process does every N-th case from
    the I-th); under torchrun (RANK/WORLD_SIZE set) each rank takes its share, on its LOCAL_RANK GPU.
    report: also write the HTML review page of the run (`medseg.report`; `result.review_page`), logged to MLflow.
    prompt: a prompt file (`medseg.interactive.prompts`) for one scan and a promptable bundle.
    """
    from medseg.api import load_model
    from medseg.data.cases import discover_cases
    from medseg.io.atomic import make_output_folder

    input = Path(input)
    output = Path(output) if output is not None else None
    workdir = Path(workdir) if workdir is not None else None
    formats = parse_formats(format)
    cases, many = discover_cases(input)
    if many and output is None:
        raise InputError(f"{input} holds {len(cases)} scans; give an output folder with -o OUT_DIR")
    check_formats_apply(cases, formats)
    objects = None
    if prompt is not None:  # read and checked before any model loads
        from medseg.interactive.prompts import load_prompts

        if many:
            raise InputError(f"{input} holds {len(cases)} scans; --prompt gives the prompts of one scan, so give one scan")
        objects = load_prompts(prompt)
    outputs = plan_outputs(input, cases, many, output, formats, probabilities)  # checked before any model loads
    if report:  # the review page: its path and matplotlib checked before any work
        from medseg.report import plan_page, review_batch

        page = plan_page(outputs[0], output, many or len(formats) > 1)
    from medseg.inference.ledger import job_key, parse_shard, take_local_gpu

    part = parse_shard(shard)
    if part.count > 1 and not many:
        raise InputError(f"{input} is one scan; --shard and torchrun share out a folder or manifest of many scans")
    if retries < 0:
        raise ConfigError(f"--retries {retries}: expected 0 or more retries of a failed case, e.g. --retries 2")
    if part.torchrun and model_options.get("device", "auto") in ("auto", "cuda"):
        take_local_gpu(part.local_rank)
    predictor = load_model(model, workdir=workdir, **model_options)
    if progress and (not part.torchrun or part.index == 0):
        progress(f"precision: {predictor.precision.describe()}; {len(predictor.bundles)} model(s); device {predictor.device}")
    if many or len(formats) > 1:
        make_output_folder(output if output is not None else Path("."), "-o")
    if many:
        key = job_key([b.path for b in predictor.bundles], {**model_options, "format": formats, "series": series,
                                                             "probabilities": probabilities})
        result = segment_sharded(predictor, cases, outputs, output, shard=part, key=key, series=series,
                                 probabilities=probabilities, max_attempts=1 + retries, progress=progress)
    elif objects is not None:
        if not predictor.bundle.plan.prompt_channels:
            raise ConfigError(f"--prompt {prompt}: {predictor.bundle.path} is not a promptable model; train one with "
                              "configs/interactive3d.yaml, or leave out --prompt")
        start = time.perf_counter()
        segment_case(predictor, cases[0][1], outputs[0], series=series, probabilities=probabilities, prompts=objects)
        result = BatchResult(done=[CaseResult(cases[0][0], time.perf_counter() - start, outputs[0])])
        result.peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    else:
        result = segment_cases(predictor, cases, outputs, series=series, probabilities=probabilities,
                               stop_on_error=True, progress=progress)
    result.many = many
    if not result.report:  # one MLflow run per job, from rank 0
        return result
    if report:
        result.review_page = review_batch(result, cases, outputs, page, predictor, series=series)
    refs = [model] if isinstance(model, (str, os.PathLike)) else list(model)
    log_infer_run(predictor, refs, workdir, result, {
        "precision": predictor.precision.resolved.value, "overlap": predictor.overlap, "tta": predictor.tta,
        "format": ",".join(formats), "batch_size": predictor.batch_size,
        "fp16_buffer": bool(model_options.get("fp16_buffer", False)),
    })
    return result

