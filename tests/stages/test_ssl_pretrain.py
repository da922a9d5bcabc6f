"""Two views through the encoder: one pass with shared BatchNorm statistics, or one pass per view."""

from __future__ import annotations

import torch
from torch import nn

from hvkit_plugins.stages.ssl_pretrain import encode_views


def test_joint_views_share_batch_statistics_and_separate_views_do_not() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)).train()
    a, b = torch.randn(8, 5), torch.randn(8, 5) * 3 + 2  # two views with different statistics
    joint = encode_views(model, a, b, joint=True)
    separate = encode_views(model, a, b, joint=False)
    h_a, h_b = model[0](a), model[0](b)

    def standardise(h: torch.Tensor) -> torch.Tensor:  # BatchNorm's train-mode output at its initial affine
        return (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)

    both = standardise(torch.cat([h_a, h_b]))
    torch.testing.assert_close(joint[0], both[:8])
    torch.testing.assert_close(joint[1], both[8:])
    torch.testing.assert_close(separate[0], standardise(h_a))
    torch.testing.assert_close(separate[1], standardise(h_b))
    for z in separate:  # each view is centred and scaled on its own
        torch.testing.assert_close(z.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    assert not torch.allclose(joint[1].mean(0), torch.zeros(4), atol=1e-2)
