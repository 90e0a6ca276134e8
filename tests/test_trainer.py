"""The one trainer: training, checkpoints without pickle, exact resume, distributed, CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from aligngemini.config import ConfigError  # noqa: E402
from aligngemini.train import checkpoint as ckpt  # noqa: E402
from aligngemini.train.run_output import RunOutputError, read_run  # noqa: E402
from aligngemini.train.sampling import EpochBatchSampler, SeededItems  # noqa: E402
from aligngemini.train.trainer import (  # noqa: E402
    TrainConfig,
    Trainer,
    _label_ids,
    _loss_and_logits,
    binary_metrics,
    lr_factor,
)

TASK = "_tiny_task:make_task"
# 48 items, batch 8, grad_accum 2: 6 micro-batches = 3 steps per epoch; 12 steps = 4 epochs.
BASE_TRAIN = {
    "lr": "1e-2",  # as YAML reads it: a string
    "batch_size": 8,
    "epochs": 4,
    "grad_accum": 2,
    "warmup_steps": 2,
    "checkpoint_every": 4,
    "eval_every": 5,
    "log_every": 2,
}
DETERMINISTIC = {"dropout": 0.0, "jitter": False, "batchnorm": False}
CPU: dict[str, Any] = {"device": "cpu", "progress": False}  # CPU even where a GPU exists: exact arithmetic
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def recipe(tiny: dict[str, Any] | None = None, **train: Any) -> dict[str, Any]:
    return {"task": TASK, "tiny": dict(tiny or {}), "train": {**BASE_TRAIN, **train}}


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "branch" / "tiny.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=f"tensor {k} differs")


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def events(out: Path, kind: str) -> list[dict[str, Any]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted run of the default recipe, the baseline of the resume tests."""
    out = tmp_path_factory.mktemp("reference")
    Trainer(recipe(), output_dir=out, **CPU).fit()
    return out


# --------------------------------------------------------------------------------------------- units


def test_config_rejects_unknown_keys_by_name_and_reads_yaml_numbers() -> None:
    with pytest.raises(ConfigError, match="learning_rate"):
        Trainer(recipe(learning_rate=0.1), output_dir="unused")
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp8")
    assert TrainConfig(lr="3e-4").lr == pytest.approx(3e-4)
    with pytest.raises(ConfigError, match="output_dir"):
        Trainer({"task": TASK, "train": {}})


def test_label_smoothing_bounds_the_logit_the_loss_pushes_towards() -> None:
    label = torch.tensor([1.0, 0.0])
    logits = torch.tensor([3.0, -1.0], requires_grad=True)
    loss, _ = _loss_and_logits(logits, {"label": label}, 0.2)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([0.9, 0.1]))
    assert torch.allclose(loss, expected)
    plain, _ = _loss_and_logits(logits, {"label": label})
    assert not torch.allclose(plain, loss)
    # smoothed, the loss is lowest at logit +-log(0.9 / 0.1), not at infinity
    best = torch.tensor([np.log(9.0), -np.log(9.0)], requires_grad=True)
    loss, _ = _loss_and_logits(best, {"label": label}, 0.2)
    loss.backward()
    assert best.grad is not None and best.grad.abs().max().item() < 1e-6
    with pytest.raises(ConfigError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)


def test_lr_schedule_warms_up_then_follows_a_cosine() -> None:
    f = [lr_factor(s, 10, 2, "cosine") for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0) and f[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[1:], f[2:], strict=False)) and 0 < f[-1] < 0.05
    assert lr_factor(9, 10, 2, "constant") == 1.0
    assert lr_factor(10, 10, 0, "cosine", min_ratio=0.1) == pytest.approx(0.1)


def test_metrics_match_sklearn() -> None:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    rng = np.random.default_rng(0)
    labels = (rng.random(200) < 0.3).astype(np.float32)
    logits = np.round(rng.normal(size=200) + labels, 1)  # rounding makes ties
    m = binary_metrics(logits, labels)
    assert m["auc"] == pytest.approx(roc_auc_score(labels, logits), abs=1e-12)
    assert m["balanced_acc"] == pytest.approx(balanced_accuracy_score(labels, logits >= 0))
    assert binary_metrics(np.array([1.0, -1.0]), np.array([1.0, 1.0]))["auc"] is None


def test_validation_label_ids_dedupe_items_and_pairs() -> None:
    assert _label_ids([3, 5], 2, 0, 1, 0) == ([192, 320], 0)
    assert _label_ids([3, 5], 4, 0, 1, 0) == ([192, 193, 320, 321], 0)  # pairs: two labels per item
    ids, nxt = _label_ids([3, 5], 3, 1, 2, 0)  # uneven: unique negative ids, none equal to the pad -1
    assert nxt == 3 and len(set(ids)) == 3 and all(i < -1 for i in ids)
    assert not set(ids) & set(_label_ids([3, 5], 3, 0, 2, 0)[0])


def test_sampler_shards_an_epoch_like_one_process_with_the_global_batch() -> None:
    one = list(EpochBatchSampler(40, 8, seed=3, epoch=2, num_replicas=1))
    r0 = list(EpochBatchSampler(40, 4, seed=3, epoch=2, num_replicas=2, rank=0))
    r1 = list(EpochBatchSampler(40, 4, seed=3, epoch=2, num_replicas=2, rank=1))
    assert [sorted(a + b) for a, b in zip(r0, r1, strict=True)] == [sorted(b) for b in one]
    assert sorted(sum(one, [])) == list(range(40))
    assert list(EpochBatchSampler(40, 8, seed=3, epoch=2, start_batch=3)) == one[3:]
    assert one != list(EpochBatchSampler(40, 8, seed=3, epoch=3)), "epochs must be shuffled differently"
    # uneven: padding by wrap-around gives every process the same number of batches
    odd = [list(EpochBatchSampler(11, 4, seed=0, epoch=0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert [len(b) for b in odd[0]] == [len(b) for b in odd[1]] == [4, 2]
    assert set(sum(odd[0] + odd[1], [])) == set(range(11))


def test_seeded_items_repeat_per_item_and_leave_the_callers_rng_alone() -> None:
    class Noisy(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 5

        def __getitem__(self, i: int) -> tuple[float, float, float]:
            return torch.rand(()).item(), float(np.random.rand()), random.random()

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    ds = SeededItems(Noisy(), seed=1, epoch=0)
    first = [ds[i] for i in range(5)]
    after = (torch.rand(()).item(), float(np.random.rand()), random.random())
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    assert (torch.rand(()).item(), float(np.random.rand()), random.random()) == after
    assert [ds[i] for i in reversed(range(5))] == first[::-1]  # order-independent
    assert SeededItems(Noisy(), seed=1, epoch=1)[0] != first[0]
    assert len({x for item in first for x in item}) == 15


def test_optimizer_state_survives_the_safetensors_json_round_trip(tmp_path: Path) -> None:
    def make() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        m = torch.nn.Linear(4, 3)
        return m, torch.optim.AdamW(m.parameters(), lr=0.1, betas=(0.8, 0.95))

    def step(m: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        opt.zero_grad()
        m(torch.randn(5, 4, generator=g)).pow(2).mean().backward()
        opt.step()

    m1, o1 = make()
    for s in range(3):
        step(m1, o1, s)
    tensors, meta = ckpt.optimizer_to_files(o1.state_dict(), ["weight", "bias"])
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "o.safetensors"))
    (tmp_path / "o.json").write_text(json.dumps(meta))
    m2, o2 = make()
    m2.load_state_dict(m1.state_dict())
    o2.load_state_dict(ckpt.optimizer_from_files(load_file(str(tmp_path / "o.safetensors")), meta))
    assert o2.param_groups[0]["betas"] == (0.8, 0.95)
    step(m1, o1, 9)
    step(m2, o2, 9)
    assert torch.equal(m1.weight, m2.weight) and torch.equal(m1.bias, m2.bias)


# ------------------------------------------------------------------------------------------ training


def test_training_lowers_the_loss_and_writes_only_safetensors_and_json(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = Trainer(recipe(epochs=8, checkpoint_every=5, eval_every=0), output_dir=out, **CPU).fit()
    assert not result.interrupted and result.steps == 24
    losses = [e["loss"] for e in events(out, "train")]
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3]), losses
    evals = events(out, "eval")
    assert len(evals) == 8  # eval_every 0: once per epoch
    assert evals[-1]["loss"] < evals[0]["loss"]
    assert evals[-1]["balanced_acc"] >= 0.8 and evals[-1]["auc"] >= 0.9
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 24 and summary["epochs"] == 8.0 and summary["samples_seen"] == 8 * 48
    assert summary["final_val"] == result.val_metrics and summary["recipe"]["task"] == TASK
    assert summary["export"] == {"family": "tiny", "weights": "tiny.safetensors"}
    assert yaml.safe_load((out / "recipe.yaml").read_text()) == summary["recipe"]
    trained = read_run(out)  # what assemble and the benchmarks read back
    assert trained.section == summary["export"] and trained.recipe == summary["recipe"]
    assert (trained.branch_dir / trained.section["weights"]).is_file()
    assert weights(out)["frozen_scale"].item() == 1.0, "a parameter outside trainable_parameters moved"

    checkpoints = ckpt.list_checkpoints(out / "checkpoints")
    assert [p.name for p in checkpoints] == ["step-00000020", "step-00000024"]  # keep_checkpoints 2
    for path in out.rglob("*"):
        if path.is_file():
            head = path.read_bytes()[:2]
            assert not (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")), path
            assert head != b"PK", f"{path} looks like a torch.save zip"
    files = {p.name for p in checkpoints[-1].iterdir()}
    assert files == {
        "model.safetensors",
        "optimizer.safetensors",
        "optimizer.json",
        "trainer.json",
        "rng-rank0.safetensors",
    }
    saved = load_file(str(checkpoints[-1] / "model.safetensors"))
    assert "body.1.running_mean" in saved and "frozen_scale" not in saved  # buffers yes, frozen no


@pytest.mark.parametrize("how", ["request_stop", "sigint"])
def test_resume_continues_exactly(tmp_path: Path, reference: Path, how: str) -> None:
    """Stopped mid-epoch (step 5 of 12, between checkpoints) and resumed: the same weights, bit for bit."""
    out = tmp_path / "run"

    def stop_at_5(trainer: Trainer, step: int) -> None:
        if step == 5:
            if how == "sigint":
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does
            else:
                trainer.request_stop()

    first = Trainer(recipe(), output_dir=out, **CPU, on_step=stop_at_5).fit()
    assert first.interrupted and first.steps == 5 and first.checkpoint.name == "step-00000005"
    state = json.loads((first.checkpoint / "trainer.json").read_text())
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 4)  # mid-epoch, mid data order
    assert not (out / "train_summary.json").exists()
    with pytest.raises(RunOutputError, match="stopped before it finished.*--resume"):
        read_run(out)

    second = Trainer(recipe(), output_dir=out, **CPU).fit(resume=True)
    assert second.steps == 12 and not second.interrupted
    assert_same_weights(weights(reference), weights(out), atol=1e-6)
    assert second.val_metrics == pytest.approx(
        json.loads((reference / "train_summary.json").read_text())["final_val"]
    )
    steps = [e["step"] for e in events(out, "train")]
    assert steps == sorted(steps) and len(steps) == len(set(steps)), "metrics log must not repeat steps"


def _restore_all_but(lib: str):  # noqa: ANN202
    real = ckpt.restore_rng

    def restore(state: dict[str, Any]) -> None:
        saved = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
        real(state)
        {"torch": torch.set_rng_state, "numpy": np.random.set_state, "python": random.setstate}[lib](
            saved[lib]
        )

    return restore


@pytest.mark.parametrize("broken", ["torch", "numpy", "python", "data_position"])
def test_resume_test_would_catch_a_lost_rng_or_data_position(
    tmp_path: Path, reference: Path, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    """The exactness test above is sensitive: losing any one RNG, or the data position, changes the result."""
    out = tmp_path / "run"
    first = Trainer(recipe(), output_dir=out, **CPU, on_step=lambda t, s: s == 5 and t.request_stop()).fit()
    if broken == "data_position":
        path = first.checkpoint / "trainer.json"
        state = json.loads(path.read_text())
        state["batch_in_epoch"] = 0
        path.write_text(json.dumps(state))
    else:
        monkeypatch.setattr(ckpt, "restore_rng", _restore_all_but(broken))
    Trainer(recipe(), output_dir=out, **CPU).fit(resume=True)
    assert max_diff(weights(reference), weights(out)) > 1e-4


def test_gradient_accumulation_equals_the_larger_batch(tmp_path: Path) -> None:
    a = Trainer(recipe(DETERMINISTIC, batch_size=4, grad_accum=2), output_dir=tmp_path / "a", **CPU).fit()
    b = Trainer(recipe(DETERMINISTIC, batch_size=8, grad_accum=1), output_dir=tmp_path / "b", **CPU).fit()
    assert a.steps == b.steps == 24
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"), atol=1e-5)


def test_a_model_that_returns_its_own_loss(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = Trainer(recipe({"own_loss": True}, max_steps=6), output_dir=out, **CPU).fit()
    assert result.steps == 6
    assert set(result.val_metrics) >= {"loss", "balanced_acc", "auc"}


def test_an_output_dir_with_checkpoints_needs_resume(tmp_path: Path) -> None:
    out = tmp_path / "run"
    Trainer(recipe(max_steps=2), output_dir=out, **CPU).fit()
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(recipe(max_steps=2), output_dir=out, **CPU).fit()
    with pytest.raises(ConfigError, match="no checkpoint"):
        Trainer(recipe(max_steps=2), output_dir=tmp_path / "empty", **CPU).fit(resume=True)
    again = Trainer(recipe(max_steps=2), output_dir=out, **CPU).fit(resume=True)
    assert again.steps == 2 and not again.interrupted  # a finished run resumes to its end at once


# ------------------------------------------------------------------------------- CLI and distributed


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _torchrun_2_cpu(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node 2 ARGS`` (gloo on the CPU); asserts that every worker exited 0."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-12000:]
    return proc


def _write_recipe(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_cli_help_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aligngemini.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--resume" in text and "--opt" in text and "examples:" in text
    r = _write_recipe(tmp_path / "r.yaml", recipe())
    assert main(["train", str(r), "--opt", "train.bogus=1", "-o", str(tmp_path / "o")]) == 2
    assert "bogus" in capsys.readouterr().err


def test_cli_trains_through_the_entry_point(tmp_path: Path) -> None:
    r = _write_recipe(tmp_path / "tiny.yaml", recipe())
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "aligngemini.cli",
            "train",
            str(r),
            "--opt",
            "train.max_steps=3",
            "--device",
            "cpu",
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "runs" / "tiny"  # default: runs/<recipe name>
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["recipe"]["train"]["max_steps"] == 3
    assert (out / "branch" / "tiny.safetensors").is_file()
    assert "trained 3 steps" in proc.stderr


@pytest.mark.slow
def test_two_processes_agree_and_equal_one_process_with_the_global_batch(tmp_path: Path) -> None:
    """torchrun, 2 CPU processes (gloo), batch 4 each == 1 process with batch 8 (deterministic model)."""
    common = {"grad_accum": 1, "max_steps": 8, "eval_every": 4, "checkpoint_every": 4}
    tiny = {**DETERMINISTIC, "n_val": 33}  # odd: sharding pads one item in twice; it must count once
    r = _write_recipe(tmp_path / "ddp.yaml", recipe(tiny, batch_size=4, **common))
    # The command the train --help documents. A worker that finished its run must also exit cleanly:
    # one left to interpreter teardown with gloo's threads alive can abort (SIGABRT) at exit.
    proc = _torchrun_2_cpu(tmp_path, "-m", "aligngemini.cli", "train", str(r), "--device", "cpu", "-q", "-o",
                           str(tmp_path / "ddp"))  # fmt: skip
    assert "trained 8 steps" in proc.stderr  # rank 0's report was flushed before its worker left
    summary = json.loads((tmp_path / "ddp" / "train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_agree"] is True and summary["steps"] == 8
    assert summary["final_val"]["n"] == 33  # every validation item counted once across processes
    last = ckpt.latest_checkpoint(tmp_path / "ddp" / "checkpoints")
    assert {p.name for p in last.glob("rng-rank*.safetensors")} == {
        "rng-rank0.safetensors",
        "rng-rank1.safetensors",
    }

    single = tmp_path / "single"
    Trainer(recipe(tiny, batch_size=8, **common), output_dir=single, **CPU).fit()
    assert_same_weights(weights(tmp_path / "ddp"), weights(single), atol=1e-5)
    assert summary["final_val"]["balanced_acc"] == pytest.approx(
        json.loads((single / "train_summary.json").read_text())["final_val"]["balanced_acc"]
    )


@pytest.mark.slow
def test_fit_under_torchrun_destroys_the_process_group_it_created(tmp_path: Path) -> None:
    """A library caller of ``Trainer.fit()`` under torchrun gets no process group left behind."""
    common = {"grad_accum": 1, "max_steps": 2, "eval_every": 2, "checkpoint_every": 2}
    r = _write_recipe(tmp_path / "ddp.yaml", recipe(DETERMINISTIC, batch_size=4, **common))
    launcher = tmp_path / "fit.py"  # leaves through os._exit, as the train command's workers do
    launcher.write_text(
        "import os, sys, yaml\nimport torch.distributed as dist\n"
        "from aligngemini.train.trainer import Trainer\n"
        "Trainer(yaml.safe_load(open(sys.argv[1])), output_dir=sys.argv[2], device='cpu', progress=False).fit()\n"
        "open(f\"group-left-{os.environ['RANK']}\", 'w').write(str(dist.is_initialized()))\n"
        "os._exit(0)\n"
    )
    _torchrun_2_cpu(tmp_path, str(launcher), str(r), str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "train_summary.json").read_text())["world_size"] == 2
    assert [(tmp_path / f"group-left-{rank}").read_text() for rank in (0, 1)] == ["False", "False"]


# ------------------------------------------------------------------------------------------------ GPU


def _stop_at_5(trainer: Trainer, step: int) -> None:
    if step == 5:
        trainer.request_stop()


def _keep_cuda_rng(real: Any):  # noqa: ANN202
    def restore(state: dict[str, Any]) -> None:
        saved = torch.cuda.get_rng_state_all()
        real(state)
        torch.cuda.set_rng_state_all(saved)

    return restore


@needs_cuda
def test_cuda_bf16_run_resumes_exactly_with_its_cuda_rng(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU: bf16 autocast, dropout drawing from the CUDA generator, and a resume that restores it."""
    gpu = {"device": "cuda", "progress": False}
    r = recipe(precision="bf16", epochs=8)
    ref = tmp_path / "ref"
    Trainer(r, output_dir=ref, **gpu).fit()
    summary = json.loads((ref / "train_summary.json").read_text())
    assert summary["precision"] == "bf16" and summary["device"].startswith("cuda")
    assert summary["final_val"]["balanced_acc"] >= 0.8
    losses = [e["loss"] for e in events(ref, "train")]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert events(ref, "eval")[-1]["loss"] < events(ref, "eval")[0]["loss"]
    if importlib.util.find_spec("tensorboard") is not None:
        assert list((ref / "tensorboard").rglob("events.out.tfevents*")), (
            "TensorBoard is installed but wrote nothing"
        )

    out = tmp_path / "run"
    assert Trainer(r, output_dir=out, on_step=_stop_at_5, **gpu).fit().interrupted
    Trainer(r, output_dir=out, **gpu).fit(resume=True)
    diff = max_diff(weights(ref), weights(out))
    assert diff < 1e-5, diff

    lost = tmp_path / "lost"
    Trainer(r, output_dir=lost, on_step=_stop_at_5, **gpu).fit()
    monkeypatch.setattr(ckpt, "restore_rng", _keep_cuda_rng(ckpt.restore_rng))
    Trainer(r, output_dir=lost, **gpu).fit(resume=True)
    assert max_diff(weights(ref), weights(lost)) > 1e-4, (
        "dropout on the GPU must depend on the CUDA RNG state"
    )


def test_task_names_are_the_family_names() -> None:
    from aligngemini.branches.base import FAMILY_MODULES
    from aligngemini.train.task import build_task

    for family, (_, task_module) in FAMILY_MODULES.items():
        assert type(build_task({"task": family})).__module__ == task_module
    assert type(build_task({"task": "pixel"})).__module__ == FAMILY_MODULES["pixel-timm"][1]  # the old name
    with pytest.raises(ValueError, match="known tasks"):
        build_task({"task": "no-such-family"})
