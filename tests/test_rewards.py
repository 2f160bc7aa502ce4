"""grpo.rewards: built-in rewards on hand-written and adversarial cases, the registry, weighted scoring
and error reporting."""
import math
import threading
import time

import pytest

from grpo import rewards as R
from grpo.rewards import (RewardError, RewardSet, RewardSpec, accuracy, contains, countdown, format_soft,
                          format_strict, get_reward, overlong, register_reward, safe_eval_arithmetic, score)


def wrap(answer, think="let me think"):
    return f"<think> {think} </think> <answer> {answer} </answer>"


def conv(text):
    return [{"role": "assistant", "content": text}]


def run(fn, completions, **fields):
    return fn(["p"] * len(completions), completions, **fields)


# ------------------------------------------------------------------------------------- accuracy
def test_accuracy_right_wrong_and_malformed():
    cases = [
        (wrap("42"), "42", 1.0),
        (wrap(" 42. "), "42", 1.0),
        (wrap("$42$"), "42", 1.0),
        (wrap("1,000"), "1000", 1.0),
        (wrap("-7"), "-7", 1.0),
        (wrap("41"), "42", 0.0),
        (wrap(r"\boxed{42}"), "42", 1.0),           # math_verify path
        (wrap(r"\frac{1}{2}"), "0.5", 1.0),
        (wrap("0.5"), r"\frac{1}{2}", 1.0),
        (wrap("42 apples"), "42", 1.0),
        ("<think> x </think> 42", "42", 0.0),        # no answer tags
        ("<think> x </think> <answer> 42", "42", 0.0),  # unclosed
        (wrap(""), "42", 0.0),                       # empty answer
        ("<answer><answer> 42 </answer></answer>", "42", 1.0),  # nested: innermost of the last
        (wrap("1") + " " + wrap("42"), "42", 1.0),   # the last answer counts
        (wrap("42") + " " + wrap("1"), "42", 0.0),
    ]
    got = run(accuracy, [c for c, _, _ in cases], answer=[g for _, g, _ in cases])
    assert got == [want for _, _, want in cases], [(c, w, g) for (c, _, w), g in zip(cases, got) if w != g]


def test_accuracy_adversarial_is_fast_and_zero():
    bad = ["__import__('os').system('echo hi')", "2**99999999", "3^3^3^3", "10^{10^{10}}", "99999999!",
           "1/0", "9" * 5000, "x" * 100_000, "∑∫√ 🙂", "\\frac{1}{0}", "nan", "inf", "None"]
    t0 = time.perf_counter()
    got = run(accuracy, [wrap(b) for b in bad] + ["<answer>" * 50_000 + "</answer>" * 50_000],
              answer=["42"] * (len(bad) + 1))
    assert got == [0.0] * (len(bad) + 1)
    assert time.perf_counter() - t0 < 5.0


def test_accuracy_conversational_and_plain_mode():
    comps = [conv(wrap("12")), [{"role": "user", "content": "q"}, {"role": "assistant", "content": wrap("3")}],
             [{"role": "assistant", "content": [{"type": "text", "text": wrap("12")}]}]]
    assert run(accuracy, comps, answer=["12", "12", "12"]) == [1.0, 0.0, 1.0]
    assert run(accuracy, ["12", "The answer is 12"], answer=["12", "12"]) == [0.0, 0.0]
    assert run(accuracy, ["12", wrap("12")], answer=["12", "12"], require_tags=False) == [1.0, 1.0]


def test_accuracy_off_main_thread():
    out = {}

    def work():
        try:
            out["v"] = run(accuracy, [wrap(r"\frac{2}{4}"), wrap("7"), wrap("3^3^3^3")],
                           answer=["0.5", "8", "1"])
        except Exception as e:  # noqa: BLE001 - reported below
            out["e"] = e

    t = threading.Thread(target=work)
    t.start()
    t.join(30)
    assert "e" not in out, out.get("e")
    assert out["v"] == [1.0, 0.0, 0.0]


# --------------------------------------------------------------------------------------- format
def test_format_rewards():
    cases = [  # (completion, strict, soft)
        (wrap("42"), 1.0, 1.0),
        ("\n<think>\nhm\n</think>\n\n<answer>\n42\n</answer>\n", 1.0, 1.0),
        ("<think>a</think><answer>42</answer>", 1.0, 1.0),
        ("Sure! " + wrap("42"), 0.0, 1.0),               # text before
        (wrap("42") + " done", 0.0, 1.0),                # text after
        ("<think>a</think> so <answer>42</answer>", 0.0, 1.0),  # text between
        (wrap(""), 0.0, 1.0),                            # empty answer
        ("<think>a</think>", 0.0, 0.0),                  # missing answer
        ("<answer>42</answer>", 0.0, 0.0),               # missing think
        ("<think>a <answer>42</answer>", 0.0, 0.0),      # unclosed think
        ("<think>a</think> <answer>42", 0.0, 0.0),       # unclosed answer
        ("<answer>42</answer> <think>a</think>", 0.0, 0.0),  # wrong order
        ("<think><think>a</think></think><answer>4</answer>", 0.0, 1.0),  # nested
        ("<think>a</think><answer><answer>4</answer></answer>", 0.0, 1.0),
        (wrap("1") + wrap("2"), 0.0, 1.0),               # two answers
        ("", 0.0, 0.0),
        ("<think> ∑ 🙂 </think><answer> ½ </answer>", 1.0, 1.0),
    ]
    comps = [c for c, _, _ in cases]
    assert run(format_strict, comps) == [s for _, s, _ in cases]
    assert run(format_soft, comps) == [s for _, _, s in cases]
    assert run(format_strict, [conv(c) for c in comps]) == [s for _, s, _ in cases]


def test_format_long_strings_linear():
    long = "<think>" + "</think><answer>" * 200_000
    t0 = time.perf_counter()
    assert run(format_strict, [long]) == [0.0] and run(format_soft, [long]) == [0.0]
    assert time.perf_counter() - t0 < 1.0


# ------------------------------------------------------------------------------------ countdown
def test_countdown_cases():
    nums, tgt = [3, 5, 7], 22
    cases = [
        (wrap("3 * 5 + 7"), 1.0),
        (wrap("(7 + 5) * 3 - 14"), 0.0),     # 14 not given
        (wrap("7 * 3 + 5 - 5"), 0.0),        # 5 twice
        (wrap("3 * 5 + 7 = 22"), 1.0),       # "= target" accepted
        (wrap("3 * 5 + 7 = 23"), 0.0),
        (wrap("3 × 5 + 7"), 1.0),            # unicode operators
        (wrap("3 * 5 - 7"), 0.0),            # wrong value
        (wrap("5 * 3"), 0.0),                # not all numbers (TinyZero: exactly once)
        (wrap("__import__('os')"), 0.0),
        (wrap("2**99999999"), 0.0),
        (wrap("3 ** 5 + 7"), 0.0),
        (wrap("7 / (5 - 5) + 3"), 0.0),      # division by zero (and 5 twice)
        (wrap("3.0 * 5 + 7"), 0.0),          # floats are not given numbers
        (wrap("(" * 5000 + "3" + ")" * 5000), 0.0),
        (wrap("9" * 10_000), 0.0),
        (wrap(""), 0.0),
        ("3 * 5 + 7", 0.0),                  # no tags
        (wrap("-3 * -5 + 7"), 1.0),          # unary minus
        (wrap("((3) * (5)) + (7)"), 1.0),
    ]
    got = run(countdown, [c for c, _ in cases], numbers=[nums] * len(cases), target=[tgt] * len(cases))
    assert got == [w for _, w in cases], [(c, w, g) for (c, w), g in zip(cases, got) if w != g]


def test_countdown_parameters():
    comps = [wrap("5 * 4"), wrap("5 * 4 * 1"), wrap("5 * 5"), "no tags"]
    f = dict(numbers=[[5, 4, 1]] * 4, target=[20] * 4)
    assert run(countdown, comps, **f) == [0.0, 1.0, 0.0, 0.0]
    assert run(countdown, comps, use_all=False, **f) == [1.0, 1.0, 0.0, 0.0]
    assert run(countdown, comps, format_score=0.1, **f) == [0.1, 1.0, 0.1, 0.0]
    assert run(countdown, [wrap("6 / 4 * 2")], numbers=[[6, 4, 2]], target=[3]) == [1.0]  # exact fractions


def test_safe_eval_whitelist():
    assert safe_eval_arithmetic("(1 + 2) * 3 - 4 / 2") == 7
    for bad in ["__import__('os')", "a + 1", "2 ** 3", "1 / 0", "abs(-1)", "1 if 1 else 2", "[1]", "1e9",
                "0x10", "1_000", "", "lambda: 1", "(" * 10_000 + "1" + ")" * 10_000]:
        assert safe_eval_arithmetic(bad) is None, bad


# -------------------------------------------------------------------------------- length, contains
def test_overlong():
    got = run(overlong, ["x"] * 6, completion_lengths=[10, 80, 81, 90, 100, 150],
              max_completion_length=100, overlong_buffer=20)
    assert got == [0.0, 0.0, -1 / 20, -0.5, -1.0, -1.0]
    with pytest.raises(ValueError, match="completion_lengths"):
        run(overlong, ["x"], max_completion_length=100, overlong_buffer=20)
    with pytest.raises(ValueError, match="overlong_buffer"):
        run(overlong, ["x"], completion_lengths=[1], max_completion_length=100, overlong_buffer=0)


def test_contains():
    assert run(contains, ["hello world", conv("HELLO"), "x"], target_text="hello") == [1.0, 0.0, 0.0]
    assert run(contains, ["ab", "cd"], target_text=["a", "a"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="target_text"):
        run(contains, ["x"])


# -------------------------------------------------------------------------------------- registry
def test_registry_and_user_functions(tmp_path, monkeypatch):
    assert get_reward("accuracy") is accuracy
    assert get_reward("grpo.rewards:contains") is contains
    assert get_reward(len) is len
    assert set(R.REWARDS) >= {"accuracy", "format_strict", "format_soft", "countdown", "overlong", "contains"}
    (tmp_path / "my_rewards_mod.py").write_text(
        "def shout(prompts, completions, **kw):\n    return [float(c.isupper()) for c in completions]\n"
        "class Holder:\n    @staticmethod\n    def short(prompts, completions, **kw):\n"
        "        return [float(len(c) < 3) for c in completions]\n"
        "NOT_CALLABLE = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert run(get_reward("my_rewards_mod:shout"), ["AB", "ab"]) == [1.0, 0.0]
    assert run(get_reward("my_rewards_mod:Holder.short"), ["AB", "abc"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="cannot import module 'no_such_mod_xyz'"):
        get_reward("no_such_mod_xyz:f")
    with pytest.raises(ValueError, match="has no attribute 'missing'"):
        get_reward("my_rewards_mod:missing")
    with pytest.raises(ValueError, match="not a callable"):
        get_reward("my_rewards_mod:NOT_CALLABLE")
    with pytest.raises(ValueError, match="unknown reward 'nope'.*accuracy"):
        get_reward("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_reward("accuracy")(lambda prompts, completions, **kw: [0.0] * len(completions))


# --------------------------------------------------------------------------------------- scoring
COMPS = [wrap("4"), wrap("5"), "4", "<think>a</think><answer>4</answer> extra"]
FIELDS = dict(answer=["4"] * 4, completion_lengths=[10, 95, 1, 100])


def test_score_weighted_sum():
    res = score(["accuracy", RewardSpec("format_strict", weight=0.5),
                 {"name": "overlong", "weight": 2.0, "kwargs": {"max_completion_length": 100, "overlong_buffer": 10}},
                 RewardSpec("contains", kwargs={"target_text": "4"}), RewardSpec("contains", kwargs={"target_text": "5"})],
                ["p"] * 4, COMPS, **FIELDS)
    assert res.per_function["accuracy"] == [1.0, 0.0, 0.0, 1.0]
    assert res.per_function["format_strict"] == [1.0, 1.0, 0.0, 0.0]
    assert res.per_function["overlong"] == [0.0, -0.5, 0.0, -1.0]
    assert res.per_function["contains"] == [1.0, 0.0, 1.0, 1.0] and res.per_function["contains#2"] == [0.0, 1.0, 0.0, 0.0]
    want = [1 + 0.5 + 0 + 1, 0 + 0.5 - 1 + 1, 0 + 0 + 0 + 1, 1 + 0 - 2 + 1]
    assert res.total == pytest.approx(want) and res.errors == {}
    by_dict = score(["accuracy", "format_strict"], ["p"] * 4, COMPS, dict(FIELDS))  # the engine's call form
    assert by_dict.per_function["accuracy"] == res.per_function["accuracy"]
    with pytest.raises(ValueError, match="given twice"):
        score(["accuracy"], ["p"] * 4, COMPS, dict(FIELDS), answer=["4"] * 4)
    m = res.metrics()
    assert m["rewards/accuracy/mean"] == 0.5 and m["rewards/total/mean"] == pytest.approx(sum(want) / 4)


def flaky(prompts, completions, **kw):
    if any("boom" in c for c in completions):
        raise KeyError("boom seen")
    return [1.0] * len(completions)


def test_raising_reward_names_function_and_sample():
    comps = ["fine", "also fine", "kaboom here", "fine"]
    with pytest.raises(RewardError) as info:
        score([flaky], ["prompt A", "prompt B", [{"role": "user", "content": "prompt C"}], "prompt D"], comps)
    e = info.value
    assert e.reward == "flaky" and e.index == 2
    assert "'flaky'" in str(e) and "sample 2" in str(e) and "prompt C" in str(e) and "kaboom here" in str(e)
    assert isinstance(e.__cause__, KeyError)


def test_bad_values_raise():
    def nan_at_1(prompts, completions, **kw):
        return [0.0, math.nan, 1.0]

    def short(prompts, completions, **kw):
        return [0.0]

    def text(prompts, completions, **kw):
        return [0.0, 1.0, "1"]

    for fn, where in [(nan_at_1, "sample 1"), (short, "the batch"), (text, "sample 2")]:
        with pytest.raises(RewardError, match=where) as info:
            score([fn], ["p"] * 3, ["a", "b", "c" * 1000])
        assert info.value.reward == fn.__name__
    with pytest.raises(RewardError, match="returned a float for 1 completions"):
        score([lambda p, c, **k: 1.0], ["p"], ["a"])
    with pytest.raises(ValueError, match="weight must be a finite number"):
        RewardSet([RewardSpec("accuracy", weight=math.nan)])
    with pytest.raises(RewardError, match="non-finite inf"):
        score([lambda p, c, **k: [math.inf] * len(c)], ["p"], ["a"])


def test_on_error_zero_counts():
    comps = ["fine", "boom", "fine", "boom"]
    res = score(["format_soft", RewardSpec(flaky, weight=2.0)], ["p"] * 4, comps, on_error="zero")
    assert res.per_function["flaky"] == [1.0, 0.0, 1.0, 0.0] and res.errors == {"flaky": 2}
    assert res.total == [2.0, 0.0, 2.0, 0.0] and res.metrics()["rewards/flaky/errors"] == 2.0

    def nan_at_0(prompts, completions, **kw):
        return [math.nan] + [1.0] * (len(completions) - 1)

    res = score([nan_at_0], ["p"] * 3, ["a", "b", "c"], on_error="zero")
    assert res.per_function["nan_at_0"] == [0.0, 1.0, 1.0] and res.errors == {"nan_at_0": 1}
    res = score([RewardSpec(lambda p, c, **k: [1.0], label="one")], ["p"] * 3, ["a", "b", "c"], on_error="zero")
    assert res.per_function["one"] == [0.0, 0.0, 0.0] and res.errors == {"one": 3}
    np = pytest.importorskip("numpy")
    res = score([lambda p, c, **k: np.array([0.5] * len(c))], ["p"] * 2, ["a", "b"])
    assert res.total == [0.5, 0.5]


def test_score_checks_batch_shapes():
    with pytest.raises(ValueError, match="field 'answer' has 1 entries for 2"):
        score(["accuracy"], ["p", "p"], ["a", "b"], answer=["1"])
    with pytest.raises(ValueError, match="1 prompts for 2 completions"):
        score(["accuracy"], ["p"], ["a", "b"], answer=["1", "1"])
    with pytest.raises(ValueError, match="on_error"):
        RewardSet(["accuracy"], on_error="ignore")
    with pytest.raises(ValueError, match="unknown reward"):
        RewardSet(["nope"])
    # a missing per-sample field is the function's error, reported like any raise
    with pytest.raises(RewardError, match="countdown"):
        score(["countdown"], ["p"], [wrap("1 + 2")], numbers=[None], target=[3])


def test_extract_answer():
    assert R.extract_answer("<answer><answer> 5 </answer></answer>") == "5"
    assert R.extract_answer("<answer>1</answer> x <answer> 2 </answer> <answer>3") == "2"
    assert R.extract_answer("<answer> </answer>") == ""
    assert R.extract_answer("no tags") is None and R.extract_answer("</answer><answer>") is None
