"""DQN-replay (Agarwal et al.) checkpoints: Dopamine's replay-buffer files, read with numpy
and gzip only, with the Decision Transformer's selection of trajectories.

A run directory (``<Game>/<run>/replay_logs``, or any folder holding the files) has, per
checkpoint N, four gzip files each holding one ``np.save`` array:

    $store$_observation_ckpt.N.gz   uint8  (T, 84, 84)  single grayscale frames
    $store$_action_ckpt.N.gz        int32  (T,)
    $store$_reward_ckpt.N.gz        float32 (T,)        clipped to [-1, 1]
    $store$_terminal_ckpt.N.gz      uint8  (T,)         1 on an episode's last transition

Dopamine starts every episode with 3 all-zero padding transitions (frame 0, action 0,
reward 0, not terminal) so that the first real state can be a stack of 4 frames
``[0, 0, 0, f_0]``. raydt drops the padding transitions and keeps one frame per real
transition; a state is the stack of frames t−3 … t of its episode with zeros before the
start, built on the fly (:meth:`AtariTrajectories.stacked`): 500k transitions take 3.5 GB
instead of the 14 GB of pre-stacked states.

Selection as in the Decision Transformer's ``create_dataset``: repeatedly pick one of the
last ``num_buffers`` checkpoints at random, read ``trajectories_per_buffer`` whole
trajectories from where that checkpoint's cursor stands (only its first
``buffer_capacity`` transitions are used, as DT's ``replay_capacity``), until at least
``num_steps`` transitions are held. Two deliberate differences: the released code reads one
trajectory more per visit than it asks for and, when a checkpoint runs out mid-visit,
discards the visit's finished trajectories too (and revisits the same span forever once
every checkpoint is spent); raydt keeps finished trajectories, retires the spent
checkpoint, and stops with what it has when all are spent. A checkpoint whose first
transitions are not padding (a ring buffer that wrapped mid-episode) is read from its first
episode start.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raydt.data.trajectories import returns_to_go, segment_ids
from raydt.errors import DataError

PADDING = 3
"""Zero transitions Dopamine writes before every episode (stack size 4 − 1)."""
STACK = 4
FRAME = (84, 84)
KEYS = ("observation", "action", "reward", "terminal")
_FILE = re.compile(r"^\$store\$_observation_ckpt\.(\d+)\.gz$")


def checkpoint_file(directory: Path, key: str, index: int) -> Path:
    return Path(directory) / f"$store$_{key}_ckpt.{index}.gz"


def write_checkpoint(directory: Path, index: int, observations: np.ndarray, actions: np.ndarray,
                     rewards: np.ndarray, terminals: np.ndarray, compresslevel: int = 1) -> None:
    """Write one checkpoint's four files (arrays already in Dopamine's layout, padding included)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {"observation": np.asarray(observations, np.uint8), "action": np.asarray(actions, np.int32),
              "reward": np.asarray(rewards, np.float32), "terminal": np.asarray(terminals, np.uint8)}
    for key, array in arrays.items():
        path = checkpoint_file(directory, key, index)
        tmp = path.with_name(path.name + ".tmp")
        with gzip.open(tmp, "wb", compresslevel=compresslevel) as f:
            np.save(f, array, allow_pickle=False)
        tmp.replace(path)


def dopamine_layout(episodes: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...]:
    """Episodes of (frames (T, 84, 84) uint8, actions (T,), rewards (T,)) → flat
    (observations, actions, rewards, terminals) with 3 padding transitions before each."""
    obs, act, rew, term = [], [], [], []
    for frames, actions, rewards in episodes:
        n = len(frames)
        obs += [np.zeros((PADDING, *frames.shape[1:]), np.uint8), frames.astype(np.uint8)]
        act += [np.zeros(PADDING, np.int32), np.asarray(actions, np.int32)]
        rew += [np.zeros(PADDING, np.float32), np.asarray(rewards, np.float32)]
        end = np.zeros(n, np.uint8)
        end[-1] = 1
        term += [np.zeros(PADDING, np.uint8), end]
    return tuple(np.concatenate(x) for x in (obs, act, rew, term))


def _read_npy(path: Path, rows: slice | None = None) -> np.ndarray:
    """An ``np.save`` array inside a gzip file; with ``rows``, only those leading-axis rows
    are decompressed into memory (a 1M-frame observation file is 7 GB uncompressed)."""
    if not path.is_file():
        raise DataError(f"{path} not found: a DQN-replay checkpoint needs all of {', '.join(KEYS)}")
    try:
        with gzip.open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            if fortran:
                raise DataError(f"{path}: Fortran-ordered arrays are not DQN-replay files")
            start, stop = (0, shape[0]) if rows is None else (rows.start, min(rows.stop, shape[0]))
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            if start:
                f.seek(f.tell() + start * row_bytes)
            data = f.read(max(stop - start, 0) * row_bytes)
    except (OSError, EOFError, ValueError) as exc:
        raise DataError(f"{path}: not a readable gzip'd .npy file ({exc})") from None
    if len(data) != max(stop - start, 0) * row_bytes:
        raise DataError(f"{path}: truncated ({len(data)} bytes where {(stop - start) * row_bytes} were expected)")
    return np.frombuffer(data, dtype=dtype).reshape(max(stop - start, 0), *shape[1:])


def find_replay_dir(path: Path) -> Path:
    """The folder holding the checkpoint files: ``path`` or its ``replay_logs``."""
    for candidate in (Path(path), Path(path) / "replay_logs"):
        if candidate.is_dir() and any(_FILE.match(p.name) for p in candidate.iterdir()):
            return candidate
    raise DataError(f"dqn-replay:{path}: no $store$_observation_ckpt.N.gz files there or in its replay_logs/")


def checkpoint_indices(directory: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in Path(directory).iterdir() if (m := _FILE.match(p.name)))


@dataclass
class AtariTrajectories:
    """Atari transitions, episodes contiguous, one 84×84 frame per transition."""

    frames: np.ndarray
    """(N, 84, 84) uint8: the newest frame of each transition's state."""
    actions: np.ndarray
    """(N,) int64 action ids."""
    rewards: np.ndarray
    """(N,) float32 (clipped rewards, as stored)."""
    starts: np.ndarray
    """(E,) int64"""
    lengths: np.ndarray
    """(E,) int64"""
    num_actions: int
    """Size of the game's action set."""
    env_id: str | None = None
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.episode_ids = segment_ids(self.lengths)  # (N,)
        self.episode_start = np.repeat(self.starts, self.lengths)  # (N,) first index of each transition's episode
        self.timesteps = np.arange(len(self.actions), dtype=np.int64) - self.episode_start  # (N,)
        self.returns_to_go = returns_to_go(self.rewards, self.lengths)  # (N,) float64
        self.episode_returns = self.returns_to_go[self.starts]  # (E,)

    @property
    def num_steps(self) -> int:
        return int(len(self.actions))

    @property
    def num_episodes(self) -> int:
        return int(len(self.lengths))

    def stacked(self, index: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """States of transitions ``index`` (B,): (B, 4, 84, 84) uint8, frames t−3 … t of the
        same episode, zeros before its start (what Dopamine's padding gives); written into
        ``out`` when given (a reused host buffer)."""
        index = np.asarray(index, dtype=np.int64)
        frames = index[:, None] + np.arange(1 - STACK, 1)  # (B, 4)
        inside = frames >= self.episode_start[index][:, None]  # (B, 4)
        out = np.take(self.frames, np.where(inside, frames, 0), axis=0, out=out, mode="clip")  # (B, 4, 84, 84); ids are in range
        out[~inside] = 0
        return out

    def info(self) -> dict[str, Any]:
        r = self.episode_returns
        return {"source": self.source, "env_id": self.env_id, "num_episodes": self.num_episodes,
                "num_steps": self.num_steps, "num_actions": self.num_actions,
                "return_mean": float(r.mean()), "return_std": float(r.std()),
                "return_min": float(r.min()), "return_max": float(r.max()),
                "episode_length_mean": float(self.lengths.mean()),
                "frames_bytes": int(self.frames.nbytes)}


def read_dqn_replay(path: str | Path, num_steps: int = 500_000, num_buffers: int = 50,
                    trajectories_per_buffer: int = 10, buffer_capacity: int = 100_000, seed: int = 0,
                    num_actions: int | None = None, env_id: str | None = None,
                    log: Callable[[str], None] = print) -> AtariTrajectories:
    """Trajectories from a DQN-replay run directory, selected as the module docstring says."""
    directory = find_replay_dir(Path(path))
    indices = checkpoint_indices(directory)[-num_buffers:]
    rng = np.random.default_rng(seed)
    small: dict[int, dict[str, np.ndarray]] = {}
    cursor: dict[int, int] = {}
    live = list(indices)
    pieces: list[tuple[int, int, int]] = []  # (checkpoint, first, stop) of each trajectory
    held = 0
    while held < num_steps and live:
        ckpt = int(rng.choice(live))
        if ckpt not in small:
            small[ckpt] = {k: _read_npy(checkpoint_file(directory, k, ckpt), slice(0, buffer_capacity))
                           for k in ("action", "reward", "terminal")}
            cursor[ckpt] = _first_episode_start(directory, ckpt, small[ckpt]["terminal"])
        term = small[ckpt]["terminal"]
        ends = np.flatnonzero(term[cursor[ckpt]:])[:trajectories_per_buffer] + cursor[ckpt]  # last index of each
        for end in ends:
            first = cursor[ckpt] + PADDING  # skip the padding transitions
            if end >= first:
                pieces.append((ckpt, first, int(end) + 1))
                held += int(end) + 1 - first
            cursor[ckpt] = int(end) + 1
        if len(ends) < trajectories_per_buffer:  # the rest of this checkpoint is a partial episode
            live.remove(ckpt)
    if not pieces:
        raise DataError(f"dqn-replay:{path}: no complete episode in checkpoints {indices}")
    if held < num_steps:
        log(f"dqn-replay:{path}: every checkpoint spent at {held:,} of the {num_steps:,} transitions asked for")
    # Frames: one decompression pass per checkpoint over the rows its trajectories cover.
    frames = np.empty((held, *FRAME), np.uint8)
    actions = np.empty(held, np.int64)
    rewards = np.empty(held, np.float32)
    lengths = np.array([stop - first for _, first, stop in pieces], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    by_ckpt: dict[int, list[int]] = {}
    for i, (ckpt, _, _) in enumerate(pieces):
        by_ckpt.setdefault(ckpt, []).append(i)
    for ckpt, members in by_ckpt.items():
        lo = min(pieces[i][1] for i in members)
        hi = max(pieces[i][2] for i in members)
        block = _read_npy(checkpoint_file(directory, "observation", ckpt), slice(lo, hi))  # (hi − lo, 84, 84)
        if block.shape[1:] != FRAME:
            raise DataError(f"{checkpoint_file(directory, 'observation', ckpt)}: frames of shape "
                            f"{block.shape[1:]}, expected {FRAME}")
        for i in members:
            _, first, stop = pieces[i]
            at = slice(offsets[i], offsets[i] + stop - first)
            frames[at] = block[first - lo : stop - lo]
            actions[at] = small[ckpt]["action"][first:stop]
            rewards[at] = small[ckpt]["reward"][first:stop]
        del block
    n_act = num_actions if num_actions is not None else int(actions.max()) + 1
    if actions.min() < 0 or actions.max() >= n_act:
        raise DataError(f"dqn-replay:{path}: action ids outside 0..{n_act - 1}")
    return AtariTrajectories(frames, actions, rewards, offsets.astype(np.int64), lengths, n_act, env_id,
                             source=f"dqn-replay:{path}",
                             metadata={"checkpoints": sorted(by_ckpt), "trajectories": len(pieces)})


def _first_episode_start(directory: Path, ckpt: int, terminals: np.ndarray) -> int:
    """Index where the checkpoint's first whole episode starts (its padding included)."""
    head = _read_npy(checkpoint_file(directory, "observation", ckpt), slice(0, PADDING))
    if len(head) == PADDING and not head.any() and not terminals[:PADDING].any():
        return 0
    ends = np.flatnonzero(terminals)
    return int(ends[0]) + 1 if ends.size else len(terminals)
