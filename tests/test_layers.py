"""Imports point down the layers of docs/architecture.md: a medseg module imports only from its own
layer or the layers below it (at module level or inside a function alike). The few known upward
imports are listed, each with why, so a new one fails here instead of creeping in."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "medseg"

# Top to bottom, as the table in docs/architecture.md. A module belongs to the longest prefix listed.
LAYERS = [
    ("front ends", ["medseg.cli", "medseg.pipelines", "medseg.__main__"]),
    ("commands", ["medseg.commands", "medseg.batch", "medseg.output_paths", "medseg.instance_evaluation", "medseg.report",
                  "medseg.interactive.evaluate"]),
    ("api", ["medseg.api", "medseg", "medseg.interactive.session", "medseg.pacs"]),
    ("training", ["medseg.training", "medseg.data.sampler", "medseg.data.augment", "medseg.postprocess.select"]),
    ("inference", ["medseg.inference", "medseg.export"]),
    ("bundle", ["medseg.bundle"]),
    ("tracking", ["medseg.tracking", "medseg.tracking_lookup"]),
    ("models", ["medseg.models", "medseg.losses", "medseg.interactive"]),
    ("postprocess", ["medseg.postprocess"]),
    ("evaluation", ["medseg.evaluation", "medseg.instances"]),
    ("metrics", ["medseg.metrics"]),
    ("preprocess", ["medseg.preprocess"]),
    ("data", ["medseg.data"]),
    ("io", ["medseg.io", "medseg.plotting", "medseg.label_codes"]),
    ("vocabulary", ["medseg.volume", "medseg.errors", "medseg.precision", "medseg.schema", "medseg.extras",
                    "medseg.threads", "medseg.__version__"]),
]

# (importer, imported): why it is allowed for now.
KNOWN_UPWARD = {
    ("medseg.api", "medseg.batch"): "api re-exports batch.infer as medseg.infer; batch imports api only inside functions",
    ("medseg.bundle", "medseg.training.checkpoint"): "the bundle writer uses training's durable torch save (save_atomic)",
    ("medseg.inference.backends", "medseg.export.manifest"): "export folders run through the predictor's backends",
    ("medseg.inference.backends", "medseg.export.folder"): "export folders run through the predictor's backends",
    ("medseg.inference.backends", "medseg.export.bench"): "--runtime auto reads the export's stored micro-benchmark",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    best, rank = "", None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            inside = module == prefix or (prefix != "medseg" and module.startswith(prefix + "."))  # the package itself: exact
            if inside and len(prefix) > len(best):
                best, rank = prefix, index
    assert rank is not None, f"{module}: in no layer of tests/test_layers.py; add it (and to docs/architecture.md)"
    return rank


def imports_of(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "medseg":
            if node.module == "medseg":  # from medseg import tracking / __version__
                found += [(f"medseg.{alias.name}", node.lineno) for alias in node.names]
            else:
                found.append((node.module, node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names if alias.name.split(".")[0] == "medseg"]
    return found


def test_imports_point_down_the_layers():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for imported, line in imports_of(path):
            if layer_of(imported) < layer_of(importer) and (importer, imported) not in KNOWN_UPWARD:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {importer} ({LAYERS[layer_of(importer)][0]}) imports "
                              f"{imported} ({LAYERS[layer_of(imported)][0]})")
    assert not upward, "imports pointing up the layers of docs/architecture.md:\n" + "\n".join(upward)


def test_known_upward_imports_still_exist():
    """An exception that was fixed is taken off the list, so the list stays the truth."""
    present = {(module_name(p), imported) for p in PACKAGE.rglob("*.py") for imported, _ in imports_of(p)}
    assert not set(KNOWN_UPWARD) - present, sorted(set(KNOWN_UPWARD) - present)


def test_no_module_above_about_400_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long
