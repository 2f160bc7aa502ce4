"""grpo.data: procedural tasks, templates, JSONL loading/saving, length filter, prompt stream, splits."""
import json
import subprocess
import sys

import pytest

from grpo import data
from grpo.data import (DataError, Example, PromptStream, SkippedPrompt, arithmetic, countdown, filter_prompts,
                       load_jsonl, make_dataset, reward_fields, save_jsonl, train_eval_split)
from grpo.rewards import countdown as countdown_reward
from grpo.rewards import safe_eval_arithmetic

LEVELS = {"arithmetic": range(4), "countdown": range(4)}


def test_imports_no_torch():
    code = "import sys, grpo.data, grpo.rewards; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("task", sorted(LEVELS))
def test_generators_reproducible_by_seed(task):
    gen = data.TASKS[task]
    for level in LEVELS[task]:
        a, b = gen(50, 7, level), gen(50, 7, level)
        assert a == b
        assert [e.question for e in gen(50, 8, level)] != [e.question for e in a]
        assert len({e.id for e in a}) == 50


def test_generators_use_no_global_rng():
    import random
    random.seed(1)
    before = random.random()
    random.seed(1)
    arithmetic(20, 0, 3)
    countdown(20, 0, 3)
    assert random.random() == before


def test_arithmetic_answers_correct():
    for level in range(4):
        for ex in arithmetic(200, 3, level):
            expr = ex.fields["expression"]
            assert safe_eval_arithmetic(expr) == int(ex.answer), (ex.question, expr, ex.answer)
            assert int(ex.answer) >= 0
            assert ex.fields["level"] == level and ex.task == "arithmetic"
            if level < 3:
                assert ex.question == f"What is {expr}?"


def test_arithmetic_levels_differ():
    l0, l1, l2, l3 = (arithmetic(300, 0, lv) for lv in range(4))
    for ex in l0:  # one-digit additions without carry
        a, b = (int(x) for x in ex.fields["expression"].split(" + "))
        assert 1 <= a <= 9 and 1 <= b <= 9 and a + b <= 9
    assert any("-" in e.question for e in l1) and max(int(e.answer) for e in l1) > 9
    assert all("*" in e.fields["expression"] for e in l2)
    assert all(len(e.question) > 60 and e.question.endswith("?") for e in l3)
    assert all(len(e.fields["expression"].split()) == 5 for e in l3)  # two operations: multi-step
    qs = [{e.question for e in lv} for lv in (l0, l1, l2, l3)]
    assert all(not (qs[i] & qs[j]) for i in range(4) for j in range(i + 1, 4))


def test_countdown_targets_reachable_and_accepted():
    for level in range(4):
        exs = countdown(100, 5, level)
        for ex in exs:
            nums, target, sol = ex.fields["numbers"], ex.fields["target"], ex.fields["solution"]
            assert len(nums) == (3 if level < 2 else 4)
            assert isinstance(target, int) and target >= 1 and ex.answer == str(target)
            assert safe_eval_arithmetic(sol) == target
            assert sorted(int(t) for t in sol.replace("(", " ").replace(")", " ").split() if t.isdigit()) == sorted(nums)
            assert str(nums) in ex.question and str(target) in ex.question
        comps = [f"<think> ok </think> <answer> {ex.fields['solution']} </answer>" for ex in exs]
        fields = reward_fields(exs)
        assert countdown_reward([e.prompt for e in exs], comps, **fields) == [1.0] * len(exs)
    assert max(max(e.fields["numbers"]) for e in countdown(100, 5, 3)) > 30  # level 3 uses bigger numbers


def test_mixed_levels_interleave():
    exs = arithmetic(9, 1, [0, 2, 3])
    assert [e.fields["level"] for e in exs] == [0, 2, 3] * 3
    assert exs == arithmetic(9, 1, [0, 2, 3])
    with pytest.raises(ValueError, match="levels 0..3"):
        arithmetic(3, 0, 7)
    with pytest.raises(ValueError, match="level must be"):
        arithmetic(3, 0, [])


def test_templates():
    r1 = data.apply_template("r1", "What is 1 + 1?")
    assert [m["role"] for m in r1] == ["system", "user"] and r1[1]["content"] == "What is 1 + 1?"
    sp = r1[0]["content"]
    assert "<think>" in sp and "</answer>" in sp and len(sp) < 400
    assert data.apply_template("plain", "Q?") == [{"role": "user", "content": "Q?"}]
    assert arithmetic(1, 0, 0, template="plain")[0].prompt[0]["role"] == "user"
    with pytest.raises(ValueError, match="unknown prompt template 'nope'.*plain"):
        arithmetic(1, 0, 0, template="nope")


def _write_lines(path, lines):
    with open(path, "wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else line.encode() + b"\n")
    return path


BAD_FILE = [
    '{"question": "What is 2 + 2?", "answer": "4", "source": "hand"}',  # 1 ok, extra column
    '{"question": "What is 3 + 3?", "answer": ',                     # 2 bad JSON
    '{"question": "What is 4 + 4?"}',                                 # 3 missing answer
    '{"question": "   ", "answer": "1"}',                             # 4 empty question
    '{"question": "Q", "answer": [1, 2]}',                            # 5 wrong answer type
    '[1, 2, 3]',                                                      # 6 not an object
    '',                                                               # 7 blank: ignored
    '{"id": "a", "question": "Q1", "answer": 7}',                     # 8 ok, numeric answer
    '{"id": "a", "question": "Q2", "answer": "8"}',                   # 9 duplicate id
    b'{"question": "caf\xe9", "answer": "1"}\n',                      # 10 not UTF-8
    '{"question": 12, "answer": "1"}',                                # 11 question not a string
    '{"question": "Q3", "answer": ""}',                               # 12 empty answer
    '{"question": "Q4", "answer": NaN}',                              # 13 non-finite answer
]


def test_load_jsonl_reports_every_bad_line(tmp_path):
    path = _write_lines(tmp_path / "bad.jsonl", BAD_FILE)
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    bad_lines = [no for no, _ in info.value.problems]
    assert bad_lines == [2, 3, 4, 5, 6, 9, 10, 11, 12, 13]
    msg = str(info.value)
    for no in bad_lines:
        assert f"line {no}:" in msg
    assert "line 1:" not in msg and "line 8:" not in msg
    assert "missing field 'answer'" in msg and "duplicate id 'a' (first on line 8)" in msg
    assert isinstance(info.value, ValueError)


def test_load_jsonl_skip_mode(tmp_path):
    path = _write_lines(tmp_path / "bad.jsonl", BAD_FILE)
    exs, problems = load_jsonl(path, on_error="skip")
    assert [p[0] for p in problems] == [2, 3, 4, 5, 6, 9, 10, 11, 12, 13]
    assert [e.question for e in exs] == ["What is 2 + 2?", "Q1"]
    assert exs[0].fields == {"source": "hand"} and exs[0].id == "bad:1" and exs[0].task == "jsonl"
    assert exs[1].answer == "7" and exs[1].id == "a"
    assert exs[0].prompt == data.apply_template("r1", "What is 2 + 2?")


def test_load_jsonl_limits_listed_problems(tmp_path):
    path = _write_lines(tmp_path / "many.jsonl", ["{oops"] * 30)
    with pytest.raises(DataError) as info:
        load_jsonl(path)
    assert len(info.value.problems) == 30 and "... and 10 more" in str(info.value)


def test_load_jsonl_custom_fields_and_conversational(tmp_path):
    rows = [{"problem": "Find x.", "solution": 3, "difficulty": "easy"},
            {"prompt": [{"role": "user", "content": "Hi?"}], "solution": "5"}]
    path = _write_lines(tmp_path / "c.jsonl", [json.dumps(r) for r in rows])
    exs, problems = load_jsonl(path, question_field="problem", answer_field="solution", task="mine",
                               template="plain")
    assert not problems
    assert exs[0].question == "Find x." and exs[0].answer == "3" and exs[0].fields == {"difficulty": "easy"}
    assert exs[0].prompt == [{"role": "user", "content": "Find x."}] and exs[0].task == "mine"
    assert exs[1].prompt == rows[1]["prompt"] and exs[1].question == "Hi?"
    bad = _write_lines(tmp_path / "d.jsonl", [json.dumps({"prompt": "not messages", "answer": "1"})])
    with pytest.raises(DataError, match="line 1: field 'prompt'"):
        load_jsonl(bad)


def test_save_load_round_trip(tmp_path):
    exs = arithmetic(20, 0, [0, 3]) + countdown(20, 0, 2)
    exs.append(Example(id="u", prompt=[{"role": "user", "content": "Ünïcode ∑ 🙂?"}], answer="½", task="t",
                       fields={"nested": {"a": [1, 2]}}, question="Ünïcode ∑ 🙂?"))
    path = tmp_path / "sub" / "out.jsonl"
    save_jsonl(exs, path)
    back, problems = load_jsonl(path)
    assert back == exs and not problems
    save_jsonl(exs[:3], path)  # overwrite in place
    assert load_jsonl(path)[0] == exs[:3]
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.jsonl"]  # no temp file left


def test_filter_prompts_skips_and_reports():
    exs = arithmetic(5, 0, 0, template="plain") + arithmetic(5, 0, 3, template="plain")

    def encode(messages):
        return [0] * sum(len(m["content"].split()) for m in messages)

    kept, skipped = filter_prompts(exs, encode, 10)
    assert kept == exs[:5]
    assert [s.id for s in skipped] == [e.id for e in exs[5:]]
    assert all(isinstance(s, SkippedPrompt) and s.length > 10 and s.limit == 10 for s in skipped)
    assert all(s.length == len(encode(e.prompt)) for s, e in zip(skipped, exs[5:]))
    assert kept[0].prompt == exs[0].prompt  # never truncated
    assert filter_prompts(exs, None, None) == (exs, [])


def test_prompt_stream_epochs_and_resume():
    exs = arithmetic(10, 0, 1)
    s = PromptStream(exs, seed=3)
    first_epoch = s.next_batch(4) + s.next_batch(4) + s.next_batch(2)
    assert sorted(e.id for e in first_epoch) == sorted(e.id for e in exs)  # each once per epoch
    assert [e.id for e in first_epoch] != [e.id for e in exs]  # shuffled
    s.next_batch(3)
    state = json.loads(json.dumps(s.state_dict()))  # checkpoints store it as JSON
    expected = [s.next_batch(4) for _ in range(6)]  # crosses epoch boundaries
    resumed = PromptStream(exs, seed=999)
    resumed.load_state_dict(state)
    assert [resumed.next_batch(4) for _ in range(6)] == expected
    again = PromptStream(exs, seed=3)
    assert again.next_batch(10) == first_epoch  # same seed, same order
    assert PromptStream(exs, seed=4).next_batch(10) != first_epoch
    assert len(PromptStream(exs).next_batch(25)) == 25  # P larger than the data
    with pytest.raises(ValueError, match="different examples"):
        PromptStream(exs[:9]).load_state_dict(state)
    with pytest.raises(ValueError):
        s.next_batch(0)


def test_train_eval_split_disjoint():
    exs = arithmetic(300, 0, [0, 1])  # level 0 repeats questions: they must not straddle the split
    train, held = train_eval_split(exs, eval_size=40, seed=1)
    assert len(train) + len(held) == len(exs) and 0 < len(held) <= 40
    assert not {e.id for e in train} & {e.id for e in held}
    assert not {e.question for e in train} & {e.question for e in held}
    assert train_eval_split(exs, eval_size=40, seed=1) == (train, held)
    assert train_eval_split(exs, eval_size=40, seed=2)[1] != held
    uniq = countdown(100, 0, 3)
    tr, ev = train_eval_split(uniq, eval_fraction=0.2, seed=0)
    assert len(ev) == 20 and len(tr) == 80 and not {e.question for e in tr} & {e.question for e in ev}
    assert train_eval_split(uniq) == (uniq, [])
    with pytest.raises(ValueError):
        train_eval_split(uniq, eval_size=100)
    with pytest.raises(ValueError):
        train_eval_split(uniq, eval_size=1, eval_fraction=0.1)


def test_make_dataset(tmp_path):
    assert make_dataset("countdown", n=7, seed=2, level=1) == countdown(7, 2, 1)
    assert len(make_dataset("arithmetic")) == 1000
    path = tmp_path / "d.jsonl"
    save_jsonl(arithmetic(10, 0, 2), path)
    assert make_dataset(str(path), n=4) == arithmetic(10, 0, 2)[:4]
    bad = _write_lines(tmp_path / "bad.jsonl", BAD_FILE)
    assert len(make_dataset(str(bad), on_error="skip")) == 2
    with pytest.raises(DataError):
        make_dataset(str(bad))
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        make_dataset("nope")


def test_reward_fields_repeat():
    exs = countdown(2, 0, 0)
    f = reward_fields(exs, repeat=3)
    assert f["answer"] == [exs[0].answer] * 3 + [exs[1].answer] * 3
    assert f["numbers"][3] == exs[1].fields["numbers"] and len(f["target"]) == 6
    mixed = reward_fields(arithmetic(1, 0, 0) + countdown(1, 0, 0))
    assert mixed["numbers"][0] is None and mixed["expression"][1] is None
