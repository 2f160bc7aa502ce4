"""Prompts for GRPO: procedural verifiable tasks, chat templates, a JSONL loader, length filtering, a
resumable shuffled prompt stream and a held-out split.

Plain functions and dataclasses on the standard library only (no torch, no tokenizer at import time):
the engine passes an ``encode(messages) -> list[int]`` where token counts are needed.

Public API (all keyword arguments after the first positional one)::

    make_dataset(task, *, n=None, seed=0, level=0, template="r1", question_field="question",
                 answer_field="answer", on_error="raise") -> list[Example]
    train_eval_split(examples, *, eval_size=None, eval_fraction=None, seed=0) -> (train, eval)
    filter_prompts(examples, encode, max_prompt_tokens) -> (kept, skipped: list[SkippedPrompt])
    PromptStream(examples, *, seed=0, shuffle=True).next_batch(P) / state_dict() / load_state_dict()
    reward_fields(examples, *, repeat=1) -> dict[str, list]   # the **fields of grpo.rewards.score
    load_jsonl(path, ...) -> (examples, problems);  save_jsonl(examples, path)
    arithmetic(n, seed=0, level=0, *, template="r1"), countdown(n, seed=0, level=0, *, template="r1")
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

logger = logging.getLogger(__name__)

__all__ = [
    "Example", "DataError", "SkippedPrompt", "PromptStream", "TASKS", "TEMPLATES", "R1_SYSTEM_PROMPT",
    "register_task", "register_template", "get_template", "apply_template", "arithmetic", "countdown",
    "load_jsonl", "save_jsonl", "filter_prompts", "train_eval_split", "make_dataset", "reward_fields",
]


@dataclass
class Example:
    """One prompt with its verifiable answer.

    ``prompt`` is the chat messages given to the sampler; ``answer`` is the gold answer as a string;
    ``fields`` holds extra per-example columns handed to reward functions as keyword fields (countdown:
    ``numbers``, ``target``, ``solution``); ``question`` is the raw question text (used for dedup/splits).
    """
    id: str
    prompt: list[dict]
    answer: str
    task: str
    fields: dict = field(default_factory=dict)
    question: str = ""

    def to_dict(self) -> dict:
        return {"id": self.id, "task": self.task, "question": self.question, "answer": self.answer,
                "prompt": self.prompt, "fields": self.fields}


class DataError(ValueError):
    """Malformed input data; ``problems`` is the list of (line_no, reason) found."""

    def __init__(self, message: str, problems: Sequence[tuple[int, str]] = ()):
        super().__init__(message)
        self.problems = list(problems)


# ----------------------------------------------------------------------------------------- templates
R1_SYSTEM_PROMPT = (
    "You are a helpful assistant. First think about the problem step by step inside <think> </think> "
    "tags, then give only the final answer inside <answer> </answer> tags, like this: "
    "<think> reasoning </think> <answer> 42 </answer>"
)

TEMPLATES: dict[str, Callable[[str], list[dict]]] = {}


def register_template(name: str):
    """Registers ``fn(question) -> list of chat messages`` under ``name``."""
    def deco(fn):
        TEMPLATES[name] = fn
        return fn
    return deco


@register_template("r1")
def _r1_template(question: str) -> list[dict]:
    return [{"role": "system", "content": R1_SYSTEM_PROMPT}, {"role": "user", "content": question}]


@register_template("plain")
def _plain_template(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def get_template(name: str) -> Callable[[str], list[dict]]:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown prompt template {name!r}; registered: {', '.join(sorted(TEMPLATES))}") from None


def apply_template(name: str, question: str) -> list[dict]:
    """The chat messages of template ``name`` for ``question``."""
    return get_template(name)(question)


# ------------------------------------------------------------------------------ procedural tasks
# The generators live in grpo/tasks.py (imported at the end of this module, so they are registered).
# ------------------------------------------------------------------------------------ JSONL files
def _is_messages(x) -> bool:
    return (isinstance(x, list) and len(x) > 0 and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in x))


def _last_user_content(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m["role"] == "user":
            return m["content"]
    return ""


def _row_to_example(row, line_no: int, *, question_field: str, answer_field: str, task: str,
                    template: str, stem: str) -> Example:
    """One JSON row to an Example; raises ValueError(reason) when the row is malformed."""
    if not isinstance(row, dict):
        raise ValueError(f"not a JSON object (got {type(row).__name__})")
    prompt = row.get("prompt") if question_field != "prompt" else None
    if prompt is not None and not _is_messages(prompt):
        raise ValueError("field 'prompt' must be a non-empty list of {role, content} messages")
    question = row.get(question_field)
    if question is None and prompt is not None:
        question = _last_user_content(prompt)  # TRL-style conversational rows carry no question column
    elif question is None:
        raise ValueError(f"missing field {question_field!r}")
    if not isinstance(question, str):
        raise ValueError(f"field {question_field!r} must be a string, got {type(question).__name__}")
    if not question.strip() and prompt is None:
        raise ValueError(f"field {question_field!r} is empty")
    if answer_field not in row:
        raise ValueError(f"missing field {answer_field!r}")
    answer = row[answer_field]
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        raise ValueError(f"field {answer_field!r} must be a string or a number, got {type(answer).__name__}")
    if isinstance(answer, float) and not math.isfinite(answer):  # json accepts NaN and Infinity
        raise ValueError(f"field {answer_field!r} is {answer}")
    answer = str(answer)
    if not answer.strip():
        raise ValueError(f"field {answer_field!r} is empty")
    ex_id = row.get("id", f"{stem}:{line_no}")
    if isinstance(ex_id, bool) or not isinstance(ex_id, (str, int)) or not str(ex_id):
        raise ValueError("field 'id' must be a non-empty string or an integer")
    row_task = row.get("task", task)
    if not isinstance(row_task, str):
        raise ValueError("field 'task' must be a string")
    fields = row.get("fields", {})
    if not isinstance(fields, dict):
        raise ValueError("field 'fields' must be a JSON object")
    reserved = {question_field, answer_field, "id", "task", "fields", "prompt"}
    fields = {**fields, **{k: v for k, v in row.items() if k not in reserved}}
    if prompt is None:
        prompt = get_template(template)(question)
    return Example(id=str(ex_id), prompt=prompt, answer=answer, task=row_task, fields=fields, question=question)


def _format_problems(path, problems: list[tuple[int, str]], limit: int = 20) -> str:
    lines = [f"  line {no}: {reason}" for no, reason in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return f"{path}: {len(problems)} malformed line(s):\n" + "\n".join(lines)


def load_jsonl(path, *, question_field: str = "question", answer_field: str = "answer", task: str = "jsonl",
               template: str = "r1", on_error: str = "raise") -> tuple[list[Example], list[tuple[int, str]]]:
    """Loads one example per JSON line; always returns ``(examples, problems)``.

    ``problems`` lists (line_no, reason) for each malformed row (bad JSON or UTF-8, not an object,
    missing/empty/mistyped question or answer, bad ``prompt`` messages, duplicate id). With
    ``on_error="raise"`` any problem raises a DataError listing them (the first 20) and ``problems`` is
    empty on return; with ``"skip"`` bad rows are left out and reported. Blank lines are ignored.

    Columns: ``question_field`` (str) and ``answer_field`` (str or number, kept as a string) are
    required; ``id`` (else "<file stem>:<line>"), ``task`` (else ``task``), ``prompt`` (a list of chat
    messages, used verbatim instead of ``template``; the question then defaults to the last user
    message) and ``fields`` (an object) are optional; every other column goes into ``fields``.
    Files written by :func:`save_jsonl` load back to equal examples.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    get_template(template)  # fail on a bad template name before reading the file
    path = Path(path)
    examples, problems, seen = [], [], {}
    with open(path, "rb") as fh:  # bytes, so one bad UTF-8 line is reported instead of failing the file
        for line_no, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append((line_no, f"not valid UTF-8 ({e.reason} at byte {e.start})"))
                continue
            if not text.strip():
                continue
            try:
                row = json.loads(text)
                ex = _row_to_example(row, line_no, question_field=question_field, answer_field=answer_field,
                                     task=task, template=template, stem=path.stem)
            except json.JSONDecodeError as e:
                problems.append((line_no, f"invalid JSON: {e.msg} at column {e.colno}"))
                continue
            except ValueError as e:
                problems.append((line_no, str(e)))
                continue
            if ex.id in seen:
                problems.append((line_no, f"duplicate id {ex.id!r} (first on line {seen[ex.id]})"))
                continue
            seen[ex.id] = line_no
            examples.append(ex)
    if problems and on_error == "raise":
        raise DataError(_format_problems(path, problems), problems)
    return examples, problems


def save_jsonl(examples: Iterable[Example], path) -> None:
    """Writes examples atomically (temp file in the same folder, fsync, rename): a crash never leaves a
    half-written file under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for ex in examples:
                fh.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


# --------------------------------------------------------------------------------- filtering, splits
class SkippedPrompt(NamedTuple):
    id: str
    length: int
    limit: int


def filter_prompts(examples: Iterable[Example], encode: Callable[[list[dict]], Sequence[int]],
                   max_prompt_tokens: int | None) -> tuple[list[Example], list[SkippedPrompt]]:
    """Keeps examples whose encoded prompt (``encode(messages)``, the sampler's chat-template encoder)
    has at most ``max_prompt_tokens`` tokens; the rest are reported, never truncated (a truncated
    prompt would lose the question). ``None`` keeps all without encoding."""
    examples = list(examples)
    if max_prompt_tokens is None:
        return examples, []
    kept, skipped = [], []
    for ex in examples:
        length = len(encode(ex.prompt))
        if length <= max_prompt_tokens:
            kept.append(ex)
        else:
            skipped.append(SkippedPrompt(ex.id, length, max_prompt_tokens))
    return kept, skipped


def _norm_question(q: str) -> str:
    return " ".join(q.split()).casefold()


def train_eval_split(examples: Sequence[Example], *, eval_size: int | None = None,
                     eval_fraction: float | None = None, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """A seeded held-out split, disjoint by id and by question text (whitespace/case-normalised).

    Examples sharing a question stay on the same side, so the eval set holds ``eval_size`` examples
    (or ``round(eval_fraction * len)``) when questions are unique and at most that many otherwise.
    Both sides keep the input order. Neither argument (or 0): everything is train.
    """
    examples = list(examples)
    if eval_size is not None and eval_fraction is not None:
        raise ValueError("give eval_size or eval_fraction, not both")
    if eval_fraction is not None:
        if not 0.0 <= eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
        eval_size = round(eval_fraction * len(examples))
    eval_size = eval_size or 0
    if eval_size < 0 or (eval_size and eval_size >= len(examples)):
        raise ValueError(f"eval_size {eval_size} must be in [0, {len(examples)}) so that train is not empty")
    ids = [ex.id for ex in examples]
    if len(set(ids)) != len(ids):
        raise DataError("train_eval_split: example ids are not unique")
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(_norm_question(ex.question or json.dumps(ex.prompt)), []).append(i)
    keys = sorted(groups)  # sorted first: the shuffle then depends only on the seed and the data
    random.Random(f"grpo-split:{seed}").shuffle(keys)
    chosen, room = set(), eval_size
    for key in keys:
        if room == 0:
            break
        if len(groups[key]) <= room:  # a group that does not fit is left to train, never split
            chosen.update(groups[key])
            room -= len(groups[key])
    train = [ex for i, ex in enumerate(examples) if i not in chosen]
    held = [ex for i, ex in enumerate(examples) if i in chosen]
    return train, held


# ----------------------------------------------------------------------------------- prompt stream
class PromptStream:
    """Deterministic epoch-based shuffled batches of prompts, resumable exactly.

    Epoch e visits every example once in the order of ``random.Random(f"...:{seed}:{e}")``; a batch
    that crosses an epoch boundary takes the rest of this epoch then the start of the next (nothing is
    dropped). ``state_dict()`` (epoch, cursor, seed, n, fingerprint of the ids) restored with
    ``load_state_dict`` on the same examples makes ``next_batch`` continue with the same batch.
    """

    def __init__(self, examples: Sequence[Example], *, seed: int = 0, shuffle: bool = True):
        self.examples = list(examples)
        if not self.examples:
            raise ValueError("PromptStream needs at least one example")
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.cursor = 0, 0
        self._order_epoch, self._order = None, []
        self._fingerprint = hashlib.sha1("\n".join(ex.id for ex in self.examples).encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.examples)

    def _epoch_order(self) -> list[int]:
        if self._order_epoch != self.epoch:
            order = list(range(len(self.examples)))
            if self.shuffle:
                random.Random(f"grpo-stream:{self.seed}:{self.epoch}").shuffle(order)
            self._order_epoch, self._order = self.epoch, order
        return self._order

    def next_batch(self, P: int) -> list[Example]:
        """The next ``P`` examples (P may exceed the dataset: epochs then repeat within a batch)."""
        if not isinstance(P, int) or P <= 0:
            raise ValueError(f"batch size P must be a positive int, got {P!r}")
        batch = []
        while len(batch) < P:
            order = self._epoch_order()
            take = order[self.cursor:self.cursor + P - len(batch)]
            batch.extend(self.examples[i] for i in take)
            self.cursor += len(take)
            if self.cursor >= len(order):
                self.epoch, self.cursor = self.epoch + 1, 0
        return batch

    def batches(self, P: int):
        """An endless iterator of ``next_batch(P)``."""
        while True:
            yield self.next_batch(P)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "shuffle": self.shuffle,
                "n": len(self.examples), "fingerprint": self._fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a position; refuses a state saved over different examples (count or ids differ)."""
        if state.get("n", len(self.examples)) != len(self.examples) or \
                state.get("fingerprint", self._fingerprint) != self._fingerprint:
            raise ValueError(f"PromptStream state was saved over different examples (n={state.get('n')}, "
                             f"fingerprint={state.get('fingerprint')}; here n={len(self.examples)}, "
                             f"fingerprint={self._fingerprint})")
        cursor = int(state["cursor"])
        if not 0 <= cursor < len(self.examples):
            raise ValueError(f"PromptStream state cursor {cursor} out of range [0, {len(self.examples)})")
        self.seed, self.shuffle = state["seed"], bool(state.get("shuffle", self.shuffle))
        self.epoch, self.cursor = int(state["epoch"]), cursor
        self._order_epoch = None


# ----------------------------------------------------------------------------- engine conveniences
def reward_fields(examples: Sequence[Example], *, repeat: int = 1) -> dict[str, list]:
    """The per-sample keyword fields for reward functions: ``answer``, ``task``, ``id``, ``question``
    and every key of ``fields`` (None where an example lacks it), each entry repeated ``repeat`` times
    consecutively (G completions per prompt). The four named keys win over same-named ``fields`` keys."""
    keys = sorted({k for ex in examples for k in ex.fields} - {"answer", "task", "id", "question"})
    out: dict[str, list] = {k: [] for k in ("answer", "task", "id", "question", *keys)}
    for ex in examples:
        row = {"answer": ex.answer, "task": ex.task, "id": ex.id, "question": ex.question}
        for k in keys:
            row[k] = ex.fields.get(k)
        for k, v in row.items():
            out[k].extend([v] * repeat)
    return out


def _looks_like_path(task: str) -> bool:
    return task.endswith((".jsonl", ".json")) or os.sep in task or Path(task).is_file()


def make_dataset(task: str = "arithmetic", *, n: int | None = None, seed: int = 0, level=0,
                 template: str = "r1", question_field: str = "question", answer_field: str = "answer",
                 on_error: str = "raise") -> list[Example]:
    """The examples the engine's data config names.

    task: a registered task (``arithmetic``, ``countdown``, see ``TASKS``) or a path to a JSONL file.
    n: how many to generate (default 1000), or for a file the first n kept rows (default all).
    seed, level (int or list of ints: an interleaved curriculum mix): generator arguments.
    template: prompt template name (``r1``, ``plain``, see ``TEMPLATES``).
    question_field, answer_field, on_error: :func:`load_jsonl` arguments; skipped rows are logged.
    Hold out an eval set with :func:`train_eval_split`.
    """
    if task in TASKS:
        return TASKS[task](1000 if n is None else n, seed, level, template=template)
    if not _looks_like_path(task):
        raise ValueError(f"unknown task {task!r}; registered: {', '.join(sorted(TASKS))}; "
                         f"or give the path of a .jsonl file")
    examples, problems = load_jsonl(task, question_field=question_field, answer_field=answer_field,
                                    template=template, on_error=on_error)
    if problems:
        logger.warning("%s", _format_problems(task, problems, limit=5) + "\n  (skipped)")
    return examples if n is None else examples[:n]


from .tasks import TASKS, arithmetic, countdown, register_task  # noqa: E402  (registers the tasks)
