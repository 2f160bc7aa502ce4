"""Checkpoints: atomic (a save killed midway leaves the previous checkpoint loadable and no partial
folder under a checkpoint name), pruned to the last K, and a load restores weights, optimizer,
scheduler and RNG states exactly."""
import random

import pytest
import torch

from grpo import checkpoint


def _setup(seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def _step(model, opt, sched):
    loss = model(torch.randn(5, 4)).square().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()


def test_save_load_roundtrip_and_rng(tmp_path):
    """Save after step 1, continue to step 2; a fresh model loading the checkpoint and taking step 2
    (its batch drawn from the restored RNG) ends with exactly the same weights."""
    model, opt, sched = _setup()
    _step(model, opt, sched)
    checkpoint.save_checkpoint(tmp_path, 1, model=model, optimizer=opt, scheduler=sched, extra={"cursor": 7})
    py_next = random.random()
    _step(model, opt, sched)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    m2, o2, s2 = _setup(seed=123)
    extra = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(tmp_path), model=m2, optimizer=o2, scheduler=s2)
    assert extra == {"cursor": 7}
    assert random.random() == py_next
    assert any(not torch.equal(m2.state_dict()[k], want[k]) for k in want)
    _step(m2, o2, s2)
    for k in want:
        assert torch.equal(m2.state_dict()[k], want[k]), k
    assert s2.last_epoch == sched.last_epoch


def test_killed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, opt, sched = _setup()
    first = checkpoint.save_checkpoint(tmp_path, 1, model=model, optimizer=opt, scheduler=sched, extra={})
    _step(model, opt, sched)

    def killed(*a, **k):
        raise KeyboardInterrupt("killed during torch.save")
    monkeypatch.setattr(checkpoint.torch, "save", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_checkpoint(tmp_path, 2, model=model, optimizer=opt, scheduler=sched, extra={})
    monkeypatch.undo()
    assert checkpoint.list_checkpoints(tmp_path) == [first]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [first.name]  # no partial folder left
    m2, o2, s2 = _setup(seed=5)
    checkpoint.load_checkpoint(first, model=m2, optimizer=o2, scheduler=s2)


def test_keep_last(tmp_path):
    model, opt, sched = _setup()
    for step in range(1, 6):
        checkpoint.save_checkpoint(tmp_path, step, model=model, optimizer=opt, scheduler=sched, extra={}, keep_last=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step-000004", "step-000005"]
    # an interrupted save's temporary folder is never taken for a checkpoint
    (tmp_path / "checkpoints" / ".step-000006.tmp-x").mkdir()
    assert checkpoint.latest_checkpoint(tmp_path).name == "step-000005"


def test_load_rejects_mismatched_weights(tmp_path):
    model, opt, sched = _setup()
    path = checkpoint.save_checkpoint(tmp_path, 1, model=model, optimizer=opt, scheduler=sched, extra={})
    other = torch.nn.Sequential(torch.nn.Linear(4, 8))
    with pytest.raises(Exception, match="unexpected|size mismatch|missing"):
        checkpoint.load_checkpoint(path, model=other, optimizer=torch.optim.AdamW(other.parameters()),
                                   scheduler=sched)
