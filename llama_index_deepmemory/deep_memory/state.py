"""Where Deep Memory models live, for the embedded store's folder and for ``model_dir`` alike.

A *model location* is a folder every process serving a store reads::

    LOCATION/
        catalog.json      # the one truth: models (name -> folder), active model, counters
        .lock             # flock: every change of the catalog is read-modify-write under it
        events.jsonl      # append-only: one line per recorded change (who, when, what)
        models/m-<hex>/   # one immutable folder per model: model.json + arrays.safetensors
        jobs/job_<n>.json # one record per training job, written by the process that runs it

Changes are single atomic steps: a model's files are written (and fsynced) first, then the catalog
is replaced atomically under the lock, so no reader ever sees a half-written model. Job numbers
(``job_<n>`` trains ``model_<n>``) come from the catalog's counter under the lock, so two
processes never pick the same one. ``active_version`` counts activation changes: a training
activates its model only if no one changed the activation since it started. Readers stat
``catalog.json`` at most once per :data:`REFRESH_SECONDS` (and on ``refresh()``).

The embedded store's folder keeps its location in a side folder named by its manifest
(``dm-<hex>``, see :func:`write_copy`); a ``model_dir`` is a location itself. Older layouts (the
models inside each snapshot, or the PR-era ``model_dir`` snapshot) are read by
:func:`read_legacy_snapshot` and :func:`ModelLocation.open` (which converts the latter in place).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from llama_index_deepmemory import persistence
from llama_index_deepmemory.atomic import fsync_dir, write_json_atomic
from llama_index_deepmemory.deep_memory.base import DeepMemoryModel
from llama_index_deepmemory.deep_memory.jobs import FAILED, FINISHED, SAVED_MID_RUN, JobRecord, mark_if_orphaned
from llama_index_deepmemory.deep_memory.models import model_from_state

logger = logging.getLogger(__name__)

CATALOG_KIND = "llama-index-deepmemory/models"
CATALOG_VERSION = 2  # 1 was the snapshot-per-save model_dir (models.json + deep_memory.*)
CATALOG = "catalog.json"
REFRESH_SECONDS = 1.0  # the longest a process serves an outdated activation without refresh()
SIDE_PREFIX = "dm-"  # the embedded store's model location, beside its generations
LEGACY_FILES = ("deep_memory.json", "deep_memory.safetensors")
_NUMBERED = re.compile(r"^(?:model|job)_(\d+)$")
CATALOG_FIX = "restore it from a backup of the store (the models themselves are in models/m-*/)"


_NUMBER, _TEXT = (int, float), (str,)
_JOB_FIELDS: dict[str, tuple[type, ...]] = {  # a job record's fields and their JSON types (None: optional)
    "status": _TEXT, "progress": _NUMBER, "message": _TEXT, "created_at": _NUMBER, "started_at": (*_NUMBER, type(None)),
    "finished_at": (*_NUMBER, type(None)), "options": (dict,), "num_queries": (int,), "val_before": (dict,),
    "val_after": (dict,), "model_name": (str, type(None)), "active": (bool,), "error": (str, type(None)),
    "note": (str, type(None)), "info": (dict,), "owner": (str, type(None)),
}


def _is(value: Any, kinds: tuple[type, ...]) -> bool:
    """``value`` is one of ``kinds`` (a bool is no number)."""
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


class LocationGoneError(RuntimeError):
    """The model location was replaced (its store persisted over by another handle)."""

    def __init__(self, root: Path) -> None:
        super().__init__(
            f"the Deep Memory models at {str(root)!r} are gone: the store was persisted over by another "
            "handle or process; load it again to see its models"
        )
        self.root = root


def owner() -> str:
    """``host:pid`` of this process (recorded with jobs and events)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def number_of(name: str) -> int:
    match = _NUMBERED.match(name)
    return int(match.group(1)) if match else 0


def empty_catalog() -> dict[str, Any]:
    return {"kind": CATALOG_KIND, "format_version": CATALOG_VERSION, "version": 0, "active": None,
            "active_version": 0, "next_number": 1, "models": {}}


class ModelLocation:
    """One model location: read its catalog and models, record changes under its lock."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ModelLocation({str(self.root)!r})"

    @classmethod
    def open(cls, root: str | os.PathLike) -> "ModelLocation":
        """The location at ``root`` (``model_dir``): created when new or empty, converted when it
        holds the older snapshot layout; anything else is refused naming the folder."""
        location = cls(root)
        path = location.root
        if (path / CATALOG).is_file():
            location.catalog()  # validated
            return location
        if path.exists() and not path.is_dir():
            raise ValueError(f"model_dir {str(path)!r} is a file; name a folder for the Deep Memory models")
        if (path / persistence.MANIFEST).is_file():
            meta, arrays = _read_old_model_dir(path)
            with location.locked():
                if not (path / CATALOG).is_file():  # another process may have converted it meanwhile
                    location._replace(meta, arrays, empty_catalog())
                    logger.info("converted the Deep Memory models in %s to the shared layout", path)
            return location
        if path.exists() and any(path.iterdir()):
            raise ValueError(
                f"model_dir {str(path)!r} exists but holds no Deep Memory models (no {CATALOG}); "
                "name an empty or new folder, or the folder a previous run saved its models to"
            )
        path.mkdir(parents=True, exist_ok=True)
        with location.locked():
            if not (path / CATALOG).is_file():
                location._write_catalog(empty_catalog())
        return location

    # --- reading ---------------------------------------------------------------------------
    def stamp(self) -> tuple[int, int, int] | None:
        """Changes whenever the catalog is replaced (None once the location is gone)."""
        try:
            st = os.stat(self.root / CATALOG)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def catalog(self) -> dict[str, Any]:
        """The validated catalog; :class:`LocationGoneError` when the location was removed."""
        path = self.root / CATALOG
        try:
            data = persistence.read_json(path)
        except FileNotFoundError:  # also when removed between a check and the read
            raise LocationGoneError(self.root) from None
        except persistence.CorruptStoreError as exc:  # truncated or not JSON
            raise persistence.CorruptStoreError(f"{exc}; {CATALOG_FIX}") from None
        if not isinstance(data, dict) or data.get("kind") != CATALOG_KIND:
            raise persistence.CorruptStoreError(f"{str(path)!r} is not a Deep Memory model catalog; {CATALOG_FIX}")
        fix = CATALOG_FIX
        for key in ("format_version", "version", "active_version", "next_number"):
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise persistence.CorruptStoreError(f"{str(path)!r} has {key} {value!r}, expected an int >= 0; {fix}")
        if data["format_version"] > CATALOG_VERSION:
            raise ValueError(f"{str(path)!r} has format_version {data.get('format_version')!r}; upgrade "
                             "llama-index-deepmemory to read it")
        models = data.get("models")
        if not isinstance(models, dict) or not all(isinstance(v, dict) and isinstance(v.get("folder"), str)
                                                   for v in models.values()):
            raise persistence.CorruptStoreError(f"{str(path)!r} has no valid 'models' table; {fix}")
        if "active" not in data or (data["active"] is not None and data["active"] not in models):
            raise persistence.CorruptStoreError(f"{str(path)!r} has active {data.get('active', '(missing)')!r}, which is not in its "
                                                f"'models' table ({sorted(models)}); {fix}, or set 'active' to null")
        return data

    def load_model(self, folder: str, name: str | None = None) -> DeepMemoryModel:
        """The model ``name`` in ``models/<folder>`` (its arrays' size and sha256 checked); a missing
        or damaged file is refused as :class:`CorruptStoreError` naming it and the fix."""
        base = self.root / "models" / Path(folder).name
        try:
            return self._read_model(base)
        except FileNotFoundError as exc:
            problem = f"{str(exc.filename or base)!r} is missing"
        except persistence.CorruptStoreError as exc:
            problem = str(exc)
        raise persistence.CorruptStoreError(
            f"Deep Memory model {name or folder!r} cannot be loaded: {problem}; restore {str(base)!r} from a backup, "
            f"or remove {name or folder!r} from 'models' (and from 'active' if it is named there) in "
            f"{str(self.root / CATALOG)!r}: the other models are kept"
        )

    def _read_model(self, base: Path) -> DeepMemoryModel:
        info = persistence.read_json(base / "model.json")
        arrays_path = base / "arrays.safetensors"
        if not isinstance(info, dict) or not isinstance(info.get("meta"), dict):
            raise persistence.CorruptStoreError(f"{str(base / 'model.json')!r} is not a Deep Memory model record")
        want = info.get("arrays") or {}
        if arrays_path.stat().st_size != want.get("bytes") or persistence.sha256_file(arrays_path) != want.get("sha256"):
            raise persistence.CorruptStoreError(
                f"{str(arrays_path)!r} does not match its size/sha256 in model.json (truncated or altered)"
            )
        arrays = persistence.read_arrays(arrays_path)
        try:
            return model_from_state(info["meta"], arrays)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise persistence.CorruptStoreError(f"{str(base)!r} holds an invalid model: {type(exc).__name__}: {exc}") from None

    def load_training_record(self, folder: str) -> dict[str, Any] | None:
        """The JSON record of what the model in ``models/<folder>`` was trained on (None: not kept)."""
        info = persistence.read_json(self.root / "models" / Path(folder).name / "model.json")
        record = info.get("training_record") if isinstance(info, dict) else None
        return record if isinstance(record, dict) else None

    def jobs(self) -> list[dict[str, Any]]:
        """Every job record, oldest number first (unreadable records are skipped with a warning)."""
        folder = self.root / "jobs"
        rows = []
        for path in sorted(folder.glob("job_*.json"), key=lambda p: number_of(p.stem)) if folder.is_dir() else ():
            try:
                row = json.loads(path.read_text("utf-8"))
            except (OSError, ValueError) as exc:
                logger.warning("skipping unreadable job record %s: %s", path, exc)
                continue
            if not isinstance(row, dict) or row.get("job_id") != path.stem:
                continue
            wrong = sorted(key for key, kinds in _JOB_FIELDS.items() if key in row and not _is(row[key], kinds))
            wrong += [key for key in ("val_before", "val_after")  # metric tables: numbers only
                      if isinstance(row.get(key), dict) and not all(_is(v, _NUMBER) for v in row[key].values())]
            if wrong:
                logger.warning("skipping job record %s: %s of the wrong type (restore it from a backup, or delete it)",
                               path, ", ".join(wrong))
                continue
            rows.append(row)
        return rows

    # --- recorded changes (each one atomic step under the lock) --------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the location's lock (a location that is gone is refused, never made again)."""
        if not self.root.is_dir():
            raise LocationGoneError(self.root)
        with persistence.lock_file(self.root / ".lock"):
            yield

    def reserve_job(self, record: dict[str, Any]) -> tuple[str, int]:
        """A job number no other process holds; the job's record is written at once."""
        with self.locked():
            catalog = self.catalog()
            used = [number_of(p.stem) for p in (self.root / "jobs").glob("job_*.json")] if (self.root / "jobs").is_dir() else []
            number = max([int(catalog["next_number"]), *(n + 1 for n in used)])
            catalog["next_number"] = number + 1
            self._write_catalog(catalog)
            job_id = f"job_{number}"
            self.save_job({**record, "job_id": job_id})
        return job_id, number

    def save_job(self, record: dict[str, Any]) -> None:
        write_json_atomic(self.root / "jobs" / f"{record['job_id']}.json", record)

    def add_model(self, name: str, model: DeepMemoryModel, job_id: str | None, activate: bool,
                  expected_active_version: int | None, training: dict[str, Any] | None = None,
                  ) -> tuple[dict[str, Any], bool]:
        """Record ``model`` as ``name`` (its files first, with ``training``: the JSON record of what
        it was trained on, if known); activate it when asked and the activation is still the one
        ``expected_active_version`` names (None: unconditionally). Returns the new catalog and
        whether it was activated."""
        folder = self._write_model(*model.to_state(), training=training)
        try:
            with self.locked():
                catalog = self.catalog()
                if name in catalog["models"]:  # added by another process since this one looked
                    raise ValueError(f"a Deep Memory model named {name!r} is already kept in {str(self.root)!r}; "
                                     "delete it first or pick another name")
                if job_id is None:  # by hand: never the name an unfinished job_<n> keeps its model_<n> as
                    self._check_not_reserved(name)
                catalog["models"][name] = {"folder": folder, "kind": model.kind, "job_id": job_id,
                                           "created_at": time.time()}
                activated = activate and (expected_active_version is None
                                          or catalog["active_version"] == expected_active_version)
                if activated:
                    catalog["active"] = name
                    catalog["active_version"] += 1
                catalog["next_number"] = max(int(catalog["next_number"]), number_of(name) + 1)
                self._commit(catalog, "add", name)
        except BaseException:
            shutil.rmtree(self.root / "models" / folder, ignore_errors=True)
            raise
        return catalog, activated

    def _check_not_reserved(self, name: str) -> None:
        """ValueError when ``name`` is the ``model_<n>`` an unfinished ``job_<n>`` (of any process) will
        keep its model as (call under the lock, which reserving a job takes too: its one record is read)."""
        number = number_of(name)
        if not (number and name.startswith("model_")):
            return
        try:
            row = json.loads((self.root / "jobs" / f"job_{number}.json").read_text("utf-8"))
        except (OSError, ValueError):  # no such job (or an unreadable record, skipped as jobs() skips it)
            return
        if not isinstance(row, dict) or not isinstance(row.get("status"), str):
            return
        record = JobRecord.from_dict(row)
        mark_if_orphaned(record)  # a trainer that died never keeps its model
        if record.status not in FINISHED:
            raise ValueError(f"{name!r} is the name training job job_{number} ({record.status}) will keep its model "
                             "as; pick another name")

    def set_active(self, name: str | None) -> dict[str, Any]:
        with self.locked():
            catalog = self.catalog()
            if name is not None and name not in catalog["models"]:
                raise ValueError(f"unknown Deep Memory model {name!r}; kept models: {sorted(catalog['models']) or 'none'}")
            catalog["active"] = name
            catalog["active_version"] += 1
            self._commit(catalog, "activate", name)
        return catalog

    def delete_models(self, names: list[str]) -> dict[str, Any]:
        """Remove models (never the active one: refused naming it, nothing removed)."""
        with self.locked():
            catalog = self.catalog()
            unknown = [n for n in names if n not in catalog["models"]]
            if unknown:
                raise ValueError(f"unknown Deep Memory model(s) {unknown}; kept models: {sorted(catalog['models'])}")
            if catalog["active"] in names:
                raise ValueError(
                    f"{catalog['active']!r} is the active Deep Memory model and cannot be deleted; activate "
                    "another one (or none) first"
                )
            folders = [catalog["models"].pop(n)["folder"] for n in names]
            self._commit(catalog, "delete", ",".join(names))
        for folder in folders:
            shutil.rmtree(self.root / "models" / folder, ignore_errors=True)
        return catalog

    def replace(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, Any]:
        """Make the location hold exactly the state ``meta``/``arrays`` (``DeepMemory.to_state``)."""
        with self.locked():
            return self._replace(meta, arrays, self.catalog())

    def _replace(self, meta: dict[str, Any], arrays: dict[str, np.ndarray], old: dict[str, Any]) -> dict[str, Any]:
        models = split_models(meta, arrays)
        trained_on = meta.get("training_records") or {}
        folders = {name: self._write_model(*state, training=trained_on.get(name)) for name, state in models.items()}
        jobs = [dict(row) for row in meta.get("jobs", [])]
        for job in jobs:  # a copy never gets the model of a job still running where it was saved from
            if job.get("status") not in FINISHED:
                job.update(status=FAILED, message="failed", error=SAVED_MID_RUN)
        numbers = [number_of(n) for n in [*models, *(j.get("job_id", "") for j in jobs)]]
        catalog = {**old, "active": meta.get("active"), "active_version": int(old["active_version"]) + 1,
                   "next_number": max([int(old["next_number"]), *(n + 1 for n in numbers)]),
                   "models": {name: {"folder": folders[name], "kind": m_meta.get("kind"), "job_id": None,
                                     "created_at": time.time()} for name, (m_meta, _) in models.items()}}
        for job in jobs:
            if job.get("model_name") in catalog["models"]:
                catalog["models"][job["model_name"]]["job_id"] = job["job_id"]
        keep = {f"{j['job_id']}.json" for j in jobs}
        for path in (self.root / "jobs").glob("job_*.json") if (self.root / "jobs").is_dir() else ():
            if path.name not in keep:
                path.unlink(missing_ok=True)
        for job in jobs:
            self.save_job(job)
        self._commit(catalog, "replace", meta.get("active"))
        for entry in old["models"].values():
            shutil.rmtree(self.root / "models" / entry["folder"], ignore_errors=True)
        return catalog

    # --- internals -----------------------------------------------------------------------------
    def _write_model(self, meta: dict[str, Any], arrays: dict[str, np.ndarray],
                     training: dict[str, Any] | None = None) -> str:
        """Write a model's state (and the record of its training data, if given) into a new folder
        (fsynced) and return the folder's name."""
        folder = f"m-{uuid.uuid4().hex[:16]}"
        base = self.root / "models" / folder
        try:
            base.parent.mkdir(exist_ok=True)
            base.mkdir()
        except FileNotFoundError:  # the location itself is gone: never made again here
            raise LocationGoneError(self.root) from None
        try:
            arrays_path = base / "arrays.safetensors"
            persistence.write_arrays(arrays_path, arrays)
            persistence.fsync_file(arrays_path)
            info = {"format_version": 1, "meta": meta,
                    "arrays": {"bytes": arrays_path.stat().st_size, "sha256": persistence.sha256_file(arrays_path)}}
            if training is not None:
                info["training_record"] = training
            persistence.write_json(base / "model.json", info)  # a new folder no catalog names yet
            persistence.fsync_file(base / "model.json")
            fsync_dir(base)
        except BaseException:
            shutil.rmtree(base, ignore_errors=True)
            raise
        return folder

    def _commit(self, catalog: dict[str, Any], event: str, model: str | None) -> None:
        catalog["version"] = int(catalog["version"]) + 1
        self._write_catalog(catalog)
        line = {"version": catalog["version"], "event": event, "model": model, "active": catalog["active"],
                "by": owner(), "at": time.time()}
        try:
            with open(self.root / "events.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
        except OSError as exc:  # the catalog is the truth; the log only tells the story
            if exc.errno != errno.ENOSPC:
                logger.warning("could not append to %s: %s", self.root / "events.jsonl", exc)

    def _write_catalog(self, catalog: dict[str, Any]) -> None:
        write_json_atomic(self.root / CATALOG, catalog)


def split_models(meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict[str, tuple[dict, dict]]:
    """Each model's (meta, arrays) in a ``DeepMemory.to_state`` pair."""
    models = {}
    for name, m_meta in meta.get("models", {}).items():
        if not isinstance(m_meta, dict):
            raise ValueError(f"Deep Memory model {name!r} has no metadata object")
        prefix = f"{name}/"
        models[name] = (m_meta, {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
    return models


def write_copy(parent: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    """A new location ``parent/dm-<hex>`` holding the state ``meta``/``arrays``; returns its name
    (the embedded store's manifest names it; see :meth:`DeepMemoryVectorStore.persist`)."""
    name = f"{SIDE_PREFIX}{uuid.uuid4().hex[:16]}"
    location = ModelLocation(parent / name)
    location.root.mkdir(parents=True)
    try:
        location._replace(meta, arrays, empty_catalog())
    except BaseException:
        shutil.rmtree(location.root, ignore_errors=True)
        raise
    return name


def save_to(folder: str | os.PathLike, manager: Any, overwrite: bool = False) -> None:
    """Make the model location ``folder`` hold ``manager``'s models (nothing to do when the
    manager is bound to it: its changes are recorded there as they happen). Models kept there that
    ``manager`` lacks (recorded by a store bound to ``folder``) are never dropped unless ``overwrite``:
    :class:`~llama_index_deepmemory.persistence.StaleStoreError` names them and the fix."""
    bound = manager.location
    if bound is not None and os.path.realpath(bound.root) == os.path.realpath(folder):
        return
    location = ModelLocation.open(folder)
    meta, arrays = manager.to_state()
    key = os.path.realpath(folder)
    saved = getattr(manager, "_saved_versions", {})  # location -> its catalog version this manager wrote
    with location.locked():
        catalog = location.catalog()
        others = sorted(set(catalog["models"]) - set(meta.get("models", {})))
        changed = key in saved and catalog["version"] != saved[key]
        if (others or changed) and not overwrite:
            what = (f"keeps Deep Memory model(s) {others} this store does not have" if others else
                    "was changed since this store last persisted there")
            raise persistence.StaleStoreError(
                f"{str(location.root)!r} {what} (recorded there by a store built with model_dir=that folder); "
                "persisting would undo that. Build the store with model_dir=that folder to add to its models, "
                "persist to another folder, or pass overwrite=True to replace them"
            )
        saved[key] = location._replace(meta, arrays, catalog)["version"]


def read_legacy_snapshot(gen: Path, listed: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """The Deep Memory state kept inside a snapshot generation by earlier versions (None if none)."""
    if LEGACY_FILES[0] not in listed:
        return None
    meta = persistence.read_json(gen / LEGACY_FILES[0])
    if not isinstance(meta, dict):
        raise persistence.CorruptStoreError(f"{str(gen / LEGACY_FILES[0])!r} is not a Deep Memory state object")
    arrays = persistence.read_arrays(gen / LEGACY_FILES[1]) if (meta.get("models") and LEGACY_FILES[1] in listed) else {}
    return meta, arrays


def _read_old_model_dir(root: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The state saved by the earlier snapshot-per-save ``model_dir`` layout."""
    if "models.json" not in persistence.read_manifest(root)["files"]:
        raise ValueError(
            f"{str(root)!r} is not a Deep Memory model folder (it may be a persisted store: load that "
            "with DeepMemoryVectorStore.from_persist_path)"
        )
    with persistence.reading(root):
        gen, _ = persistence.open_generation(root, ("models.json", *LEGACY_FILES))
        kind = persistence.read_json(gen / "models.json")
        if not isinstance(kind, dict) or kind.get("kind") != CATALOG_KIND:
            raise ValueError(
                f"{str(root)!r} is not a Deep Memory model folder (it may be a persisted store: load that "
                "with DeepMemoryVectorStore.from_persist_path)"
            )
        meta = persistence.read_json(gen / LEGACY_FILES[0])
        arrays = persistence.read_arrays(gen / LEGACY_FILES[1])
    return meta, arrays
