"""D4RL-style datasets made locally on the real MuJoCo simulators.

D4RL cannot be downloaded or imported everywhere, and Minari's locomotion data is new data
on other environment versions. raydt therefore rolls out its own behaviour policies —
linear policies trained with ARS (:mod:`raydt.data.ars`), whose evaluated snapshots along
one training run ship with the package — and writes the D4RL HDF5 layout, so the same
reader serves real D4RL files and these.

Qualities, by analogy with D4RL (Fu et al. 2020, §5):

- ``random``: uniformly random actions.
- ``medium``: snapshots whose score is about a third to a half of the best snapshot's
  (D4RL's medium policy is a SAC checkpoint at about a third of expert), rolled out with
  Gaussian action noise of a per-episode scale. Several snapshots and noise scales give
  the broad spread of returns that D4RL's medium data has; one snapshot with fixed noise
  gives a narrow spread on which return conditioning has nothing to choose from.
- ``medium-replay``: ARS's own training rollouts up to the medium point — every snapshot
  from the start to the first medium one, with the parameter perturbations ARS explores
  with (W ± ν·δ), in training order like a replay buffer.
- ``expert``: the best snapshots, with small action noise.
- ``medium-expert``: ``medium`` then ``expert``, half the steps each (as D4RL concatenates).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import numpy as np

from raydt import __version__
from raydt.artifacts import refuse_build
from raydt.data.ars import LinearPolicy
from raydt.data.d4rl import read_d4rl_hdf5, write_d4rl_hdf5
from raydt.data.tasks import ENV_VERSIONS, TASKS, Task, get_task, make_env
from raydt.data.trajectories import Trajectories
from raydt.errors import DataError
from raydt.fsutil import data_dir, locked

QUALITIES = ("random", "medium", "medium-replay", "expert", "medium-expert")
"""Dataset qualities raydt can generate for every task."""

# D4RL's sizes: 1M transitions, 2M for medium-expert; medium-replay is as long as the
# behaviour policy's training took, which D4RL's files give per task.
DEFAULT_STEPS = {"random": 1_000_000, "medium": 1_000_000, "expert": 1_000_000, "medium-expert": 2_000_000}
MEDIUM_REPLAY_STEPS = {"hopper": 402_000, "halfcheetah": 202_000, "walker2d": 302_000}

MEDIUM_BAND = (0.3, 0.55)
"""Medium snapshots score within this fraction of the best snapshot's normalized score."""
EXPERT_FRACTION = 0.9
"""Expert snapshots score at least this fraction of the best snapshot's normalized score."""
MEDIUM_NOISE = (0.05, 0.2)
"""Range of the per-episode Gaussian action-noise scale of medium rollouts."""
EXPERT_NOISE = 0.05
"""Gaussian action-noise scale of expert rollouts."""

# Where the dataset-average normalized return of each quality lands with the bundled
# policies (measured on datasets from a few thousand steps to D4RL's sizes; the bands are
# wide enough for the few episodes of a small file). For comparison, D4RL's averages:
# hopper random 1 / medium 44 / medium-replay 15 / expert 108, halfcheetah 0 / 40 / 27 / 92,
# walker2d 0 / 62 / 15 / 108. Linear ARS policies trained for minutes reach D4RL's expert
# only on hopper: for halfcheetah and walker2d raydt's "expert" is its best policy (about
# 45 and 55 normalized when rolled out without noise), and "medium" follows from it.
EXPECTED_NORMALIZED: dict[str, dict[str, tuple[float, float]]] = {
    "hopper": {
        "random": (0.0, 5.0),
        "medium": (25.0, 55.0),
        "medium-replay": (2.0, 30.0),
        "expert": (65.0, 115.0),
        "medium-expert": (35.0, 85.0),
    },
    "halfcheetah": {
        "random": (-2.0, 3.0),
        "medium": (5.0, 25.0),
        "medium-replay": (0.0, 12.0),
        "expert": (20.0, 50.0),
        "medium-expert": (10.0, 40.0),
    },
    "walker2d": {
        "random": (-1.0, 2.0),
        "medium": (3.0, 25.0),
        "medium-replay": (1.0, 15.0),
        "expert": (25.0, 60.0),
        "medium-expert": (5.0, 40.0),
    },
}


@dataclass(frozen=True)
class GeneratedSpec:
    """What a ``generated:`` URI asks for."""

    task: str
    """Task name (``hopper``)."""
    quality: str
    """One of :data:`QUALITIES`."""
    steps: int
    """Transitions in the file."""
    seed: int = 0
    """Seed of the rollouts (episode resets, noise, snapshot choice)."""
    env_version: str = "v4"
    """gymnasium version of the environment rolled out."""

    @property
    def env_id(self) -> str:
        return get_task(self.task).env_id(self.env_version)

    @property
    def uri(self) -> str:
        """Canonical URI: defaults left out, so ``generated:hopper-medium`` stays short."""
        params = {}
        if self.steps != default_steps(self.task, self.quality):
            params["steps"] = self.steps
        if self.seed:
            params["seed"] = self.seed
        if self.env_version != "v4":
            params["env"] = self.env_version
        return f"generated:{self.task}-{self.quality}" + (f"?{urlencode(params)}" if params else "")

    @property
    def filename(self) -> str:
        return f"{self.task}-{self.quality}_{self.env_version}_steps{self.steps}_seed{self.seed}.hdf5"


def default_steps(task: str, quality: str) -> int:
    return MEDIUM_REPLAY_STEPS[task] if quality == "medium-replay" else DEFAULT_STEPS[quality]


def parse_generated(body: str, steps: int | None = None, seed: int | None = None) -> GeneratedSpec:
    """``hopper-medium?steps=100000&seed=1&env=v5`` → :class:`GeneratedSpec`.

    ``steps`` and ``seed`` given as arguments (the CLI's ``--steps``/``--seed``) win over the
    URI's query.
    """
    name, _, query = body.partition("?")
    task, _, quality = name.partition("-")
    if task not in TASKS:
        raise DataError(f"generated:{body}: unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if quality not in QUALITIES:
        raise DataError(
            f"generated:{body}: unknown quality {quality!r}; valid qualities: {', '.join(QUALITIES)}"
        )
    params = dict(parse_qsl(query, keep_blank_values=True))
    unknown = set(params) - {"steps", "seed", "env"}
    if unknown:
        raise DataError(
            f"generated:{body}: unknown parameter(s) {', '.join(sorted(unknown))}; valid: steps, seed, env"
        )

    def integer(key: str, value: str | int) -> int:
        try:
            out = int(str(value).replace("_", ""))
        except ValueError:
            raise DataError(f"generated:{body}: {key}={value!r} is not an integer") from None
        if out < (1 if key == "steps" else 0):
            raise DataError(f"generated:{body}: {key}={value!r} must be {'> 0' if key == 'steps' else '>= 0'}")
        return out

    env = params.get("env", "v4")
    if env not in ENV_VERSIONS:
        raise DataError(f"generated:{body}: env={env!r}; valid versions: {', '.join(ENV_VERSIONS)}")
    return GeneratedSpec(
        task,
        quality,
        integer("steps", steps if steps is not None else params.get("steps", default_steps(task, quality))),
        integer("seed", seed if seed is not None else params.get("seed", 0)),
        env,
    )


def generated_path(spec: GeneratedSpec) -> Path:
    return data_dir() / "generated" / spec.filename


# --------------------------------------------------------------------------------------
# Behaviour policies


@dataclass(frozen=True)
class PolicyBank:
    """The evaluated ARS snapshots of one task, in training order."""

    task: Task
    policies: tuple[LinearPolicy, ...]
    scores: np.ndarray
    """(S,) normalized evaluation score of each snapshot."""
    noise: float
    """ARS's parameter perturbation scale ν (for medium-replay's exploration)."""
    sha256: str
    """Hash of the policy file, recorded in every dataset made from it."""

    def medium(self) -> list[int]:
        best = self.scores.max()
        lo, hi = MEDIUM_BAND
        return [i for i, s in enumerate(self.scores) if lo * best <= s <= hi * best]

    def expert(self) -> list[int]:
        best = self.scores.max()
        return [i for i, s in enumerate(self.scores) if s >= EXPERT_FRACTION * best]


def policy_file(task: str) -> Path:
    return Path(str(resources.files("raydt.data") / "policies" / f"{task}.npz"))


def load_policy_bank(task_name: str) -> PolicyBank:
    task = get_task(task_name)
    path = policy_file(task_name)
    if not path.is_file():
        raise DataError(
            f"no behaviour policies for {task_name} at {path}; "
            f"train them with `raydt data train-policy {task_name}`"
        )
    blob = path.read_bytes()
    with np.load(path) as f:
        meta = json.loads(str(f["meta"]))
        policies = tuple(
            LinearPolicy(w, m, s) for w, m, s in zip(f["weights"], f["mean"], f["std"])
        )
        scores = task.normalized_score(f["eval_return_mean"])
    return PolicyBank(task, policies, scores, float(meta["settings"]["noise"]),
                      hashlib.sha256(blob).hexdigest())


# --------------------------------------------------------------------------------------
# Rollouts


class _Recorder:
    """Collects transitions in the D4RL layout until a step budget is reached."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.columns: dict[str, list] = {k: [] for k in (
            "observations", "actions", "rewards", "terminals", "timeouts",
            "next_observations", "infos/qpos", "infos/qvel",
        )}
        self.count = 0
        self.episode_returns: list[float] = []

    @property
    def full(self) -> bool:
        return self.count >= self.budget

    def episode(self, env, act: Callable[[np.ndarray], np.ndarray], seed: int) -> None:
        """Roll out one episode (cut where the budget ends, as D4RL's last episode is)."""
        obs, _ = env.reset(seed=seed)
        total = 0.0
        data = env.unwrapped.data
        while not self.full:
            action = act(obs)
            qpos, qvel = data.qpos.copy(), data.qvel.copy()
            next_obs, reward, terminated, truncated, _ = env.step(action)
            for key, value in (
                ("observations", obs), ("actions", action), ("rewards", reward),
                ("terminals", terminated), ("timeouts", truncated and not terminated),
                ("next_observations", next_obs), ("infos/qpos", qpos), ("infos/qvel", qvel),
            ):
                self.columns[key].append(value)
            self.count += 1
            total += float(reward)
            obs = next_obs
            if terminated or truncated:
                break
        self.episode_returns.append(total)

    def arrays(self) -> dict[str, np.ndarray]:
        dtypes = {"terminals": bool, "timeouts": bool}
        return {
            key: np.asarray(values, dtype=dtypes.get(key, np.float32))
            for key, values in self.columns.items()
        }


def _noisy(policy: LinearPolicy, sigma: float, rng: np.random.Generator) -> Callable:
    def act(obs: np.ndarray) -> np.ndarray:
        action = policy.act(obs)
        return np.clip(action + sigma * rng.standard_normal(action.shape), -1.0, 1.0).astype(np.float32)

    return act


def _rollouts(spec: GeneratedSpec, quality: str, steps: int, log: Callable[[str], None]) -> dict[str, np.ndarray]:
    env = make_env(spec.env_id)
    rng = np.random.default_rng([spec.seed, QUALITIES.index(quality)])
    rec = _Recorder(steps)
    if quality == "random":
        low, high = env.action_space.low, env.action_space.high
        while not rec.full:
            rec.episode(env, lambda _: rng.uniform(low, high).astype(np.float32), int(rng.integers(2**31)))
        env.close()
        return rec.arrays()
    bank = load_policy_bank(spec.task)
    medium = bank.medium()
    if not medium:
        raise DataError(f"the {spec.task} behaviour policies have no snapshot in the medium band")
    started = time.time()
    while not rec.full:
        if quality == "medium":
            policy = bank.policies[rng.choice(medium)]
            act = _noisy(policy, rng.uniform(*MEDIUM_NOISE), rng)
        elif quality == "expert":
            act = _noisy(bank.policies[rng.choice(bank.expert())], EXPERT_NOISE, rng)
        else:  # medium-replay: walk the snapshots up to the medium point in training order
            upto = medium[0] + 1
            index = min(upto - 1, rec.count * upto // rec.budget)
            base = bank.policies[index]
            delta = rng.standard_normal(base.weights.shape) * bank.noise
            act = _noisy(LinearPolicy(base.weights + delta, base.mean, base.std), 0.0, rng)
        rec.episode(env, act, int(rng.integers(2**31)))
        if len(rec.episode_returns) % 200 == 0:
            log(f"  {quality}: {rec.count}/{steps} steps, {time.time() - started:.0f}s")
    env.close()
    return rec.arrays()


def make_dataset(spec: GeneratedSpec, force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Write the dataset ``spec`` asks for (unless present) and return its path.

    Concurrent callers (trials of one sweep) wait on a lock instead of making it twice; the
    file is written under a temporary name and renamed, so it is complete or absent.
    """
    path = generated_path(spec)
    with locked(path):
        if path.is_file() and not force:
            return path
        refuse_build(f"the dataset {spec.uri}")
        started = time.time()
        log(f"making {spec.uri} ({spec.steps} steps on {spec.env_id}) → {path}")
        if spec.quality == "medium-expert":
            half = spec.steps // 2
            parts = [_rollouts(spec, "medium", half, log), _rollouts(spec, "expert", spec.steps - half, log)]
            # The medium part's last episode was cut by its budget: flag it as a time-out so
            # that it does not run on into the first expert episode.
            parts[0]["timeouts"][-1] = not parts[0]["terminals"][-1]
            arrays = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        else:
            arrays = _rollouts(spec, spec.quality, spec.steps, log)
        bank_hash = load_policy_bank(spec.task).sha256 if spec.quality != "random" else None
        metadata = {
            "uri": spec.uri,
            "task": spec.task,
            "quality": spec.quality,
            "steps": spec.steps,
            "seed": spec.seed,
            "env_id": spec.env_id,
            "policy_sha256": bank_hash,
            "raydt_version": __version__,
            "command": f"raydt data make '{spec.uri}'",
            "medium_band": MEDIUM_BAND,
            "expert_fraction": EXPERT_FRACTION,
            "medium_noise": MEDIUM_NOISE,
            "expert_noise": EXPERT_NOISE,
        }
        write_d4rl_hdf5(path, arrays, env_id=spec.env_id, metadata=metadata)
        log(f"wrote {path} in {time.time() - started:.1f}s")
        _check_band(spec, read_d4rl_hdf5(path), log)
    return path


def _check_band(spec: GeneratedSpec, traj: Trajectories, log: Callable[[str], None]) -> None:
    """Say so when a dataset's average score leaves its quality's usual band (new policies?)."""
    band = EXPECTED_NORMALIZED.get(spec.task, {}).get(spec.quality)
    score = traj.info().get("normalized_return_mean")
    if band is None or score is None:
        return
    verdict = "within" if band[0] <= score <= band[1] else "OUTSIDE"
    log(f"normalized return mean {score:.1f}, {verdict} the usual {spec.quality} band {band}")


def load_generated(spec: GeneratedSpec, log: Callable[[str], None] = print) -> Trajectories:
    """Load a generated dataset, making it first if it is not in the cache."""
    path = make_dataset(spec, log=log)
    return read_d4rl_hdf5(path, source=f"{spec.uri} ({path})")
