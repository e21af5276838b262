"""Search points run as replicates, and the Optuna study that sees one value per point.

A seed is a replicate, never a hyper-parameter: on D4RL the seed-to-seed spread of a DT's
score is larger than most effects a search looks for, so a searcher that sees single runs
picks the luckiest seed. Here a search point (Optuna's trial) is run as seeds × datasets
Tune trials; each reports its curve of ``tune.metric``; once every replicate of the point has
ended, the point's value is the aggregate of their scores (:func:`replicate_score`,
:func:`aggregate`) and that value, only, is told to Optuna.

- A replicate that a scheduler (ASHA) or stopper ends early counts with the score it reached
  by then (its final, best or mean evaluation so far): ASHA's verdict on it stands.
- A replicate that fails (an error) fails its point: Optuna records the point as FAIL, with
  the failed trials named, and TPE does not model it. The other replicates still run.
- A replicate that never evaluated counts as failed.

The study lives in a storage that outlives the driver (:func:`open_study`): a journal file in
the sweep directory (copied to URI storage after every change), or an RDB URL for several
drivers. ``--resume`` continues it: finished points stay finished, and replicates that were
running continue and are told when they end.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.search import Searcher

from raydt.replicates import Point, Replicates
from raydt.tune.spec import SweepSpec

STUDY_JOURNAL = "optuna_study.journal"
"""The study's journal file in the sweep directory (``optuna-dashboard`` opens it)."""


# --------------------------------------------------------------------------------------
# The study


def optuna_distributions(spec: SweepSpec) -> dict[str, Any]:
    """Optuna's distribution for every searched key (seeds and replicated datasets are not
    searched: they are replicates)."""
    import optuna.distributions as od

    out: dict[str, Any] = {}
    for dim in spec.dimensions:
        lo, hi = (dim.values + (None, None))[:2]
        if dim.kind in ("grid", "choice"):
            out[dim.key] = od.CategoricalDistribution(list(dim.values))
        elif dim.kind == "uniform":
            out[dim.key] = od.FloatDistribution(float(lo), float(hi))
        elif dim.kind == "loguniform":
            out[dim.key] = od.FloatDistribution(float(lo), float(hi), log=True)
        else:  # randint: Tune's upper bound is exclusive, Optuna's inclusive
            out[dim.key] = od.IntDistribution(int(lo), int(hi) - 1)
    return out


def study_location(spec: SweepSpec, sweep_dir: str) -> tuple[str, Path | None]:
    """(storage description, local journal file or None) of the sweep's study. A journal in
    a URI sweep directory is kept on the driver's disk and copied after every change."""
    from raydt import storage

    if spec.tune.study_storage is not None:
        return spec.tune.study_storage, None
    if storage.is_uri(sweep_dir):
        return storage.join(sweep_dir, STUDY_JOURNAL), storage.staging_dir(sweep_dir) / STUDY_JOURNAL
    return str(Path(sweep_dir) / STUDY_JOURNAL), Path(sweep_dir) / STUDY_JOURNAL


def open_study(spec: SweepSpec, sweep_dir: str, name: str):
    """The sweep's Optuna study, created or (on ``--resume``) loaded, with TPE seeded by
    ``tune.seed``. A journal file locks by file (``JournalFileOpenLock``), safe on NFS too."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage

    from raydt import storage

    where, journal = study_location(spec, sweep_dir)
    if journal is None:
        backend: Any = where
    else:
        journal.parent.mkdir(parents=True, exist_ok=True)
        if storage.is_uri(where) and storage.exists(where) and not journal.exists():
            journal.write_text(storage.read_text(where))  # a resumed sweep on another machine
        backend = JournalStorage(JournalFileBackend(str(journal), lock_obj=JournalFileOpenLock(str(journal))))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=backend, load_if_exists=True,
                                direction="maximize" if spec.tune.mode == "max" else "minimize")
    # Seeded by tune.seed and the points already asked: a resumed study must not draw the
    # points it drew before (a sampler seeded alike would, TPE's random start-up first).
    seed = np.random.SeedSequence([spec.tune.seed, len(study.trials)]).generate_state(1)[0]
    study.sampler = optuna.samplers.TPESampler(seed=int(seed))
    return study


def make_searcher(spec: SweepSpec, sweep_dir: str) -> ReplicatedSearch:
    """The Tune searcher of an Optuna sweep (replicated or not)."""
    return ReplicatedSearch(spec, sweep_dir)


class ReplicatedSearch(Searcher):
    """Hands each Tune trial one replicate of an Optuna point; tells Optuna each point's
    aggregate once all its replicates ended. Its bookkeeping survives a lost driver: Tune
    saves it with the experiment (:meth:`save`); the study is in its own storage."""

    def __init__(self, spec: SweepSpec, sweep_dir: str) -> None:
        super().__init__(metric=spec.tune.metric, mode=spec.tune.mode)
        self.spec, self.sweep_dir = spec, sweep_dir
        rep = spec.tune.replicates
        self.book = Replicates(spec.replicate_values(), rep.score, rep.aggregate, spec.tune.mode, spec.tune.metric)
        self.max_points = spec.num_points
        self.distributions = optuna_distributions(spec)
        self._study = None

    @property
    def study(self):
        if self._study is None:
            self._study = open_study(self.spec, self.sweep_dir, self.spec.name)
        return self._study

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        point = self.book.open_point()
        if point is None:
            if len(self.book.points) >= self.max_points:
                return Searcher.FINISHED if all(p.told for p in self.book.points) else None
            asked = self.study.ask(self.distributions)
            point = self.book.add_point(asked.number, asked.params)
        config = self.book.assign(trial_id, point)
        if not self._finished(point.number):
            self._set_attr(point.number, "replicates", [self.book.names[t] for t in point.assigned])
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.book.result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        point = self.book.point_of(trial_id)
        # Tune passes the last result again: count it only if no result was seen.
        if result and not error and point is not None and not point.curves.get(trial_id):
            self.book.result(trial_id, result)
        point = self.book.complete(trial_id, error=error)
        if point is not None:
            self.tell(point)

    def tell(self, point: Point) -> None:
        import optuna

        if self._finished(point.number):  # told before the driver was lost: Tune's checkpoint lagged
            point.told = True
            return
        value = self.book.value(point)
        names = {self.book.names[t]: s for t, s in point.ended.items()}
        self._set_attr(point.number, "replicate_scores", names)
        self._set_attr(point.number, "replicates", sorted(names))
        if value is None:
            self._set_attr(point.number, "failed_replicates", sorted(n for n, s in names.items() if s is None))
            self.study.tell(point.number, state=optuna.trial.TrialState.FAIL)
        else:
            self._set_attr(point.number, "aggregate", value)
            self.study.tell(point.number, value)
        point.told = True
        self._sync()

    def _finished(self, number: int) -> bool:
        """Whether the study already holds a final state for point ``number``."""
        import optuna

        storage = self.study._storage
        trial = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number))
        return trial.state != optuna.trial.TrialState.RUNNING

    def _set_attr(self, number: int, key: str, value: Any) -> None:
        import optuna

        # A handle on a trial asked earlier (perhaps by the driver before a resume): Optuna's
        # Trial takes the storage's id of the trial, which its number maps to.
        storage = self.study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        optuna.trial.Trial(self.study, trial_id).set_user_attr(key, value)
        self._sync()

    def _sync(self) -> None:
        """A journal in URI storage: copy it there after each change."""
        from raydt import storage

        where, journal = study_location(self.spec, self.sweep_dir)
        if journal is not None and storage.is_uri(where):
            storage.write_text(where, journal.read_text())

    # Tune's experiment checkpoints: the bookkeeping only (the study is in its storage).
    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"book": self.book}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.book = pickle.load(f)["book"]
        for point in self.book.points:  # the study is the record of what was told
            point.told = point.told or self._finished(point.number)
        self._fail_lost_points()

    def _fail_lost_points(self) -> None:
        """Points Optuna handed out that the saved bookkeeping never saw (the driver was lost
        in between) can never be told: mark them failed, so the study is whole."""
        import optuna

        known = {p.number for p in self.book.points}
        for trial in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial.number not in known:
                self._set_attr(trial.number, "lost", "asked by a driver that was lost before it ran any replicate")
                self.study.tell(trial.number, state=optuna.trial.TrialState.FAIL)

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles the searcher with the Tuner
        return {**self.__dict__, "_study": None}


def study_points(study) -> list[dict[str, Any]]:
    """Every point of a study: number, state, parameters, value and user attributes."""
    return [{"number": t.number, "state": t.state.name, "params": dict(t.params), "value": t.value,
             **dict(t.user_attrs)} for t in study.get_trials(deepcopy=False)]
