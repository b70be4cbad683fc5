"""`medseg models [--patch 64x64x64] [--in-channels 1] [--classes 3]`: the model registry with sizes and costs."""

from __future__ import annotations

from typing import Annotated

import typer


def command(
    patch: Annotated[str, typer.Option(help="Patch size XxYxZ; 2D models use the first two sizes.")] = "64x64x64",
    in_channels: Annotated[int, typer.Option(min=1, help="Input channels (modalities).")] = 1,
    classes: Annotated[int, typer.Option(min=1, help="Output classes, background included.")] = 3,
) -> None:
    """List every registered model with its parameter count and the GFLOPs of one forward pass.

    The topology is nnU-Net-like for the patch: halve each axis while it is at least 8 voxels
    (at most 6 stages), features 32, 64, ... capped at 320 (3D) or 512 (2D).
    """
    from medseg.errors import ConfigError
    from medseg.models import MODELS, build_model, count_gflops, count_parameters, spatial_dims_of

    try:
        sizes = [int(v) for v in patch.lower().split("x")]
    except ValueError:
        sizes = []
    if len(sizes) not in (2, 3) or min(sizes) < 1:
        raise ConfigError(f"--patch {patch!r} is not a patch size; expected e.g. 64x64x64 (3D) or 128x128 (2D)")
    typer.echo(f"{'model':<18} {'parameters':>12} {'GFLOPs':>10}  patch")
    for name in MODELS:
        dims = spatial_dims_of(name)
        if len(sizes) < dims:
            typer.echo(f"{name:<18} {'-':>12} {'-':>10}  (needs a 3D patch)")
            continue
        shape = sizes[:dims]
        features, strides = _topology(shape, cap=320 if dims == 3 else 512)
        plan = {"spatial_dims": dims, "patch_size": shape, "features_per_stage": features, "strides": strides}
        model = build_model(name, plan, in_channels=in_channels, num_classes=classes, spacing=[1.0, 1.0, 1.0])
        gflops = count_gflops(model, (1, in_channels, *shape))
        typer.echo(f"{name:<18} {count_parameters(model):>12,} {gflops:>10.2f}  {'x'.join(map(str, shape))}")


def _topology(shape: list[int], cap: int, max_stages: int = 6) -> tuple[list[int], list[list[int]]]:
    strides, current = [[1] * len(shape)], list(shape)
    while len(strides) < max_stages:
        step = [2 if n >= 8 else 1 for n in current]
        if step == [1] * len(shape):
            break
        strides.append(step)
        current = [n // s for n, s in zip(current, step)]
    features = [min(32 * 2**i, cap) for i in range(len(strides))]
    return features, strides
