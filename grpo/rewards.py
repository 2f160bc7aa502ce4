"""Reward functions for GRPO, in TRL's convention: ``fn(prompts, completions, **fields) -> list[float]``.

``completions`` are strings or conversational lists of messages (the last assistant message counts);
``fields`` are per-sample lists (``answer``, ``numbers``, ``target``, ``completion_lengths``, ... one entry
per completion) plus scalar parameters (``max_completion_length``, ``target_text``, ...). Every function
accepts ``**fields`` it does not use, so one batch of fields feeds them all.

Built-ins (registered names): ``accuracy``, ``format_strict``, ``format_soft``, ``countdown``,
``overlong``, ``contains``. :func:`get_reward` also resolves ``"package.module:function"``.
:func:`score` / :class:`RewardSet` run weighted :class:`RewardSpec` s over a batch, check every value and
report a failing function with the sample that made it fail (:class:`RewardError`).

Pure and fast: no model calls, no torch; ``math_verify`` is imported on the first non-trivial check.
"""
from __future__ import annotations

import ast
import importlib
import math
import numbers as _numbers
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import Any, Callable, Sequence

__all__ = [
    "RewardError", "RewardSpec", "RewardResult", "RewardSet", "REWARDS", "register_reward", "get_reward",
    "score", "completion_text", "extract_answer", "safe_eval_arithmetic", "accuracy", "format_strict",
    "format_soft", "countdown", "overlong", "contains",
]

RewardFn = Callable[..., Sequence[float]]
REWARDS: dict[str, RewardFn] = {}


class RewardError(RuntimeError):
    """A reward function raised or returned a bad value; names the function and the sample."""

    def __init__(self, message: str, *, reward: str, index: int | None = None):
        super().__init__(message)
        self.reward, self.index = reward, index


def register_reward(name: str):
    """Registers ``fn(prompts, completions, **fields) -> list[float]`` under ``name``.

    Re-registering the same function is a no-op (module reloads); another function under a taken name
    is refused, so a plug-in cannot silently shadow a built-in.
    """
    def deco(fn):
        old = REWARDS.get(name)
        if old is not None and getattr(old, "__qualname__", None) != getattr(fn, "__qualname__", None):
            raise ValueError(f"reward {name!r} is already registered ({old.__module__}.{old.__qualname__})")
        REWARDS[name] = fn
        return fn
    return deco


def get_reward(name: str | RewardFn) -> RewardFn:
    """A registered reward by name, a user function given as ``"module.path:function"`` (imported), or
    a callable passed through."""
    if callable(name):
        return name
    if not isinstance(name, str):
        raise TypeError(f"reward must be a name, 'module:function' or a callable, got {type(name).__name__}")
    if name in REWARDS:
        return REWARDS[name]
    if ":" not in name:
        raise ValueError(f"unknown reward {name!r}; registered: {', '.join(sorted(REWARDS))}; "
                         f"or give a user function as 'package.module:function'")
    module_name, _, attr = name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward {name!r}: cannot import module {module_name!r}: {e}") from e
    for part in attr.split("."):
        if not part or not hasattr(obj, part):
            raise ValueError(f"reward {name!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"reward {name!r}: {attr!r} is a {type(obj).__name__}, not a callable")
    return obj


# --------------------------------------------------------------------------------------- helpers
def _content_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal-style parts: [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    raise TypeError(f"message content must be a string or a list of parts, got {type(content).__name__}")


def completion_text(completion) -> str:
    """The text of one completion: a string, a message dict, or a list of messages (the last assistant
    message's content; the last message when none is marked assistant)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        if not completion:
            return ""
        for m in reversed(completion):
            if isinstance(m, dict) and m.get("role") == "assistant":
                return _content_text(m.get("content"))
        last = completion[-1]
        return _content_text(last.get("content") if isinstance(last, dict) else last)
    raise TypeError(f"completion must be a string or a list of messages, got {type(completion).__name__}")


def extract_answer(text: str) -> str | None:
    """The stripped content of the last complete ``<answer>...</answer>``, or None.

    Found with str.find (linear, no regex backtracking on long outputs): the last ``<answer>`` before
    the last ``</answer>``, up to the first ``</answer>`` after it; so a nested
    ``<answer><answer>5</answer></answer>`` gives ``5`` (format rewards refuse such nesting).
    """
    last_end = text.rfind("</answer>")
    if last_end < 0:
        return None
    start = text.rfind("<answer>", 0, last_end)
    if start < 0:
        return None
    start += len("<answer>")
    return text[start:text.find("</answer>", start)].strip()


def _texts(completions) -> list[str]:
    return [completion_text(c) for c in completions]


def _per_sample(value, n: int, name: str) -> list:
    """A per-sample field as a list of length n (a scalar is broadcast)."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"field {name!r} has {len(value)} entries for {n} completions")
        return list(value)
    return [value] * n


# -------------------------------------------------------------------------------------- accuracy
_INT_RE = re.compile(r"[+-]?\d+")
_INT_COMMAS_RE = re.compile(r"[+-]?\d{1,3}(,\d{3})+")
# Inputs sympy would take seconds or gigabytes to evaluate: a power with a 4+ digit exponent, a power
# tower with a numeric inner base (3^3^3^3, 10^{10^{10}}), a 5+ digit factorial. Symbolic exponents
# such as e^{-x^2} are left alone (sympy does not expand them).
_RISKY_RE = re.compile(r"(\*\*|\^)[\s{(]*[+-]?\s*\d{4,}|(\*\*|\^)[\s{(]*\d+\s*(\*\*|\^)|\d{5,}\s*!")


def _plain_int(s: str) -> int | None:
    s = s.strip().rstrip(".").strip().strip("$").strip()
    if _INT_RE.fullmatch(s):
        return int(s)
    if _INT_COMMAS_RE.fullmatch(s):
        return int(s.replace(",", ""))
    return None


def _mv_timeouts(timeout_seconds: int | None) -> int | None:
    """math_verify times out with signal.alarm, which only works in the main thread: elsewhere run
    without its timeout (the input guards above are then the only protection)."""
    if threading.current_thread() is threading.main_thread():
        return timeout_seconds
    return None


@lru_cache(maxsize=4096)
def _parse_gold(gold: str, timeout: int | None):
    from math_verify import parse  # deferred: importing sympy costs ~1 s
    parsed = parse(gold, parsing_timeout=timeout)
    if not parsed:
        parsed = parse(f"${gold}$", parsing_timeout=timeout)
    return tuple(parsed)


def _answer_correct(pred: str, gold: str, *, max_answer_chars: int, timeout: int | None) -> bool:
    if not pred or len(pred) > max_answer_chars:
        return False
    gi, pi = _plain_int(gold), _plain_int(pred)
    if gi is not None and pi is not None:  # the fast path: integer tasks never reach sympy
        return gi == pi
    if _RISKY_RE.search(pred):
        return False
    from math_verify import parse, verify
    gold_parsed = _parse_gold(gold.strip(), timeout)
    if not gold_parsed:
        return False
    pred_parsed = parse(pred, parsing_timeout=timeout)
    if not pred_parsed:
        return False
    return bool(verify(list(gold_parsed), pred_parsed, timeout_seconds=timeout))


@register_reward("accuracy")
def accuracy(prompts, completions, answer, *, require_tags: bool = True, max_answer_chars: int = 1000,
             timeout_seconds: int | None = 2, **fields) -> list[float]:
    """1.0 when the last ``<answer>`` content equals the gold ``answer`` (per-sample field), else 0.0.

    Plain integers are compared directly; anything else with ``math_verify.parse``/``verify`` (LaTeX,
    fractions, ``\\boxed{}``). ``require_tags=False`` checks the whole completion when it has no answer
    tags (for the ``plain`` template). Answers over ``max_answer_chars`` or that would make sympy
    evaluate huge powers score 0. ``timeout_seconds`` applies in the main thread only (see above).
    """
    golds = _per_sample(answer, len(completions), "answer")
    timeout = _mv_timeouts(timeout_seconds)
    out = []
    for text, gold in zip(_texts(completions), golds):
        pred = extract_answer(text)
        if pred is None and not require_tags:
            pred = text.strip()
        if gold is None:
            raise ValueError("accuracy: sample has no gold answer")
        out.append(1.0 if pred is not None and _answer_correct(
            pred, str(gold), max_answer_chars=max_answer_chars, timeout=timeout) else 0.0)
    return out


# ---------------------------------------------------------------------------------------- format
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")


def _strict_ok(text: str) -> bool:
    s = text.strip()
    if not (s.startswith("<think>") and s.endswith("</answer>")):
        return False
    if any(s.count(t) != 1 for t in _TAGS):  # no nested, repeated or stray tags
        return False
    t_end, a_start = s.find("</think>"), s.find("<answer>")
    if a_start < t_end or s[t_end + len("</think>"):a_start].strip():
        return False
    return bool(s[a_start + len("<answer>"):-len("</answer>")].strip())  # a non-empty answer


@register_reward("format_strict")
def format_strict(prompts, completions, **fields) -> list[float]:
    """1.0 when the whole completion (up to surrounding whitespace) is exactly
    ``<think>...</think>`` whitespace ``<answer>...</answer>``: each tag once, a non-empty answer."""
    return [1.0 if _strict_ok(t) else 0.0 for t in _texts(completions)]


def _soft_ok(text: str) -> bool:
    pos = 0
    for tag in _TAGS:  # each tag found after the previous one
        pos = text.find(tag, pos)
        if pos < 0:
            return False
        pos += len(tag)
    return True


@register_reward("format_soft")
def format_soft(prompts, completions, **fields) -> list[float]:
    """1.0 when ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` all appear in this order (other
    text around them and an empty answer are allowed)."""
    return [1.0 if _soft_ok(t) else 0.0 for t in _texts(completions)]


# ------------------------------------------------------------------------------------- countdown
_EQ_CHARS_RE = re.compile(r"[\d+\-*/().\s]+")
_UNICODE_OPS = str.maketrans({"×": "*", "·": "*", "÷": "/", "−": "-", "–": "-"})
_MAX_LITERAL = 10 ** 12


class _Invalid(Exception):
    """The expression is not plain arithmetic over integers (a normal outcome: scores 0)."""


def _eval_node(node) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        if abs(node.value) > _MAX_LITERAL:
            raise _Invalid("literal too large")
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval_node(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a, b = _eval_node(node.left), _eval_node(node.right)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        if b == 0:
            raise _Invalid("division by zero")
        return a / b
    raise _Invalid(f"{type(node).__name__} is not allowed")


def _literals(node) -> list[int]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]


def _parse_equation(expr: str, max_chars: int):
    """The ast of a plain arithmetic expression (digits, + - * /, parentheses), or raise _Invalid."""
    expr = expr.translate(_UNICODE_OPS).strip()
    if not expr or len(expr) > max_chars or not _EQ_CHARS_RE.fullmatch(expr):
        raise _Invalid("not a plain arithmetic expression")
    try:
        return ast.parse(expr, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:  # deep parentheses: RecursionError
        raise _Invalid(str(e)) from None


def safe_eval_arithmetic(expr: str, max_chars: int = 200) -> Fraction | None:
    """The exact value of a plain arithmetic expression (integers, + - * /, unary minus, parentheses),
    or None when it is anything else or divides by zero. Never calls ``eval``: the ast is walked over a
    whitelist of nodes; ``**``, names, calls, floats are rejected."""
    try:
        return _eval_node(_parse_equation(expr, max_chars))
    except (_Invalid, RecursionError):
        return None


def _countdown_one(text: str, nums, target, *, use_all: bool, format_score: float, max_chars: int) -> float:
    eq = extract_answer(text)
    if eq is None:
        return 0.0
    if eq.count("=") == 1:  # "expr = target" is accepted when the right side is the target itself
        lhs, rhs = eq.split("=")
        if safe_eval_arithmetic(rhs, max_chars) != target:
            return format_score
        eq = lhs
    try:
        tree = _parse_equation(eq, max_chars)
        used, given = Counter(_literals(tree)), Counter(nums)
        ok_numbers = used == given if use_all else not (used - given)
        if not ok_numbers:
            return format_score
        return 1.0 if _eval_node(tree) == target else format_score
    except (_Invalid, RecursionError):
        return format_score


@register_reward("countdown")
def countdown(prompts, completions, numbers, target, *, use_all: bool = True, format_score: float = 0.0,
              max_equation_chars: int = 200, **fields) -> list[float]:
    """1.0 when the equation in the last ``<answer>`` evaluates exactly to ``target`` using the given
    ``numbers`` (per-sample fields); else ``format_score`` if an answer was given, 0.0 if none.

    ``use_all=True`` (TinyZero's rule) needs every number used exactly once; ``False`` allows each at
    most once. An answer ``expr = target`` is accepted. Evaluated with :func:`safe_eval_arithmetic`'s
    whitelist in exact fractions (so ``6 / 4 * 2 = 3`` counts, as TinyZero's float check does).
    """
    n = len(completions)
    nums_list, targets = _per_sample(numbers, n, "numbers"), _per_sample(target, n, "target")
    out = []
    for text, nums, tgt in zip(_texts(completions), nums_list, targets):
        if nums is None or tgt is None:
            raise ValueError("countdown: sample has no 'numbers'/'target' fields")
        out.append(_countdown_one(text, [int(x) for x in nums], Fraction(int(tgt)), use_all=use_all,
                                  format_score=format_score, max_chars=max_equation_chars))
    return out


# ----------------------------------------------------------------------------- length and contains
@register_reward("overlong")
def overlong(prompts, completions, completion_lengths=None, *, max_completion_length: int | None = None,
             overlong_buffer: int | None = None, **fields) -> list[float]:
    """DAPO's soft overlong punishment on token counts ``completion_lengths`` (per-sample field):
    0 up to ``max_completion_length - overlong_buffer``, then linear down to -1 at
    ``max_completion_length`` (and -1 beyond)."""
    if completion_lengths is None:
        raise ValueError("overlong needs the per-sample field 'completion_lengths' (token counts)")
    if max_completion_length is None or overlong_buffer is None:
        raise ValueError("overlong needs 'max_completion_length' and 'overlong_buffer' parameters")
    if not 0 < overlong_buffer <= max_completion_length:
        raise ValueError(f"overlong_buffer must be in (0, max_completion_length], got {overlong_buffer} "
                         f"with max_completion_length {max_completion_length}")
    start = max_completion_length - overlong_buffer
    out = []
    for length in _per_sample(completion_lengths, len(completions), "completion_lengths"):
        out.append(0.0 if length <= start else max(-1.0, (start - length) / overlong_buffer))
    return out


@register_reward("contains")
def contains(prompts, completions, *, target_text: str | Sequence[str] | None = None, **fields) -> list[float]:
    """1.0 when the completion contains ``target_text`` (a string, or a per-sample list), else 0.0."""
    if target_text is None:
        raise ValueError("contains needs the parameter 'target_text'")
    wanted = _per_sample(target_text, len(completions), "target_text")
    return [1.0 if str(w) in t else 0.0 for t, w in zip(_texts(completions), wanted)]


# -------------------------------------------------------------------------------------- scoring
@dataclass
class RewardSpec:
    """One weighted reward: ``name`` (registered, ``module:function`` or a callable), its ``weight`` in
    the total and fixed keyword parameters ``kwargs`` (they override same-named batch fields). ``label``
    names its column in the result (default: the name, with ``#2``... for repeats)."""
    name: str | RewardFn
    weight: float = 1.0
    kwargs: dict = field(default_factory=dict)
    label: str | None = None

    @classmethod
    def coerce(cls, obj) -> "RewardSpec":
        """A spec from a RewardSpec, a name/callable, or a dict ``{name, weight?, kwargs?, label?}``."""
        if isinstance(obj, RewardSpec):
            return obj
        if isinstance(obj, dict):
            unknown = set(obj) - {"name", "weight", "kwargs", "label"}
            if unknown or "name" not in obj:
                raise ValueError(f"reward spec needs 'name' and allows weight/kwargs/label; got keys {sorted(obj)}")
            return cls(**obj)
        return cls(obj)


@dataclass
class RewardResult:
    """Per-function rewards (``per_function[label]``), the weighted ``total`` per sample and
    ``errors[label]`` (samples zeroed under ``on_error="zero"``)."""
    per_function: dict[str, list[float]]
    total: list[float]
    errors: dict[str, int]

    def metrics(self, prefix: str = "rewards/") -> dict[str, float]:
        """Means per function and of the total, plus error counts (for logging)."""
        n = max(1, len(self.total))
        out = {f"{prefix}{k}/mean": sum(v) / n for k, v in self.per_function.items()}
        out[f"{prefix}total/mean"] = sum(self.total) / n
        out.update({f"{prefix}{k}/errors": float(c) for k, c in self.errors.items()})
        return out


def _excerpt(x, limit: int = 160) -> str:
    try:
        text = x if isinstance(x, str) else completion_text(x)
    except TypeError:
        text = str(x)
    if len(text) > limit:  # head and tail: the answer is usually at the end
        text = text[: limit // 2] + " ... " + text[-limit // 2:]
    return repr(text)


def _check_value(v) -> float:
    """float(v) for a real number (numpy/torch scalars included); TypeError/ValueError otherwise."""
    if not isinstance(v, _numbers.Real) and (isinstance(v, (str, bytes)) or not hasattr(v, "__float__")):
        raise TypeError(f"returned {type(v).__name__} {v!r:.40}, not a number")
    try:
        f = float(v)
    except (TypeError, ValueError, RuntimeError) as e:  # e.g. a tensor with several elements
        raise TypeError(f"returned {type(v).__name__}, not a number ({e})") from None
    if not math.isfinite(f):
        raise ValueError(f"returned non-finite {f}")
    return f


class RewardSet:
    """Resolved weighted rewards; call it like :func:`score` without the specs."""

    def __init__(self, specs: Sequence[RewardSpec | str | dict], *, on_error: str = "raise"):
        if on_error not in ("raise", "zero"):
            raise ValueError(f"on_error must be 'raise' or 'zero', got {on_error!r}")
        self.specs = [RewardSpec.coerce(s) for s in specs]
        if not self.specs:
            raise ValueError("RewardSet needs at least one reward")
        self.on_error = on_error
        for s in self.specs:
            if not isinstance(s.weight, _numbers.Real) or not math.isfinite(s.weight):
                raise ValueError(f"reward {s.name!r}: weight must be a finite number, got {s.weight!r}")
            if not isinstance(s.kwargs, dict):
                raise ValueError(f"reward {s.name!r}: kwargs must be a dict, got {type(s.kwargs).__name__}")
        self.fns = [get_reward(s.name) for s in self.specs]  # resolve now: config errors surface early
        self.labels, seen = [], Counter()
        for s, fn in zip(self.specs, self.fns):
            base = s.label or (s.name if isinstance(s.name, str) else getattr(fn, "__name__", "reward"))
            seen[base] += 1
            self.labels.append(base if seen[base] == 1 else f"{base}#{seen[base]}")

    def __call__(self, prompts, completions, fields: dict | None = None, **more_fields) -> RewardResult:
        both = set(fields or {}) & set(more_fields)
        if both:
            raise ValueError(f"fields given twice (dict and keyword): {sorted(both)}")
        fields = {**(fields or {}), **more_fields}
        n = len(completions)
        if len(prompts) != n:
            raise ValueError(f"{len(prompts)} prompts for {n} completions (repeat each prompt per completion)")
        for k, v in fields.items():
            if isinstance(v, (list, tuple)) and len(v) != n:
                raise ValueError(f"field {k!r} has {len(v)} entries for {n} completions")
        rewards, errors = {}, {}
        for spec, fn, label in zip(self.specs, self.fns, self.labels):
            values, bad = self._run_one(fn, label, spec.kwargs, prompts, completions, fields)
            rewards[label] = values
            if bad:
                errors[label] = bad
        total = [sum(s.weight * rewards[lb][i] for s, lb in zip(self.specs, self.labels)) for i in range(n)]
        return RewardResult(rewards, total, errors)

    def _fail(self, label, index, why, prompts, completions, cause=None):
        where = "the batch" if index is None else f"sample {index}"
        msg = f"reward {label!r} failed on {where}: {why}"
        if index is not None:
            msg += f"\n  prompt: {_excerpt(prompts[index])}\n  completion: {_excerpt(completions[index])}"
        raise RewardError(msg, reward=label, index=index) from cause

    def _run_one(self, fn, label, kwargs, prompts, completions, fields) -> tuple[list[float], int]:
        """One function over the batch: (values, samples zeroed)."""
        n = len(completions)
        try:
            out = fn(prompts, completions, **{**fields, **kwargs})
        except Exception as e:  # find the sample(s) that make it raise
            per = self._rerun_per_sample(fn, kwargs, prompts, completions, fields)
            if self.on_error == "raise":
                i = next((i for i, (_, err) in enumerate(per) if err is not None), None)
                why = f"raised {type(e).__name__}: {e}" + ("" if i is None else f" (alone: {per[i][1]})")
                self._fail(label, i, why, prompts, completions, cause=e)
            return [0.0 if err else v for v, err in per], sum(err is not None for _, err in per)
        raw = list(out) if isinstance(out, (list, tuple)) or hasattr(out, "tolist") else None
        if raw is None or len(raw) != n:
            if self.on_error == "raise":
                got = f"{len(raw)} values" if raw is not None else f"a {type(out).__name__}"
                self._fail(label, None, f"returned {got} for {n} completions", prompts, completions)
            return [0.0] * n, n  # a wrong-length batch says nothing trustworthy about any sample
        values, bad = [], 0
        for i, v in enumerate(raw):
            try:
                values.append(_check_value(v))
            except (TypeError, ValueError) as e:
                if self.on_error == "raise":
                    self._fail(label, i, str(e), prompts, completions)
                values.append(0.0)
                bad += 1
        return values, bad

    @staticmethod
    def _rerun_per_sample(fn, kwargs, prompts, completions, fields) -> list[tuple[float, str | None]]:
        """Re-runs ``fn`` one sample at a time: (value, error message or None) per sample."""
        n = len(completions)
        out = []
        for i in range(n):
            one = {k: [v[i]] if isinstance(v, (list, tuple)) else v for k, v in fields.items()}
            try:
                raw = list(fn([prompts[i]], [completions[i]], **{**one, **kwargs}))
                if len(raw) != 1:
                    raise ValueError(f"returned {len(raw)} values for 1 completion")
                out.append((_check_value(raw[0]), None))
            except Exception as e:
                out.append((0.0, f"{type(e).__name__}: {e}"))
        return out


def score(specs: Sequence[RewardSpec | str | dict], prompts, completions, fields: dict | None = None, *,
          on_error: str = "raise", **more_fields) -> RewardResult:
    """Runs each reward spec on the batch and sums ``weight * reward`` per sample.

    ``prompts`` and ``completions`` have one entry per completion; ``fields`` (a dict, and/or keyword
    arguments) are per-sample lists of the same length (see :func:`grpo.data.reward_fields`) or
    scalars, passed to every function as keywords. A function that raises, returns the
    wrong number of values, or a value that is not a finite real number raises :class:`RewardError`
    naming it, the sample index and excerpts of that sample's prompt and completion (a raise is chained);
    with ``on_error="zero"`` those samples score 0 for that function and are counted in ``errors``
    (a raising batch is re-run sample by sample so only the failing ones are zeroed; a wrong-length
    result zeroes and counts the whole batch).
    """
    return RewardSet(specs, on_error=on_error)(prompts, completions, fields, **more_fields)
