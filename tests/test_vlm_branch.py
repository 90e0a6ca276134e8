"""The VLM semantic branch on tiny random models built here (Qwen2.5-VL and LLaVA), offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_vlm import build_tiny_idefics3, build_tiny_llava, build_tiny_qwen2_5_vl

from aligngemini.branches.base import build_branch
from aligngemini.branches.semantic.prompts import AnswerTokenError, build_prompt_set
from aligngemini.branches.semantic.vlm import VlmLoadError, bound_image, model_inputs
from aligngemini.config import ConfigError
from aligngemini.decode import load_image

CPU = torch.device("cpu")
SIZES = [(56, 84), (112, 56), (40, 40), (300, 200), (70, 70)]  # (height, width)


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("qwen"))


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return build_tiny_llava(tmp_path_factory.mktemp("llava"))


def _branch(model_dir, **extra):
    cfg = {"family": "semantic-vlm", "model": str(model_dir), "max_pixels": 112 * 112, "batch_size": 8}
    cfg.update(extra)
    return build_branch("semantic", cfg, None, device=CPU, dtype=torch.float32)


@pytest.fixture(scope="module")
def qwen(qwen_dir):
    return _branch(qwen_dir, max_new_tokens=6)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [load_image(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))) for h, w in SIZES]


def test_prompt_goes_through_the_chat_template(qwen):
    p = qwen.prompts
    assert p.detect_text.endswith("<|im_start|>assistant\n")
    assert "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Is this image" in p.detect_text
    assert "Answer with one word: real or fake." in p.detect_text
    assert "<|vision_start|><|image_pad|><|vision_end|>Look for semantic evidence" in p.explain_text
    tok = qwen.processor.tokenizer
    assert p.answer_token_ids == tuple(tok.convert_tokens_to_ids(["real", "fake"]))
    assert p.continuations == ("real<|im_end|>\n", "fake<|im_end|>\n")


def test_answer_tokens_follow_the_template_prefix(llava_dir):
    branch = _branch(llava_dir)
    tok = branch.processor.tokenizer
    assert branch.prompts.detect_text.endswith("ASSISTANT:")
    # LLaVA's template writes " real" after "ASSISTANT:", so the space-prefixed tokens are read.
    assert branch.prompts.answer_token_ids == tuple(tok.convert_tokens_to_ids(["Ġreal", "Ġfake"]))


def test_answer_words_with_a_shared_first_token_fail_clearly(qwen):
    tok = qwen.processor.tokenizer
    assert tok.tokenize("realx")[0] == tok.tokenize("realy")[0] == "real"
    with pytest.raises(AnswerTokenError, match="both start with token 'real'"):
        build_prompt_set(qwen.processor, answer_words=["realx", "realy"])


def test_readout_is_the_softmax_of_the_two_answer_logits(qwen, images):
    prepared = [qwen.prepare(im) for im in images[:2]]
    texts = [qwen.prompts.detect_text] * 2
    inputs = model_inputs(qwen.processor, texts, prepared, CPU, torch.float32)
    assert (inputs["attention_mask"][:, -1] == 1).all()  # left padding: the last position is real text
    with torch.no_grad():
        logits = qwen.model(**inputs).logits[:, -1, :]  # full logits, no logits_to_keep shortcut
    real_id, fake_id = qwen.prompts.answer_token_ids
    pair = torch.stack([logits[:, real_id], logits[:, fake_id]], dim=1).double()
    expected = (pair[:, 1].exp() / pair.exp().sum(dim=1)).numpy()
    got = qwen.score(prepared)
    assert got.dtype == np.float64 and got.shape == (2,)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert qwen.arithmetic == "cpu:float32"  # the score cache's key: these scores are fp32 CPU scores


def test_batch_of_mixed_sizes_scores_like_one_by_one(qwen, images):
    prepared = [qwen.prepare(im) for im in images]
    sizes = {p.size for p in prepared}
    assert len(sizes) == len(prepared)  # really mixed
    for p in prepared:
        assert 56 * 56 <= p.size[0] * p.size[1] <= 112 * 112
    batched = qwen.score(prepared)
    single = np.array([qwen.score([p])[0] for p in prepared])
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-5)
    assert np.ptp(batched) > 1e-5  # the images really get different scores


def test_explanation_is_text_and_leaves_the_score_unchanged(qwen, images):
    prepared = [qwen.prepare(im) for im in images[:3]]
    before = qwen.score(prepared)
    text = qwen.explain(images[0])
    assert isinstance(text, str) and text.strip()
    texts = qwen.explain_images(prepared)
    assert len(texts) == 3 and texts[0] == text  # greedy: same rationale alone and in a batch
    np.testing.assert_array_equal(qwen.score(prepared), before)
    assert qwen.can_explain


@pytest.mark.parametrize("family", ["llava", "idefics3"])
def test_other_families_score_batched_like_single(family, images, tmp_path):
    builder = {"llava": build_tiny_llava, "idefics3": build_tiny_idefics3}[family]
    branch = _branch(builder(tmp_path / family), batch_size=3)
    assert branch.prompts.continuations[1].startswith(" fake")  # both templates put a space before the answer
    prepared = [branch.prepare(im) for im in images]
    batched = branch.score(prepared)
    assert batched.shape == (len(images),) and ((batched > 0) & (batched < 1)).all()
    single = np.array([branch.score([p])[0] for p in prepared])
    np.testing.assert_allclose(batched, single, rtol=0, atol=1e-5)
    assert isinstance(branch.explain(images[0]), str)


def test_bound_image_keeps_area_and_aspect_in_range():
    big = bound_image(Image.new("RGB", (4000, 3000)), 3136, 200_704)
    assert big.size[0] * big.size[1] <= 200_704 and abs(big.size[0] / big.size[1] - 4 / 3) < 0.01
    small = bound_image(Image.new("L", (10, 20)), 3136, 200_704)
    assert small.mode == "RGB" and small.size[0] * small.size[1] >= 3136 * 0.95
    strip = bound_image(Image.new("RGB", (10_000, 20)), 3136, 200_704)
    assert strip.size[0] / strip.size[1] <= 50.5
    with pytest.raises(ValueError):
        bound_image(big, 10, 5)


def test_hub_id_offline_fails_with_a_local_path_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(VlmLoadError, match="--local-dir"):
        _branch("no-such-org/no-such-vlm")


def test_missing_folder_and_unknown_key_fail_clearly(tmp_path, qwen_dir):
    with pytest.raises(VlmLoadError, match="does not exist"):
        _branch(tmp_path / "absent")
    with pytest.raises(ConfigError, match="max_pixel"):
        _branch(qwen_dir, max_pixel=5)


def test_grouped_window_attention_matches_one_call_per_window():
    from aligngemini.branches.semantic.vlm import _grouped_varlen_sdpa

    torch.manual_seed(0)
    lengths = [16, 16, 8, 16, 12, 8]
    cu = torch.tensor([0] + np.cumsum(lengths).tolist())
    q, k, v = (torch.randn(1, 2, sum(lengths), 4) for _ in range(3))
    got, _ = _grouped_varlen_sdpa(None, q, k, v, scaling=0.5, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    parts = [
        torch.nn.functional.scaled_dot_product_attention(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], scale=0.5)
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist(), strict=True)
    ]
    expected = torch.cat(parts, dim=2).transpose(1, 2)  # [1, S, H, D]
    torch.testing.assert_close(got, expected)
    same = torch.tensor([0, 16, 32])
    got, _ = _grouped_varlen_sdpa(
        None, q[:, :, :32], k[:, :, :32], v[:, :, :32], scaling=0.5, cu_seq_lens_q=same
    )
    torch.testing.assert_close(got, expected[:, :32])


def test_grouped_vision_attention_is_the_default_and_scores_like_plain_sdpa(qwen_dir, images, monkeypatch):
    from transformers import AttentionInterface

    from aligngemini.branches.semantic import vlm

    calls = []
    real = vlm._grouped_varlen_sdpa

    def spy(*args, **kwargs):
        calls.append(kwargs.get("cu_seq_lens_q") is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(vlm, "_grouped_varlen_sdpa", spy)
    try:
        fast = _branch(qwen_dir)  # default config
        plain = _branch(qwen_dir, grouped_vision_attention=False)
        assert fast.model.config.vision_config._attn_implementation == vlm.GROUPED_VISION_ATTENTION
        assert plain.model.config.vision_config._attn_implementation != vlm.GROUPED_VISION_ATTENTION
        assert fast.model.config.text_config._attn_implementation != vlm.GROUPED_VISION_ATTENTION
        prepared = [fast.prepare(im) for im in images]
        calls.clear()
        np.testing.assert_allclose(fast.score(prepared), plain.score(prepared), rtol=0, atol=1e-5)
        assert calls and all(calls)  # the tower handed over packed windows, not one window at a time
    finally:
        AttentionInterface.register(vlm.GROUPED_VISION_ATTENTION, real)
