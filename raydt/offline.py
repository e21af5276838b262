"""``RAYDT_OFFLINE=1``: no network at all, decided once, before any library asks.

Every library raydt downloads through has its own switch, read when it is first imported:
huggingface_hub (``HF_HUB_OFFLINE``), transformers (``TRANSFORMERS_OFFLINE``), datasets
(``HF_DATASETS_OFFLINE``). :func:`apply` sets them all from raydt's one variable, so a hub
id that is not cached fails at once instead of after the hub client's retries; raydt's own
downloaders (D4RL files, Minari datasets, WikiText) ask :func:`is_offline`.
"""

from __future__ import annotations

import os

VARIABLE = "RAYDT_OFFLINE"
LIBRARY_SWITCHES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def is_offline() -> bool:
    """Whether downloads are off: ``RAYDT_OFFLINE`` when it is set (to anything), else the
    hub's own ``HF_HUB_OFFLINE``."""
    if os.environ.get(VARIABLE) is not None:
        return _truthy(os.environ[VARIABLE])
    return _truthy(os.environ.get("HF_HUB_OFFLINE"))


def apply() -> bool:
    """Switch every library to its offline mode when raydt is offline; returns whether it
    is. Call before huggingface_hub, transformers or datasets is imported (the CLI and each
    Ray worker do so first thing); child processes and local Ray workers inherit it."""
    if not is_offline():
        return False
    for name in LIBRARY_SWITCHES:
        os.environ[name] = "1"
    return True
