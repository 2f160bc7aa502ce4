"""Procedural verifiable tasks for GRPO, registered by name and reproducible by seed: arithmetic (levels
0-3, from one-digit sums without carries to short word problems) and Countdown (as TinyZero: reach a
target from given numbers with + - * /, each used once). Standard library only."""
from __future__ import annotations

import random
from typing import Callable, Sequence

from .data import Example, get_template

# A task item function draws one (question, answer, fields) from a random.Random at a difficulty level.
TaskFn = Callable[..., list[Example]]
TASKS: dict[str, TaskFn] = {}


def register_task(name: str):
    """Registers a generator ``fn(n, seed=0, level=0, *, template="r1") -> list[Example]``."""
    def deco(fn):
        TASKS[name] = fn
        return fn
    return deco


def _levels(level) -> list[int]:
    levels = [level] if isinstance(level, int) else list(level)
    if not levels or not all(isinstance(lv, int) and not isinstance(lv, bool) for lv in levels):
        raise ValueError(f"level must be an int or a non-empty list of ints, got {level!r}")
    return levels


def _generate(task: str, item_fns: Sequence[Callable], n: int, seed: int, level, template: str) -> list[Example]:
    """n examples of ``task``; a list of levels interleaves them (a curriculum mix: item i uses
    levels[i % len(levels)]), each level drawing from its own seeded stream so the mix is reproducible."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    levels = _levels(level)
    for lv in levels:
        if not 0 <= lv < len(item_fns):
            raise ValueError(f"task {task!r} has levels 0..{len(item_fns) - 1}, got {lv}")
    fmt = get_template(template)
    # A string seed is hashed deterministically (sha512) by random.Random: independent streams per
    # (task, seed, level) without touching the global RNG.
    rngs = {lv: random.Random(f"grpo:{task}:{seed}:{lv}") for lv in set(levels)}
    out = []
    for i in range(n):
        lv = levels[i % len(levels)]
        question, answer, fields = item_fns[lv](rngs[lv])
        fields["level"] = lv
        out.append(Example(id=f"{task}-l{lv}-s{seed}-{i:06d}", prompt=fmt(question), answer=str(answer),
                           task=task, fields=fields, question=question))
    return out


def _arith_l0(rng: random.Random):
    a = rng.randint(1, 8)
    b = rng.randint(1, 9 - a)  # a + b <= 9: one digit, no carry
    return f"What is {a} + {b}?", a + b, {"expression": f"{a} + {b}"}


def _arith_l1(rng: random.Random):
    a, b = rng.randint(1, 99), rng.randint(1, 99)
    if rng.random() < 0.5:
        return f"What is {a} + {b}?", a + b, {"expression": f"{a} + {b}"}
    a, b = max(a, b), min(a, b)  # keep results non-negative
    return f"What is {a} - {b}?", a - b, {"expression": f"{a} - {b}"}


def _arith_l2(rng: random.Random):
    a, b, c = rng.randint(10, 99), rng.randint(2, 9), rng.randint(1, 99)
    forms = [
        (f"{a} * {b}", a * b),
        (f"{a} * {b} + {c}", a * b + c),
        (f"{c} + {a} * {b}", c + a * b),
        (f"({a} + {c}) * {b}", (a + c) * b),
        (f"{a} * {b} - {min(c, a * b)}", a * b - min(c, a * b)),  # non-negative results
    ]
    expr, value = rng.choice(forms)
    return f"What is {expr}?", value, {"expression": expr}


_NAMES = ["Tom", "Sara", "Ali", "Mia", "Ben", "Lena", "Omar", "Yuki", "Ravi", "Emma"]
_ITEMS = ["apples", "marbles", "stickers", "cookies", "pencils", "cards", "stamps", "shells"]


# Two-step word problems: (question, expression, value) over a in 2..20, b in 2..9, c in 2..a (so every
# result is a positive integer); ab is a * b, for the equal-sharing problem.
_WORD_PROBLEMS = [
    ("{name} has {a} {item}, buys {b} more, and then gives {c} to a friend. How many {item} does {name} "
     "have now?", "{a} + {b} - {c}", lambda a, b, c: a + b - c),
    ("A box holds {a} {item}. {name} buys {b} boxes and gives away {c} {item}. How many {item} does "
     "{name} have left?", "{a} * {b} - {c}", lambda a, b, c: a * b - c),
    ("{name} reads {a} pages every day for {b} days and then {c} more pages. How many pages does {name} "
     "read in total?", "{a} * {b} + {c}", lambda a, b, c: a * b + c),
    ("{name} has {ab} {item} and shares them equally among {b} friends. Then each friend gets {c} more. "
     "How many {item} does each friend have?", "{ab} / {b} + {c}", lambda a, b, c: a + c),
    ("A pen costs {a} dollars and a notebook costs {c} dollars. {name} buys {b} pens and one notebook. "
     "How many dollars does {name} spend?", "{a} * {b} + {c}", lambda a, b, c: a * b + c),
]


def _arith_l3(rng: random.Random):
    question, expr, value = rng.choice(_WORD_PROBLEMS)
    a, b = rng.randint(2, 20), rng.randint(2, 9)
    v = {"a": a, "b": b, "c": rng.randint(2, a), "ab": a * b, "name": rng.choice(_NAMES), "item": rng.choice(_ITEMS)}
    return question.format(**v), value(a, b, v["c"]), {"expression": expr.format(**v)}


@register_task("arithmetic")
def arithmetic(n: int, seed: int = 0, level=0, *, template: str = "r1") -> list[Example]:
    """Integer arithmetic; the answer is the integer as a string, ``fields["expression"]`` the sum.

    level 0: one-digit additions without carry (sum <= 9); 1: one/two-digit additions and subtractions
    (non-negative results); 2: two-digit numbers with a multiplication; 3: short multi-step word problems.
    ``level`` may be a list of levels (interleaved mix).
    """
    return _generate("arithmetic", [_arith_l0, _arith_l1, _arith_l2, _arith_l3], n, seed, level, template)


# countdown levels: (how many numbers, largest number, operators, largest target)
_COUNTDOWN_LEVELS = [
    (3, 10, "+-", 30),
    (3, 20, "+-*/", 100),
    (4, 30, "+-*/", 100),
    (4, 99, "+-*/", 100),  # TinyZero's Countdown-Tasks-3to4 range
]


def _combine(rng: random.Random, a, b, ops: str):
    """One random valid (value, text) from two (value, text) nodes, or None; keeps every intermediate
    a non-negative integer so targets are reachable with integer steps."""
    op = rng.choice(ops)
    (va, sa), (vb, sb) = a, b
    if op in "-/" and va < vb:
        (va, sa), (vb, sb) = (vb, sb), (va, sa)
    if op == "+":
        return va + vb, f"({sa} + {sb})"
    if op == "-":
        return va - vb, f"({sa} - {sb})"
    if op == "*":
        return va * vb, f"({sa} * {sb})"
    if vb == 0 or va % vb:
        return None
    return va // vb, f"({sa} / {sb})"


def _countdown_item(rng: random.Random, count: int, hi: int, ops: str, max_target: int):
    for _ in range(1000):  # a few tries suffice in practice; bounded so a bad level cannot hang
        numbers = [rng.randint(1, hi) for _ in range(count)]
        nodes = [(v, str(v)) for v in numbers]
        while len(nodes) > 1:
            i, j = rng.sample(range(len(nodes)), 2)
            merged = _combine(rng, nodes[i], nodes[j], ops)
            if merged is None:
                break
            nodes = [nd for k, nd in enumerate(nodes) if k not in (i, j)] + [merged]
        if len(nodes) == 1 and 1 <= nodes[0][0] <= max_target:
            target, text = nodes[0]
            solution = text[1:-1] if text.startswith("(") else text
            question = (f"Using the numbers {numbers}, create an equation that equals {target}. You can use "
                        f"+, -, * and / and each number exactly once. Put the equation in <answer> </answer> "
                        f"tags, for example <answer> (1 + 2) / 3 </answer>.")
            return question, target, {"numbers": numbers, "target": target, "solution": solution}
    raise RuntimeError(f"countdown: no target found for level {(count, hi, ops, max_target)}")


@register_task("countdown")
def countdown(n: int, seed: int = 0, level=0, *, template: str = "r1") -> list[Example]:
    """TinyZero's Countdown: reach ``target`` from ``numbers`` with + - * /, each number used once.

    Every target is built from a random expression over all the numbers (integer steps), so it is
    always reachable; that expression is ``fields["solution"]``. ``answer`` is the target as a string.
    level 0: 3 numbers <= 10 (+ and - only), target <= 30; 1: 3 numbers <= 20; 2: 4 numbers <= 30;
    3: 4 numbers <= 99 (targets <= 100, as TinyZero).
    """
    fns = [lambda rng, spec=spec: _countdown_item(rng, *spec) for spec in _COUNTDOWN_LEVELS]
    return _generate("countdown", fns, n, seed, level, template)
