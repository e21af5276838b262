"""Atari games: the Decision Transformer's environment protocol, gamer-normalized scores,
and ``generated:atari-<game>`` datasets written in the DQN-replay format.

Protocol (DT's Atari evaluation, Dopamine's preprocessing): ALE with no sticky actions and
the minimal action set, up to 30 no-ops after reset, frame skip 4 with the max over the
last two frames, 84×84 grayscale (area interpolation), game over (not a lost life) ends the
episode. gymnasium's ``AtariPreprocessing`` implements exactly this; states are stacks of
the last 4 frames, built by the consumer.

Generated datasets come from a simple behaviour policy played on the real ROM: for Pong, a
paddle that follows the ball (read from the console's RAM) with a per-episode probability
and random actions otherwise, so episode returns spread out; for other games, random
actions held for a few steps. They are written as Dopamine checkpoints (padding and all) so
that training reads them through the same DQN-replay reader as the real data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raydt.artifacts import refuse_build
from raydt.data.dqn_replay import FRAME, dopamine_layout, write_checkpoint
from raydt.errors import DataError
from raydt.fsutil import data_dir, locked


@dataclass(frozen=True)
class AtariGame:
    """A game of Reid et al.'s Table 1."""

    name: str
    """ALE name, as in ``ALE/<name>-v5``."""
    random_score: float
    gamer_score: float
    target_return: float
    """DT's evaluation target (return to go at the start)."""
    num_actions: int
    """Size of the minimal action set (what the data's action ids index)."""

    @property
    def env_id(self) -> str:
        return f"ALE/{self.name}-v5"

    def normalized_score(self, returns: np.ndarray | float) -> np.ndarray:
        """Gamer-normalized score: 100 · (return − random) / (gamer − random)."""
        return 100.0 * (np.asarray(returns, dtype=np.float64) - self.random_score) / (self.gamer_score - self.random_score)


# Random and gamer scores as DT's Table 1 (and so Reid et al.'s Table 1) normalises them:
# Hafner et al.'s rounded values. DT's Breakout raw 76.9 is exactly 267.5 with these; the
# unrounded DQN-Zoo values (1.7/30.5, -20.7/14.6, 163.9/13455.0, 68.4/42054.7) give 261.1.
GAMES = {
    "breakout": AtariGame("Breakout", 2.0, 30.0, 90.0, 4),
    "pong": AtariGame("Pong", -21.0, 15.0, 20.0, 6),
    "qbert": AtariGame("Qbert", 164.0, 13455.0, 14000.0, 6),
    "seaquest": AtariGame("Seaquest", 68.0, 42055.0, 1150.0, 18),
}


def game_from_env_id(env_id: str | None) -> AtariGame | None:
    for game in GAMES.values():
        if env_id == game.env_id:
            return game
    return None


def make_atari_env(game: str | AtariGame, max_episode_steps: int | None = None):
    """One environment under DT's protocol; observations are single (84, 84) uint8 frames."""
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing

    game = GAMES[game] if isinstance(game, str) else game
    gym.register_envs(ale_py)
    env = gym.make(game.env_id, frameskip=1, repeat_action_probability=0.0, full_action_space=False,
                   max_episode_steps=None if max_episode_steps is None else 4 * max_episode_steps)
    return AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=FRAME[0],
                              terminal_on_life_loss=False, grayscale_obs=True, scale_obs=False)


_URI = re.compile(r"^atari-([a-z]+)(?:\?(.*))?$")


@dataclass(frozen=True)
class AtariRequest:
    """``generated:atari-<game>[?steps=N&seed=S]``"""

    game: str
    steps: int = 20_000
    """Transitions to record (whole episodes, so slightly more)."""
    seed: int = 0

    @property
    def directory(self) -> Path:
        return data_dir() / "atari" / f"{self.game}-{self.steps}-seed{self.seed}"


def parse_atari(body: str) -> AtariRequest:
    match = _URI.match(body)
    if not match or match.group(1) not in GAMES:
        raise DataError(f"generated:{body}: expected generated:atari-GAME[?steps=N&seed=S] with GAME one of "
                        f"{', '.join(GAMES)}")
    params = {}
    for item in filter(None, (match.group(2) or "").split("&")):
        key, _, value = item.partition("=")
        if key not in ("steps", "seed") or not value.isdigit():
            raise DataError(f"generated:{body}: query {item!r} not understood; use steps=N and seed=S (integers)")
        params[key] = int(value)
    if params.get("steps", 1) < 1:
        raise DataError(f"generated:{body}: steps must be at least 1")
    return AtariRequest(match.group(1), **params)


MAX_GENERATED_EPISODE = 2500
"""Agent steps after which a generated episode is cut."""


def _pong_tracker(env) -> int:
    """Move the right paddle toward the ball (RAM 51: paddle y, 54: ball y); serve if no ball."""
    ram = env.unwrapped.ale.getRAM()
    paddle, ball = int(ram[51]), int(ram[54])
    if ball == 0:
        return 1  # FIRE serves
    return 2 if ball < paddle - 4 else 3 if ball > paddle + 4 else 0  # RIGHT = up, LEFT = down


def record_episodes(request: AtariRequest, log: Callable[[str], None] = print) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Play the behaviour policy until ``request.steps`` transitions are recorded."""
    game = GAMES[request.game]
    # Capped episodes keep a small dataset from being one long game; the cap ends them as
    # the data's episode ends (terminal in the file), as a time limit would.
    env = make_atari_env(game, max_episode_steps=MAX_GENERATED_EPISODE)
    rng = np.random.default_rng(request.seed)
    episodes, total = [], 0
    try:
        while total < request.steps:
            skill = rng.uniform(0.0, 0.9)  # per-episode share of tracking moves (Pong)
            obs, _ = env.reset(seed=int(rng.integers(2**31)))
            frames, actions, rewards = [], [], []
            action, done = 0, False
            while not done:
                if request.game == "pong" and rng.random() < skill:
                    action = _pong_tracker(env)
                elif rng.random() < 0.25:  # otherwise hold a random action for ~4 steps
                    action = int(rng.integers(env.action_space.n))
                frames.append(obs)
                next_obs, reward, terminated, truncated, _ = env.step(action)
                actions.append(action)
                rewards.append(np.sign(reward))  # DQN-replay stores clipped rewards
                obs, done = next_obs, terminated or truncated
            episodes.append((np.stack(frames), np.array(actions), np.array(rewards, np.float32)))
            total += len(frames)
            log(f"{game.name}: episode {len(episodes)}, {len(frames)} steps, return {sum(rewards):+.0f} "
                f"({total:,}/{request.steps:,} transitions)")
    finally:
        env.close()
    return episodes


def generated_atari_dir(request: AtariRequest, log: Callable[[str], None] = print) -> Path:
    """The DQN-replay folder of a generated dataset, made once (file-locked) on first use."""
    out = request.directory
    done = out / "done.json"
    if done.exists():
        return out / "replay_logs"
    with locked(out):
        if done.exists():
            return out / "replay_logs"
        refuse_build(f"the dataset generated:atari-{request.game}")
        log(f"generating {request.steps:,} transitions of {GAMES[request.game].name} with ALE into {out}")
        episodes = record_episodes(request, log=log)
        write_checkpoint(out / "replay_logs", 0, *dopamine_layout(episodes))
        done.write_text(json.dumps({"game": request.game, "episodes": len(episodes),
                                    "transitions": sum(len(e[1]) for e in episodes),
                                    "returns": [float(e[2].sum()) for e in episodes]}))
    return out / "replay_logs"


_REPLAY_PARAMS = {"steps": "num_steps", "buffers": "num_buffers", "per_buffer": "trajectories_per_buffer",
                  "seed": "seed", "capacity": "buffer_capacity"}


def load_atari(scheme: str, body: str, log: Callable[[str], None] = print):
    """``dqn-replay:PATH[?...]`` or ``generated:atari-GAME[?...]`` → AtariTrajectories."""
    from raydt.data.dqn_replay import read_dqn_replay

    if scheme == "generated":
        request = parse_atari(body)
        game = GAMES[request.game]
        folder = generated_atari_dir(request, log=log)
        data = read_dqn_replay(folder, num_steps=request.steps * 10, num_actions=game.num_actions,
                               env_id=game.env_id, log=lambda _: None)
        data.source = f"generated:{body}"
        return data
    path, _, query = body.partition("?")
    kwargs: dict[str, int] = {}
    game_name = None
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key == "game" and value.lower() in GAMES:
            game_name = value.lower()
        elif key in _REPLAY_PARAMS and value.isdigit():
            kwargs[_REPLAY_PARAMS[key]] = int(value)
        else:
            raise DataError(f"dqn-replay:{body}: query {item!r} not understood; use steps, buffers, per_buffer, "
                            f"seed, capacity (integers) or game ({', '.join(GAMES)})")
    path = str(Path(path).expanduser())
    if game_name is None:  # DQN-replay's layout is <Game>/<run>
        game_name = next((part.lower() for part in reversed(Path(path).parts) if part.lower() in GAMES), None)
    game = GAMES.get(game_name) if game_name else None
    return read_dqn_replay(path, num_actions=game.num_actions if game else None,
                           env_id=game.env_id if game else None, log=log, **kwargs)
