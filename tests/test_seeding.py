"""The deterministic-kernels switch (raydt/seeding.py): process-wide flags, read back."""

from __future__ import annotations

import os

import torch

from raydt.seeding import (
    CUBLAS_WORKSPACE,
    deterministic_enabled,
    restore_deterministic,
    set_deterministic,
)


def test_set_deterministic_turns_every_switch_and_restores_them(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.backends.cudnn.benchmark = True  # what a user's script may have set
    before = set_deterministic(True)
    try:
        assert before == (False, False, False, True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE == ":4096:8"
        assert deterministic_enabled()
    finally:
        restore_deterministic(before)
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert torch.backends.cudnn.benchmark  # as it was
    torch.backends.cudnn.benchmark = False


def test_a_cublas_workspace_already_set_is_kept(monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    before = set_deterministic(True)
    restore_deterministic(before)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
