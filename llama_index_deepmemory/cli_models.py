"""The ``deepmemory`` subcommands that manage a store's Deep Memory jobs and models: ``status``,
``models`` (with ``--delete`` and ``--prune``) and ``activate``. Standard library only at import;
each command loads the store through :mod:`llama_index_deepmemory.cli_common`."""

from __future__ import annotations

import argparse
from typing import Any

from llama_index_deepmemory import cli_common as cli
from llama_index_deepmemory.cli_common import non_negative_int


def cmd_status(args: argparse.Namespace) -> None:
    """Training jobs of a store (or one job's details) and its active model."""
    store, _ = cli.open_store(args.store)
    if args.job_id:
        known = [job["job_id"] for job in _jobs(store)]
        if args.job_id not in known:
            raise cli.UserError(f"no job {args.job_id!r} in {args.store}; jobs: {known or 'none yet'}")
        with cli.captured_stdout() as shown:
            job = store.deep_memory.status(args.job_id)
        print(cli.for_cli(shown.getvalue()), end="")
        if job.get("model_name"):
            print(f"{job['model_name']}: {cli.describe_job(job)}")
    else:
        with cli.captured_stdout() as shown:
            store.deep_memory.list_jobs()
        print(cli.for_cli(shown.getvalue()), end="")
    print(f"Active Deep Memory model: {store.deep_memory.get_model() or 'none'}")


def _jobs(store: Any) -> list[dict[str, Any]]:
    with cli.captured_stdout():
        return store.deep_memory.list_jobs()


def cmd_models(args: argparse.Namespace) -> None:
    """Kept Deep Memory models: which is active, what each contains, its validation score;
    ``--delete`` and ``--prune`` remove models (never the active one)."""
    store, _ = cli.open_store(args.store)
    if args.delete or args.prune is not None:
        _remove_models(store, args)
    models = store.deep_memory.list_models()
    if not models:
        print(f"No Deep Memory models in {args.store} yet: train one with `{cli.PROG} train --store {args.store} ...`.")
        return
    by_name = {job.get("model_name"): job for job in _jobs(store)}
    width = max(len(m["name"]) for m in models)
    for model in models:
        job = by_name.get(model["name"], {})
        mark = "*" if model["active"] else " "
        print(f"{mark} {model['name']:<{width}}  job {model.get('job_id') or '-'}: {cli.describe_job(job)}")
    print("* active (used by `query` and by deep_memory=True); change it with "
          f"`{cli.PROG} activate MODEL` or `{cli.PROG} activate none`")


def _remove_models(store: Any, args: argparse.Namespace) -> None:
    dm = store.deep_memory
    known = [m["name"] for m in dm.list_models()]
    for name in args.delete or ():  # every name checked before any is deleted
        if name == dm.get_model():
            raise cli.UserError(f"{name} is the active model and cannot be deleted; `{cli.PROG} activate OTHER` (or none) first")
        if name not in known:
            raise cli.UserError(f"no Deep Memory model {name!r} in {args.store}; `{cli.PROG} models --store {args.store}` lists them")
    for name in dict.fromkeys(args.delete or ()):
        dm.delete_model(name)
        print(f"Deleted {name}.")
    if args.prune is not None:
        gone = dm.prune_models(keep=args.prune)
        print(f"Pruned {len(gone)} model(s){': ' + ', '.join(gone) if gone else ''} "
              f"(kept the active one and the {args.prune} newest others).")
    cli.save_models(store, args.store)


def cmd_activate(args: argparse.Namespace) -> None:
    """Make a kept model the active one (``none`` turns Deep Memory off), one change every process
    serving the store sees."""
    store, _ = cli.open_store(args.store)
    name = None if args.model.lower() == "none" else args.model
    known = [m["name"] for m in store.deep_memory.list_models()]
    if name is not None and name not in known:
        raise cli.UserError(f"no Deep Memory model {name!r} in {args.store}; kept models: {known or 'none yet'} (or 'none')")
    store.deep_memory.set_model(name)
    cli.save_models(store, args.store)
    print(f"Saved {args.store}; active Deep Memory model: {name or 'none'}")


def _add_status(sub: Any) -> None:
    p = sub.add_parser("status", help="training jobs of a store, or one job's details", description=cmd_status.__doc__)
    p.add_argument("job_id", nargs="?", help="a job id such as job_1 (default: list every job)")
    cli.add_common(p)
    p.set_defaults(func=cmd_status)


def _add_models(sub: Any) -> None:
    p = sub.add_parser("models", help="list the kept Deep Memory models and the active one; delete or prune them",
                       description=cmd_models.__doc__)
    cli.add_common(p)
    p.add_argument("--delete", action="append", metavar="MODEL",
                   help="delete this model (repeatable; never the active one) (default: none)")
    p.add_argument("--prune", type=non_negative_int, metavar="N",
                   help="delete every model but the active one and the N newest others (default: keep all)")
    p.set_defaults(func=cmd_models)


def _add_activate(sub: Any) -> None:
    p = sub.add_parser("activate", help="make a kept model active (or 'none')", description=cmd_activate.__doc__)
    p.add_argument("model", help="a model name from `models`, e.g. model_2, or 'none' to turn Deep Memory off")
    cli.add_common(p)
    p.set_defaults(func=cmd_activate)


def register(sub: Any) -> None:
    """Add ``status``, ``models`` and ``activate`` to the ``deepmemory`` parser."""
    _add_status(sub)
    _add_models(sub)
    _add_activate(sub)
