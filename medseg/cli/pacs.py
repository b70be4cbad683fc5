"""`medseg pacs segment | watch | listen`: medseg in front of a PACS (DICOMweb or C-STORE).

The work lives in `medseg.pacs`; these commands parse, call it and print UIDs (never patient data).
Credentials: --config FILE, else $MEDSEG_PACS_CONFIG, else MEDSEG_PACS_USERNAME/PASSWORD or
MEDSEG_PACS_TOKEN (see medseg/pacs/config.py); never on the command line, where `ps` shows them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="Segment series of a PACS: DICOMweb round trips, a watch service, a C-STORE receiver.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)

Url = Annotated[Optional[str], typer.Option("--url", help="DICOMweb root, e.g. http://HOST:8042/dicom-web (else url: in --config, or $MEDSEG_PACS_URL).")]
Config = Annotated[Optional[Path], typer.Option("--config", help="PACS config file (YAML/JSON: url, username, password or token, ca_bundle, verify, timeout).")]
CaBundle = Annotated[Optional[Path], typer.Option("--ca-bundle", help="PEM file of the certificate authorities to trust for https (verification is always on otherwise).")]
Model = Annotated[list[str], typer.Option("--model", "-m", help="Bundle folder, MLflow run id or registered model name; repeat to ensemble.")]
Formats = Annotated[str, typer.Option("--format", help="dicom-seg, rtstruct, or both: dicom-seg,rtstruct.")]
Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
ResampleIrregular = Annotated[bool, typer.Option("--resample-irregular", help="Read gantry-tilted or gapped series onto a regular grid instead of refusing them; their SEG/RTSTRUCT go back onto the series' own slices.")]


def _formats(text: str) -> list[str]:
    from medseg.errors import ConfigError
    from medseg.pacs.outputs import FORMATS

    formats = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"--format {text!r}: {', '.join(bad) or 'nothing'} is not a PACS output; use dicom-seg, rtstruct or dicom-seg,rtstruct")
    return formats


def _quiet_libraries() -> None:
    """highdicom logs every module it copies at INFO: keep the service's log to medseg's own lines."""
    import logging

    for name in ("highdicom", "dicomweb_client", "pynetdicom"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _client(url, config, ca_bundle):
    from medseg.pacs.dicomweb import Client

    return Client(url, config=config, ca_bundle=ca_bundle)


def _model(model: list[str], device: str, resample_irregular: bool):
    import medseg

    return medseg.load_model(model, device=device, resample_irregular=resample_irregular)


@app.command("segment")
def segment(
    study: Annotated[str, typer.Option("--study", help="StudyInstanceUID.")],
    model: Model,
    url: Url = None,
    series: Annotated[Optional[str], typer.Option("--series", help="SeriesInstanceUID (default: every series of the model's modality in the study).")] = None,
    format: Formats = "dicom-seg,rtstruct",
    skip_existing: Annotated[bool, typer.Option("--skip-existing", help="Do not make again what this model already stored for the series.")] = False,
    config: Config = None,
    ca_bundle: CaBundle = None,
    device: Device = "auto",
    resample_irregular: ResampleIrregular = False,
) -> None:
    """Pull a series over WADO-RS, segment it, push the SEG and RTSTRUCT back with STOW-RS."""
    formats = _formats(format)
    _quiet_libraries()
    client = _client(url, config, ca_bundle)
    results = client.segment(study, _model(model, device, resample_irregular), series_uid=series, formats=formats, skip_existing=skip_existing)
    for result in results:
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items())
        typer.echo(f"series {result.series_uid}: {result.instances} instance(s); {stages}")
        for fmt, uid in result.stored.items():
            typer.echo(f"  stored {fmt} {uid}")
        for fmt in result.existing:
            typer.echo(f"  {fmt} already stored by this model; skipped")
        for fmt, why in result.skipped.items():
            typer.echo(f"  {fmt} not made: {why}")
        if result.empty:
            typer.echo("  the model found no label; nothing stored")


@app.command("watch")
def watch(
    model: Model,
    url: Url = None,
    modality: Annotated[Optional[str], typer.Option("--modality", help="Only series of this modality, e.g. MR.")] = None,
    series_description: Annotated[Optional[str], typer.Option("--series-description", help="Only series whose SeriesDescription matches this regex.")] = None,
    state: Annotated[Path, typer.Option("--state", help="Folder of the state store (state.sqlite); keep it across restarts.")] = Path("medseg-pacs-state"),
    once: Annotated[bool, typer.Option("--once", help="Process what is pending now, then exit (for cron).")] = False,
    format: Formats = "dicom-seg,rtstruct",
    poll: Annotated[float, typer.Option("--poll", min=0.1, help="Seconds between polls.")] = 5.0,
    source: Annotated[str, typer.Option("--source", help="auto (Orthanc's /changes when the server is Orthanc, else QIDO), orthanc or qido.")] = "auto",
    since: Annotated[Optional[str], typer.Option("--since", help="QIDO polling: first StudyDate to look at, YYYYMMDD (default: yesterday).")] = None,
    config: Config = None,
    ca_bundle: CaBundle = None,
    device: Device = "auto",
    resample_irregular: ResampleIrregular = False,
) -> None:
    """Segment every new matching series once (a long-running service; SIGTERM stops it cleanly)."""
    from medseg.errors import ConfigError
    from medseg.pacs.watch import Watcher

    if source not in ("auto", "orthanc", "qido"):
        raise ConfigError(f"--source {source!r} is invalid; use auto, orthanc or qido")
    if since is not None and not (len(since) == 8 and since.isdigit()):
        raise ConfigError(f"--since {since!r} is not a date; expected YYYYMMDD, e.g. 20240101")
    formats = _formats(format)
    _quiet_libraries()
    watcher = Watcher(_client(url, config, ca_bundle), _model(model, device, resample_irregular), state, formats=formats, modality=modality,
                      series_description=series_description, poll_interval=poll, source=source, since=since)
    counts = watcher.run(once=once)
    typer.echo(", ".join(f"{k} {v}" for k, v in counts.items()))
    if once and counts.get("failed"):
        raise typer.Exit(1)


@app.command("listen")
def listen(
    model: Model,
    send_to: Annotated[str, typer.Option("--send-to", help="Where results go: a DICOMweb URL (STOW-RS) or AET@HOST:PORT (C-STORE).")],
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="DICOM port to listen on.")] = 11112,
    ae_title: Annotated[str, typer.Option("--ae-title", help="This receiver's AE title.")] = "MEDSEG",
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "0.0.0.0",
    settle: Annotated[float, typer.Option("--settle", min=0.0, help="Seconds without a new instance before a series is complete.")] = 5.0,
    format: Formats = "dicom-seg,rtstruct",
    config: Config = None,
    ca_bundle: CaBundle = None,
    device: Device = "auto",
    resample_irregular: ResampleIrregular = False,
) -> None:
    """Receive series by C-STORE, segment each once it settles, send the SEG and RTSTRUCT on."""
    from medseg.errors import ConfigError
    from medseg.pacs.listen import Listener, sender_for

    if not 1 <= len(ae_title) <= 16:
        raise ConfigError(f"--ae-title {ae_title!r}: an AE title has 1 to 16 characters")
    formats = _formats(format)
    _quiet_libraries()
    sender = sender_for(send_to, ae_title, config=config, ca_bundle=ca_bundle) if send_to.startswith("http") else sender_for(send_to, ae_title)
    listener = Listener(_model(model, device, resample_irregular), sender, port=port, ae_title=ae_title, host=host, settle=settle, formats=formats)
    typer.echo(f"listening as {ae_title} on {host}:{port}; results to {send_to.split('?')[0]}")
    listener.serve_forever()
