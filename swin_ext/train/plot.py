"""The PNG of a run's loss and accuracy curves (matplotlib, optional)."""
from __future__ import annotations

import sys
from typing import Any, Dict, Optional

__all__ = ["plot_curves"]


def plot_curves(history: Dict[str, Any], path: str, title: str = "") -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return None
    fig, (ax_l, ax_a) = plt.subplots(1, 2, figsize=(11, 4))
    steps = history.get("steps", [])
    if steps:
        s, losses = zip(*steps)
        ax_l.plot(s, losses, color="tab:blue", alpha=0.25, lw=0.8, label="train loss (step, label-smoothed)")
    ep = history.get("epochs", [])
    if ep:
        ax_l.plot(
            [e["step"] for e in ep],
            [e["train_loss"] for e in ep],
            "o-",
            color="tab:blue",
            label="train loss (epoch mean)",
        )
        ax_l.plot([e["step"] for e in ep], [e["test_loss"] for e in ep], "s-", color="tab:orange", label="test loss")
        ax_a.plot(
            [e["step"] for e in ep], [100 * e["test_acc"] for e in ep], "s-", color="tab:green", label="test accuracy"
        )
        best = max(ep, key=lambda e: e["test_acc"])
        ax_a.annotate(
            f"{100 * best['test_acc']:.2f}%",
            (best["step"], 100 * best["test_acc"]),
            textcoords="offset points",
            xytext=(0, -14),
            ha="center",
        )
    ax_l.set_xlabel("step")
    ax_l.set_ylabel("cross-entropy")
    ax_l.set_yscale("log")
    if steps or ep:
        ax_l.legend()
    ax_l.grid(alpha=0.3)
    ax_a.set_xlabel("step")
    ax_a.set_ylabel("test accuracy (%)")
    ax_a.grid(alpha=0.3)
    if ep:
        ax_a.legend(loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
