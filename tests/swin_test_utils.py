"""Helpers shared by the checkpoint and backbone tests."""
import torch

from swin_ext import SwinTransformer

# Small 4-stage config: 224 px -> maps 56, 28, 14, 7, all window-divisible.
EMBED, DEPTHS, HEADS, WINDOW, NCLS = 32, (2, 2, 2, 2), (1, 2, 4, 8), 7, 5


def small(**kw):
    cfg = dict(embed_dim=EMBED, depths=DEPTHS, num_heads=HEADS, window_size=WINDOW, num_classes=NCLS,
               drop_path_rate=0.0)
    cfg.update(kw)
    return SwinTransformer(**cfg)


def randomize(module, std=0.3):
    """Non-trivial values everywhere (libraries init tables and LayerNorms to constants)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def snapshot(model):
    """A copy of every state_dict entry (for the bitwise-unchanged checks of failed loads)."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, snap):
    sd = model.state_dict()
    assert sd.keys() == snap.keys()
    for k, v in snap.items():
        assert torch.equal(sd[k], v), k
