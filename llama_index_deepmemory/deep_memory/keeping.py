"""The kept models and the active one, in memory or bound to a shared model location.

:class:`ModelKeeping` is the part of ``store.deep_memory`` (:class:`~.api.DeepMemory`) that keeps
models: activate, delete, prune, and (once bound to a
:class:`~llama_index_deepmemory.deep_memory.state.ModelLocation`) record every change there and take
other processes' changes, at most :data:`~.state.REFRESH_SECONDS` late. The facade's ``__init__``
sets the attributes used here.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from llama_index_deepmemory.deep_memory import jobs, models, state
from llama_index_deepmemory.deep_memory.base import DeepMemoryModel

logger = logging.getLogger(__name__)
SYNC_ATTEMPTS = 5  # reads of a catalog that other processes keep changing meanwhile, before giving up


def check_model_name(name: Any) -> None:
    """TypeError naming ``name`` unless it is a str (a model's name)."""
    if not isinstance(name, str):
        raise TypeError(f"a Deep Memory model name is a str such as 'model_2' (list_models() names them), got {name!r}")


class ModelKeeping:
    """Kept models (``_models``), the active one (``_active``) and where they are shared."""

    _lock: threading.RLock
    _models: dict[str, DeepMemoryModel]
    _active: str | None
    _active_version: int
    _location: "state.ModelLocation | None"
    _folders: dict[str, str]
    _stamp: Any
    _next_check: float
    _sync_lock: threading.Lock
    _jobs: jobs.JobBook

    def get_model(self) -> str | None:
        """Name of the active model (applied by ``deep_memory=True``), or None."""
        self._maybe_refresh()
        return self._active

    def kept_model(self, name: str) -> DeepMemoryModel:
        """The kept model ``name``, active or not (``list_models()`` names them): to inspect one
        that training kept without activating it, or to add it to another store (:meth:`add_model`)."""
        self._maybe_refresh(force=True)
        with self._lock:
            self._check_kept(name)
            return self._models[name]

    def _check_kept(self, name: str) -> None:
        """ValueError naming the kept models unless ``name`` is one (call under ``_lock``)."""
        check_model_name(name)
        if name not in self._models:
            known = sorted(self._models) or "none yet: train one first"
            raise ValueError(f"unknown Deep Memory model {name!r}; kept models: {known}")

    def set_model(self, name: str | None) -> None:
        """Activate the kept model ``name`` (e.g. ``"model_2"``); None deactivates Deep Memory.

        On a bound store this is one recorded change every process serving it sees."""
        self._maybe_refresh(force=True)
        with self._lock:
            if name is not None:
                self._check_kept(name)
            if self._location is None:
                self._active, self._active_version = name, self._active_version + 1
            elif name is not None and name not in self._folders:  # registered in this process only
                self._location.add_model(name, self._models[name], None, activate=True, expected_active_version=None)
            else:
                self._location.set_active(name)
            self._sync(force=True)
        logger.info("Deep Memory active model: %s", name)

    def add_model(self, name: str, model: DeepMemoryModel, activate: bool = False) -> None:
        """Keep ``model`` (made by hand or trained elsewhere) as ``name``; ``activate`` also makes it
        the active one. On a bound store it is recorded in the shared location like a trained model
        (so it must be savable: ``model.to_state()``); in memory otherwise."""
        if not isinstance(name, str) or not name or any(c in name for c in ("/", "\\", "\n", "\r", "\0")):
            raise ValueError(f"Deep Memory model name must be a non-empty str without path separators, newlines "
                             f"or NUL, got {name!r}; pick a plain name such as 'my_model'")
        if not isinstance(model, DeepMemoryModel):
            raise TypeError(f"add_model needs a DeepMemoryModel, got {type(model).__name__}; wrap or train one first")
        if self._location is not None and models.MODEL_KINDS.get(model.kind) is not type(model):
            raise TypeError(f"{type(model).__name__} (kind {model.kind!r}) cannot be shared through {self._location.root}: "
                            "only registered model kinds load back there (register_model), or use an in-memory store")
        self._maybe_refresh(force=True)
        with self._lock:
            if name in self._models:
                raise ValueError(f"a Deep Memory model named {name!r} is already kept; delete_model({name!r}) "
                                 "first or pick another name")
            if self._location is not None:  # (the location refuses a name a job reserved, under its lock)
                self._location.add_model(name, model, None, activate=activate, expected_active_version=None)
                self._sync(force=True)
            else:
                self._check_not_reserved(name)
                self._models[name] = model
                if activate:
                    self._active, self._active_version = name, self._active_version + 1
        logger.info("added Deep Memory model %s%s", name, " (active)" if activate else "")

    def _check_not_reserved(self, name: str) -> None:
        """ValueError when ``name`` is the ``model_<n>`` an unfinished training job ``job_<n>`` of this
        unbound store will keep its model as (call under ``_lock``; a bound store's location checks)."""
        number = state.number_of(name)
        if not (number and name.startswith("model_")):
            return
        for record in self._jobs.records():
            if record.job_id == f"job_{number}" and record.status not in jobs.FINISHED:
                raise ValueError(f"{name!r} is the name training job {record.job_id} ({record.status}) will keep "
                                 "its model as; pick another name")

    def delete_model(self, name: str) -> None:
        """Delete the kept model ``name`` (never the active one: deactivate or switch first)."""
        self._maybe_refresh(force=True)
        with self._lock:
            self._check_kept(name)
            if self._location is not None and name in self._folders:
                self._location.delete_models([name])
                self._sync(force=True)
            elif name == self._active:
                raise ValueError(f"{name!r} is the active Deep Memory model and cannot be deleted; activate "
                                 "another one (or none) first")
            self._models.pop(name, None)
        logger.info("deleted Deep Memory model %s", name)

    def prune_models(self, keep: int = 3) -> list[str]:
        """Delete every kept model but the active one and the ``keep`` newest others; returns the
        deleted names (oldest first)."""
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 0:
            raise ValueError(f"keep must be an int >= 0 (models kept beside the active one), got {keep!r}")
        self._maybe_refresh(force=True)
        with self._lock:
            order = {name: i for i, name in enumerate(self._models)}
            others = sorted((n for n in self._models if n != self._active),
                            key=lambda n: (state.number_of(n), order[n]))
            doomed = others[: max(0, len(others) - keep)]
            shared = [n for n in doomed if self._location is not None and n in self._folders]
            if shared:
                self._location.delete_models(shared)
            for name in doomed:
                self._models.pop(name, None)
            self._sync(force=True)
        return doomed

    def refresh(self) -> str | None:
        """Read the shared model location now (processes also do so on their own, at most
        ``REFRESH_SECONDS`` apart); returns the active model's name."""
        self._maybe_refresh(force=True)
        return self._active

    @property
    def location(self) -> "state.ModelLocation | None":
        """The model location this store's models are shared through (None: in memory only)."""
        return self._location

    def bind(self, location: "state.ModelLocation") -> None:
        """Serve and record the models of ``location`` from now on (read at once)."""
        location.catalog()  # a location that is gone is refused here, naming its folder
        with self._lock:
            self._location, self._stamp, self._folders = location, None, {}
            self._sync(force=True)
            if self._stamp is None:  # removed while being read
                raise state.LocationGoneError(location.root)

    def _current_active_version(self) -> int:
        self._maybe_refresh(force=True)
        return self._active_version

    def _keep_model(self, name: str, model: DeepMemoryModel, job_id: str, improved: bool, started: int,
                    trained_on: Any = None) -> bool:
        """Record a trained model and what it was trained on (a ``TrainingRecord`` or None; call
        under the lock); True when it was activated."""
        if self._location is not None:
            training = None if trained_on is None else trained_on.to_json()
            _, activated = self._location.add_model(name, model, job_id, improved, started, training=training)
            self._sync(force=True)
            return activated
        self._models[name] = model
        activated = improved and self._active_version == started
        if activated:
            self._active, self._active_version = name, self._active_version + 1
        return activated

    def _record_job(self, record: jobs.JobRecord) -> None:
        """Write a job's record to the location whenever its status changes."""
        location = self._location
        if location is not None:
            try:
                location.save_job(record.to_dict())
            except OSError as exc:
                logger.warning("could not record Deep Memory job %s in %s: %s", record.job_id, location.root, exc)

    def _maybe_refresh(self, force: bool = False) -> None:
        if self._location is not None and (force or time.monotonic() >= self._next_check):
            self._sync(force)

    def _sync(self, force: bool = False) -> None:
        """Take the location's models and activation when its catalog changed."""
        location = self._location
        if location is None:
            return
        if not self._sync_lock.acquire(blocking=force):
            return  # another thread is reading it right now
        try:
            self._next_check = time.monotonic() + state.REFRESH_SECONDS
            stamp = location.stamp()
            if stamp == self._stamp:
                return
            if stamp is None:
                self._gone(location)
                return
            for attempt in range(1, SYNC_ATTEMPTS + 1):
                try:
                    catalog = location.catalog()
                    loaded = {name: (self._models[name] if self._folders.get(name) == entry["folder"] and name in self._models
                                     else location.load_model(entry["folder"], name))
                              for name, entry in catalog["models"].items()}
                    break
                except (OSError, ValueError, state.LocationGoneError) as exc:
                    now = location.stamp()
                    if now is None:  # removed while being read (its store persisted over)
                        self._gone(location)
                        return
                    if now != stamp and attempt < SYNC_ATTEMPTS:  # changed while read (a model deleted): read again
                        stamp = now
                        continue
                    if force:
                        raise
                    logger.warning("could not read the Deep Memory models at %s (%s); trying again later", location.root, exc)
                    return
            with self._lock:
                local = {n: m for n, m in self._models.items() if n not in self._folders and n not in loaded}
                self._models = {**loaded, **local}
                self._folders = {name: entry["folder"] for name, entry in catalog["models"].items()}
                self._active, self._active_version = catalog["active"], int(catalog["active_version"])
                self._stamp = stamp
        finally:
            self._sync_lock.release()

    def _gone(self, location: "state.ModelLocation") -> None:
        """The location was removed: serve the models last read (changes are refused there, naming it)."""
        if self._stamp is not None:
            logger.warning("the Deep Memory models at %s are gone (the store was persisted over); "
                           "serving the last ones read", location.root)
        self._stamp = None

    def _records(self) -> list[jobs.JobRecord]:
        """This process's job records, and (bound) those other processes recorded, by number."""
        mine = {r.job_id: r for r in self._jobs.records()}
        if self._location is None:
            return list(mine.values())
        merged = {row["job_id"]: jobs.JobRecord.from_dict(row) for row in self._location.jobs()}
        for record in merged.values():
            if record.job_id not in mine:
                jobs.mark_if_orphaned(record)
        merged.update(mine)
        return sorted(merged.values(), key=lambda r: state.number_of(r.job_id))

