"""medseg in front of a PACS: DICOMweb round trips (`Client`), a watch service and a C-STORE receiver.

    import medseg, medseg.pacs
    predictor = medseg.load_model("work/models/unet3d")
    medseg.pacs.Client("http://localhost:8042/dicom-web").segment(study_uid, predictor)

- `config`: URL, HTTP basic / bearer-token auth from a config file or the environment, TLS;
- `dicomweb`: `Client` (QIDO-RS, WADO-RS into memory, STOW-RS, `segment`);
- `outputs`: the SEG / RTSTRUCT built by `medseg.write`, stamped with the algorithm (name, version);
- `state`: the watch service's SQLite store; `watch`: `Watcher` (Orthanc /changes or QIDO polling);
- `listen`: `Listener`, a pynetdicom C-STORE receiver that segments each series once it settles.

Needs the `pacs` extra (`pip install medseg[pacs]`: dicomweb-client, pynetdicom). Names are
imported on first use, so `import medseg.pacs` is cheap.
"""

_NAMES = {
    "Client": "dicomweb", "PacsError": "dicomweb", "PacsUnavailable": "dicomweb", "SeriesResult": "dicomweb",
    "PacsSettings": "config", "PacsAuth": "config", "load_settings": "config",
    "Algorithm": "outputs", "algorithm_of": "outputs", "build_outputs": "outputs",
    "StateStore": "state", "Watcher": "watch", "Listener": "listen",
}
__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        import importlib

        return getattr(importlib.import_module(f"medseg.pacs.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'medseg.pacs' has no attribute {name!r}")
