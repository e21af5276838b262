"""Figures shared by reports, convergence and analyses (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display on cluster nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves_figure():
    """A figure with two panels: a metric against training steps and against training seconds."""
    fig, (ax_steps, ax_secs) = pyplot().subplots(1, 2, figsize=(12, 4.5))
    return fig, ax_steps, ax_secs


def save_figure(fig, out: Path) -> Path:
    """Write ``fig`` to ``out`` (the format of its suffix; without one, PNG to ``out``.png,
    the path returned; parents made) and release it. Written atomically: a failed write
    leaves an earlier figure there, and a full disk is one line naming ``out``."""
    from raydt.fsutil import atomic_path

    out = Path(out)
    if not out.suffix:  # the file a reader opens says what it is, and the path printed is the file's
        out = out.with_suffix(".png")
    try:
        with atomic_path(out) as tmp:
            # The temporary's name ends in .tmp-PID: the format comes from out's.
            fig.savefig(tmp, dpi=120, format=out.suffix[1:].lower() or "png")
    finally:
        pyplot().close(fig)
    return out


def save_curves_figure(fig, ax_steps, ax_secs, ylabel: str, title: str, out: Path) -> Path:
    """Label, title and write a :func:`curves_figure` to ``out`` (PNG)."""
    ax_steps.set_xlabel("training steps")
    ax_secs.set_xlabel("training seconds (evaluation excluded)")
    for ax in (ax_steps, ax_secs):
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    ax_steps.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out)
