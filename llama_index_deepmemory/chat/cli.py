"""``deepmemory chat`` and ``deepmemory evaluate --answers``.

:func:`register` adds the ``chat`` subcommand and the ``--answers`` options of ``evaluate`` to the
``deepmemory`` parser. Only the standard library is imported here; everything else is imported
when a command runs, so ``deepmemory --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, TextIO

from llama_index_deepmemory.cli_common import (
    add_embed_model_override,
    attach_embedding,
    non_negative_int,
    open_store,
    positive_int,
)

logger = logging.getLogger(__name__)

DEFAULT_HISTORY_DIR = "deepmemory-chats"
FEEDBACK_LOG_NAME = "feedback.jsonl"
HELP_TEXT = """Commands:
  /good N [N ...]   mark sources N of the last answer helpful (logged for `deepmemory train --query-log`)
  /history          show the whole conversation
  /help             this help
  /quit             leave (every turn is saved when it is answered)"""


def register(sub: Any) -> None:
    """Add ``chat`` to the ``deepmemory`` subparsers and ``--answers`` to its ``evaluate``."""
    p = sub.add_parser("chat", help="chat with the store (Deep Memory, persisted conversations, feedback)",
                       description=run_chat.__doc__)
    p.add_argument("--store", default="storage/deepmemory", help="store folder (default: storage/deepmemory)")
    p.add_argument("--conversation", required=True, help="conversation id to start or resume (e.g. support-1)")
    p.add_argument("--history-dir", default=DEFAULT_HISTORY_DIR,
                   help=f"folder of the conversations' SQLite file, conversations.db; JSON conversations of earlier "
                        f"versions there are migrated on first use (default: {DEFAULT_HISTORY_DIR})")
    p.add_argument("--chat-store", metavar="URI",
                   help="store conversations in this database instead, e.g. postgresql://user:pass@host/db for "
                        "several servers (default: the SQLite file in --history-dir)")
    p.add_argument("--feedback-log", help=f"JSONL query log for feedback (default: HISTORY_DIR/{FEEDBACK_LOG_NAME})")
    p.add_argument("--log-citations", action="store_true",
                   help="also log the sources each answer cites as (weaker) feedback (default: off)")
    p.add_argument("--llm-model", default="gpt-4o-mini",
                   help="OpenAI model; needs OPENAI_API_KEY, and OPENAI_API_BASE for a compatible server (default: gpt-4o-mini)")
    p.add_argument("--top-k", type=positive_int, default=5, help="sources per answer (default: 5)")
    add_embed_model_override(p)
    p.add_argument("--token-budget", type=non_negative_int, default=3000,
                   help="most tokens of earlier turns in the prompt; older turns are archived and come back when a "
                        "question is about them (default: 3000)")
    p.add_argument("--no-long-term-memory", dest="long_term_memory", action="store_false",
                   help="never bring archived turns back into the prompt (default: bring back relevant ones)")
    dm = p.add_mutually_exclusive_group()
    dm.add_argument("--deep-memory", dest="deep_memory", action="store_true", default=None,
                    help="use Deep Memory (default: when the store has an active model)")
    dm.add_argument("--no-deep-memory", dest="deep_memory", action="store_false", help="plain vector search")
    p.add_argument("-q", "--quiet", action="store_true", help="no banner (default: shown)")
    p.set_defaults(func=run_chat)

    evaluate = sub.choices.get("evaluate")
    if evaluate is None:  # pragma: no cover - the main parser always has it
        return
    known = evaluate._option_string_actions  # noqa: SLF001 - only to avoid clashing with options added elsewhere
    group = evaluate.add_argument_group("answer-level evaluation (--answers)")
    group.add_argument("--answers", action="store_true",
                       help="answer each question with an LLM, with and without Deep Memory, and compare "
                            "LLM-judged and ID-based context recall (default: retrieval metrics only)")
    if "--llm-model" not in known:
        group.add_argument("--llm-model", default="gpt-4o-mini",
                           help="OpenAI model that answers and judges; needs OPENAI_API_KEY (default: gpt-4o-mini)")
    group.add_argument("--judge", choices=("auto", "ragas", "llama_index"), default="auto",
                       help="context recall judge: ragas when installed, else the LlamaIndex evaluator (default: auto)")
    group.add_argument("--answers-out", help="write every question's answers and scores to this CSV (default: none)")
    retrieval: Callable[[argparse.Namespace], None] | None = evaluate.get_default("func")

    def evaluate_command(args: argparse.Namespace) -> None:
        if getattr(args, "answers", False):
            run_answers(args)
        elif retrieval is not None:
            retrieval(args)

    evaluate.set_defaults(func=evaluate_command)


def _open_store(path: str, embed_model: str | None = None) -> Any:
    """The persisted store with the embedding it was built with, or ``embed_model`` (a spec as
    ``--embed-model`` takes it), through the CLI's one loader (settings file, errors)."""
    store, spec = open_store(path)
    return attach_embedding(store, embed_model or spec)


def _read_questions(args: argparse.Namespace) -> Any:
    """The test questions of ``--questions`` (a dataset file) or ``--query-log`` as a dataset."""
    from llama_index_deepmemory.data.questions import EmbeddingQAFinetuneDataset, dataset_from_query_relevance

    if getattr(args, "questions", None):
        if not Path(args.questions).is_file():
            raise ValueError(f"question file {args.questions} not found: create it with `deepmemory generate`")
        return EmbeddingQAFinetuneDataset.from_json(args.questions)
    if getattr(args, "query_log", None):
        from llama_index_deepmemory.data.datasets import read_query_log

        return dataset_from_query_relevance(*read_query_log(args.query_log))  # one path, or a list (evaluate)
    raise ValueError("--answers reads its questions from --questions FILE.json or --query-log FILE.jsonl")


def _llm(model: str) -> Any:
    from llama_index_deepmemory.demo import openai_llm

    return openai_llm(model)


def run_chat(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
    """Chat with the store in the terminal: follow-ups are condensed into standalone questions,
    answers show their sources, every turn is saved when it is answered (several processes may
    share a conversation) and resumes with the same --conversation, and /good N logs source N of
    the last answer as helpful for retraining."""
    from llama_index_deepmemory.chat.history import check_conversation_id

    check_conversation_id(args.conversation)  # before the store and its embedding model load
    from llama_index_deepmemory.chat.engine import DeepMemoryChatEngine

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    store = _open_store(args.store, getattr(args, "embed_model", None))
    history_dir = Path(args.history_dir)
    feedback_log = Path(args.feedback_log) if args.feedback_log else history_dir / FEEDBACK_LOG_NAME
    engine = DeepMemoryChatEngine(
        store, _llm(args.llm_model), conversation_id=args.conversation, history_dir=args.chat_store or history_dir,
        top_k=args.top_k, deep_memory=args.deep_memory, token_budget=args.token_budget,
        long_term_memory=args.long_term_memory, feedback_log=feedback_log, log_citations=args.log_citations,
    )

    def say(text: str = "") -> None:
        print(text, file=stdout, flush=True)

    if not args.quiet:
        turns = engine.turns  # one read of the conversation
        state = f"resumed, {len(turns)} earlier turns" if turns else "new"
        say(f"Conversation {engine.conversation_id!r} ({state}), saved in {engine.location}; "
            f"{'with' if engine.deep_memory else 'without'} Deep Memory. /help for commands.")
        if turns:
            last = turns[-1]
            say(f"Last turn: you: {_one_line(last.user)}  assistant: {_one_line(last.assistant)}")
    last_notice = None
    while True:
        print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line:  # end of input
            say()
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/help":
            say(HELP_TEXT)
            continue
        if text == "/history":
            for number, turn in enumerate(engine.turns, start=1):
                say(f"[{number}] you: {turn.user}")
                if turn.standalone_question != turn.user:
                    say(f"    (searched: {turn.standalone_question})")
                say(f"    assistant: {turn.assistant}")
            if not engine.turns:
                say("(no turns yet)")
            continue
        if text.startswith("/good"):
            try:
                parts = text.split()[1:]
                if not parts or not all(part.isascii() and part.isdigit() for part in parts):
                    raise ValueError(f"/good takes the numbers of the sources shown under the answer, e.g. /good 2 "
                                     f"(got {text!r})")
                ranks = [int(part) for part in parts]
                row = engine.mark_helpful(ranks)
            except ValueError as exc:
                say(f"feedback not logged: {exc}")
                continue
            say(f"Thanks: logged {', '.join(row['relevant_ids'])} for {row['query']!r} in {engine.feedback_log}. "
                f"Retrain with `deepmemory train --store {args.store} --query-log {engine.feedback_log}`.")
            continue
        if text.startswith("/"):
            say(f"unknown command {text.split()[0]!r}; /help lists them")
            continue
        try:
            answer = engine.chat(text)
        except Exception as exc:  # noqa: BLE001 - an LLM or network failure ends this turn, not the chat
            logger.debug("chat turn failed", exc_info=True)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            say(f"error: the answer failed ({type(exc).__name__}: {first[:200]}); nothing was saved, try again")
            continue
        if answer.notice and answer.notice != last_notice:
            say(f"note: {answer.notice}")
        last_notice = answer.notice
        if answer.turn.standalone_question != text:
            say(f"(searched: {answer.turn.standalone_question})")
        say(f"assistant> {answer.format()}")


def _one_line(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def run_answers(args: argparse.Namespace) -> None:
    """``deepmemory evaluate --answers``: answer-level comparison with and without Deep Memory."""
    from llama_index_deepmemory.answers import evaluate_answers

    dataset = _read_questions(args)
    store = _open_store(args.store)
    llm = _llm(args.llm_model)
    result = evaluate_answers(
        store, dataset, llm, judge=args.judge, top_k=args.top_k, workers=args.workers, show_progress=not args.quiet,
    )
    if result.every_answer_failed():  # exit 2 with one line, not a table of NaN
        raise ValueError(result.every_answer_failed())
    print(f"\nAnswer-level evaluation on {len(dataset.queries)} questions (top {args.top_k}; context recall judged by "
          f"{'RAGAS' if result.judge == 'ragas' else 'the LlamaIndex evaluator'} with {args.llm_model}):")
    print(str(result))
    failures = int(result.table["judge_failures"].sum())
    if failures:
        print(f"{failures} judge replies failed or could not be parsed: left out of context_recall, not scored 0 "
              "(see judge_error per question with --answers-out).")
    if args.answers_out:
        out = Path(args.answers_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        result.per_question().to_csv(out, index=False)
        print(f"Per-question answers and scores: {out}")
