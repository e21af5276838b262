"""Host-built batches onto the device without stalling it: reused page-locked buffers,
copied on a side stream.

An Atari batch (~100 MB of frames) is built on the host while the device trains on the
previous one. Allocating page-locked memory for each batch (``tensor.pin_memory()``) costs a
fresh host allocation and an extra copy per batch, and a copy issued on the default stream
queues behind the training step instead of beside it. Here a small ring of page-locked
buffers is filled in place and copied on a side stream; the consumer's stream waits for
that copy (an event, not a host sync), and a buffer is refilled only after the copy that
last read it has finished.

The device-specific steps are one small object (:class:`CudaCopies`); :class:`HostCopies`
does the same protocol on a CPU, so the ring, the order of waits and the batches themselves
are tested on a machine without a GPU.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch


class CudaCopies:
    """The device half of :class:`Feeder` on a CUDA device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=True)

    def copy(self, host: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Any]:
        """Device copies of ``host`` issued on the side stream, and the event that marks their end."""
        with torch.cuda.stream(self.stream):
            out = {name: t.to(self.device, non_blocking=True) for name, t in host.items()}
            done = torch.cuda.Event()
            done.record(self.stream)
        return out, done

    def wait_host(self, done: Any) -> None:
        """Block the host until the copy marked by ``done`` has read its buffers."""
        done.synchronize()

    def hand_over(self, tensors: dict[str, torch.Tensor], done: Any) -> None:
        """Make the consumer's stream wait for the copy, and keep the allocator from reusing
        the tensors' memory (allocated on the side stream) while that stream uses them."""
        current = torch.cuda.current_stream(self.device)
        current.wait_event(done)
        for t in tensors.values():
            t.record_stream(current)


class HostCopies:
    """The same protocol where the device is the CPU: a copy is a clone, nothing waits."""

    device = torch.device("cpu")

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype)

    def copy(self, host: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Any]:
        # A clone, not the buffer itself: the buffer is refilled while the batch may still be in use.
        return {name: t.clone() for name, t in host.items()}, None

    def wait_host(self, done: Any) -> None:
        pass

    def hand_over(self, tensors: dict[str, torch.Tensor], done: Any) -> None:
        pass


def copies_for(device: torch.device) -> CudaCopies | HostCopies:
    return CudaCopies(device) if device.type == "cuda" else HostCopies()


class Sent(NamedTuple):
    """A batch on its way to the device."""

    tensors: dict[str, torch.Tensor]
    """The device tensors (usable once :meth:`Feeder.receive` has handed them over)."""
    done: Any
    """What marks the end of their copy (a CUDA event; None on a CPU)."""


class Feeder:
    """A ring of ``slots`` host buffer sets: :meth:`buffers` (filled by the producer thread),
    :meth:`send`, then :meth:`receive` on the consumer's thread.

    Two slots suffice for one batch drawn ahead: slot i is refilled for batch i + 2, after
    batch i's copy has ended (usually long before: it ran beside batch i's step).
    """

    def __init__(self, copies: CudaCopies | HostCopies, slots: int = 2) -> None:
        self.copies = copies
        self._host: list[dict[str, torch.Tensor]] = [{} for _ in range(slots)]
        self._done: list[Any] = [None] * slots
        self._next = 0
        self._filling: int | None = None

    def buffers(self, layout: dict[str, tuple[tuple[int, ...], torch.dtype]]) -> dict[str, torch.Tensor]:
        """The next slot's host buffers with ``layout`` (name → (shape, dtype)), free to fill."""
        slot = self._next
        self._next = (slot + 1) % len(self._host)
        if self._done[slot] is not None:
            self.copies.wait_host(self._done[slot])
            self._done[slot] = None
        host = self._host[slot]
        for name, (shape, dtype) in layout.items():
            if name not in host or host[name].shape != shape or host[name].dtype != dtype:
                host[name] = self.copies.empty(shape, dtype)  # a new batch size: allocated once more
        self._filling = slot
        return {name: host[name] for name in layout}

    def send(self) -> Sent:
        """Copy the slot just filled to the device."""
        slot, self._filling = self._filling, None
        assert slot is not None, "send() follows buffers()"
        tensors, done = self.copies.copy(self._host[slot])
        self._done[slot] = done
        return Sent(tensors, done)

    def receive(self, sent: Sent) -> dict[str, torch.Tensor]:
        """The batch's device tensors, safe to use on the calling thread's stream."""
        self.copies.hand_over(sent.tensors, sent.done)
        return sent.tensors
