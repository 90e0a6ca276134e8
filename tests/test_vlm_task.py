"""LoRA SFT of the tiny Qwen2.5-VL through the ``semantic-vlm`` task (and the one trainer), offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_vlm import build_tiny_qwen2_5_vl

from aligngemini.branches.base import build_branch
from aligngemini.branches.semantic.vlm_task import ADAPTER_DIR, collate_vlm
from aligngemini.decode import load_image
from aligngemini.train.task import build_task


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny model and a 6-image manifest (4 train, 2 val) with rationales."""
    root = tmp_path_factory.mktemp("vlm_task")
    model_dir = build_tiny_qwen2_5_vl(root / "model")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(6):
        name = f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (60 + 10 * i, 90, 3), dtype=np.uint8)).save(root / name)
        label = "fake" if i % 2 else "real"
        rows.append({"path": name, "label": label, "split": "train" if i < 4 else "val",
                     "rationale": "the hands have six fingers" if i % 2 else "the shadows agree with the light"})  # fmt: skip
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root, model_dir


def _recipe(root, model_dir, **data):
    return {
        "task": "semantic-vlm",
        "model": {"model": str(model_dir), "max_pixels": 112 * 112, "device": "cpu"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"manifest": str(root / "manifest.jsonl"), **data},
    }


@pytest.fixture(scope="module")
def task_model(setup):
    root, model_dir = setup
    task = build_task(_recipe(root, model_dir))
    return task, task.build_model()


def test_lora_sits_on_the_language_model_only(task_model):
    task, model = task_model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert all(".language_model." in n for n in trainable)
    projections = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert projections == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # the vision tower has gate/up/down projections too: they stay frozen and adapter-free
    assert not any(".visual." in n for n in trainable)
    assert set(map(id, task.trainable_parameters(model))) == {
        id(p) for p in model.parameters() if p.requires_grad
    }


def test_sft_steps_lower_the_answer_token_loss(task_model):
    task, model = task_model
    train, val = task.build_datasets()
    assert (len(train), len(val)) == (4, 2)
    batch = task.collate([train[i] for i in range(4)])
    assert batch["label"].tolist() == [0.0, 1.0, 0.0, 1.0]
    real_id, fake_id = task.prompts.answer_token_ids
    assert batch["target_ids"].tolist() == [real_id, fake_id, real_id, fake_id]
    opt = torch.optim.AdamW(task.trainable_parameters(model), lr=2e-2)
    model.train()
    losses = []
    for _ in range(5):
        out = model(batch)
        assert out["logits"].shape == (4,)
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
        losses.append(out["loss"].item())
    model.eval()
    with torch.no_grad():
        final = model(batch)["loss"].item()
    assert final < losses[0] - 0.5, losses + [final]


def test_rationale_targets_cover_the_assistant_turn(task_model, setup):
    task, model = task_model
    root, _ = setup
    items = [{"image": task.build_datasets()[0][i]["image"], "label": float(i % 2),
              "rationale": "six fingers" if i % 2 else None} for i in range(2)]  # fmt: skip
    batch = collate_vlm(task.processor, task.prompts, items)
    labels, ids = batch["labels"], batch["input_ids"]
    tok = task.processor.tokenizer
    for i in range(2):
        kept = labels[i][labels[i] != -100]
        assert kept[0].item() == batch["target_ids"][i].item()
        assert (ids[i, -len(kept) :] == kept).all()  # the row's last tokens, left padding before
        text = tok.decode(kept)
        assert text.startswith(("real", "fake")) and text.endswith("<|im_end|>\n")
    assert "six fingers" in tok.decode(labels[1][labels[1] != -100])
    model.eval()
    with torch.no_grad():
        with_rationale = model(batch)
        answer_only = model(
            collate_vlm(task.processor, task.prompts, [dict(it, rationale=None) for it in items])
        )
    # the fake-minus-real logit is read at the same position in both modes
    torch.testing.assert_close(with_rationale["logits"], answer_only["logits"], rtol=0, atol=1e-4)
    assert with_rationale["loss"].item() > 0


def test_exported_adapter_scores_like_the_trained_model(task_model, setup, tmp_path):
    task, model = task_model
    root, _ = setup
    section = task.export(model, tmp_path)
    assert (tmp_path / ADAPTER_DIR / "adapter_model.safetensors").is_file()
    assert section["family"] == "semantic-vlm" and section["adapter"] == ADAPTER_DIR
    branch = build_branch("semantic", section, tmp_path, device=torch.device("cpu"), dtype=torch.float32)
    train, _ = task.build_datasets()
    items = [train[i] for i in range(4)]
    model.eval()
    with torch.no_grad():
        expected = torch.sigmoid(model(task.collate(items))["logits"]).double().numpy()
    got = branch.score([branch.prepare(load_image(it["path"])) for it in items])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_bad_manifest_label_names_the_row(setup, tmp_path):
    root, model_dir = setup
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": str(root / "img0.png"), "label": "maybe"}) + "\n")
    recipe = _recipe(root, model_dir)
    recipe["data"]["manifest"] = str(tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match="label must be .*real.*fake.*maybe"):
        build_task(recipe).build_datasets()


def test_the_one_trainer_runs_the_task_and_exports_the_branch(setup, tmp_path):
    from aligngemini.train.trainer import Trainer

    root, model_dir = setup
    recipe = _recipe(root, model_dir)
    recipe["train"] = {"lr": 1e-3, "batch_size": 2, "max_steps": 2, "eval_every": 2, "log_every": 1}
    result = Trainer(recipe, output_dir=tmp_path / "run", device="cpu", progress=False).fit()
    assert result.steps == 2 and not result.interrupted
    branch_dir = tmp_path / "run" / "branch"
    assert (branch_dir / ADAPTER_DIR / "adapter_model.safetensors").is_file()
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["steps"] == 2 and "loss" in summary["final_val"]
