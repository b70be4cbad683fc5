"""Each model family can fit one small synthetic volume: the loss halves within a few dozen steps."""

from __future__ import annotations

import pytest
import torch

from medseg.losses import DeepSupervisionLoss, build_loss
from medseg.models import build_model


def _volume(size=16):
    """(2, 1, S, S, S) noisy images with a bright ball (second one flipped), and (2, 1, S, S, S) labels.

    Batch 2 also keeps torch on its oneDNN convolutions (batch 1 of tiny maps falls back to slow_conv3d).
    """
    g = torch.Generator().manual_seed(0)
    axis = torch.arange(size, dtype=torch.float32) - size / 2 + 0.5
    r2 = axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis[None, None, :] ** 2
    label = (r2 < (size / 4) ** 2).long()
    image = label.float() + 0.3 * torch.randn(label.shape, generator=g)
    image, label = image[None, None], label[None, None]
    return torch.cat([image, image.flip(2)]), torch.cat([label, label.flip(2)])


@pytest.mark.parametrize(
    "name, options, lr",
    [("unet3d", {"deep_supervision": True}, 3e-2), ("deeplabv3plus3d", {"output_stride": 8, "blocks_per_stage": 1}, 1e-2),
     ("unet3d", {"deep_supervision": True, "encoder": "residual", "decoder_convs": 1}, 1e-2)],
)
def test_loss_halves_on_one_volume(name, options, lr):
    torch.manual_seed(0)
    image, label = _volume()
    model = build_model(name, {"features_per_stage": [4, 8, 16], "strides": [[1] * 3, [2] * 3, [2] * 3]}, in_channels=1, num_classes=2,
                        **options)
    loss_fn = DeepSupervisionLoss(build_loss("dice_ce"))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = loss_fn(model(image), label)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
