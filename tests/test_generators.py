"""Reconstruction generators: VAE round trip, train-vae, the TF.js reader, ESRGAN, specs and the CLI.

Everything is built here: tiny AutoencoderKL configs, tiny hand-written TF.js models, tarballs in tmp_path.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from aligngemini.cli import main as cli_main
from aligngemini.generators.base import GeneratorSpecError, build_generator, pad_to_multiple
from aligngemini.generators.esrgan import ESRGANGenerator, parse_esrgan_spec
from aligngemini.generators.tfjs import TFJSError, depth_to_space, load_tfjs_model, read_weights
from aligngemini.generators.train_vae import TrainVAEConfig, TrainVAEError, list_training_images, train_vae
from aligngemini.generators.vae import VAEGenerator, VAELoadError
from aligngemini.npm import NpmFetchError, fetch_npm

torch.set_num_threads(1)


def tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def photo_like(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus a little noise: something a VAE can reconstruct at all."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * 200 + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------------------------- VAE


def test_vae_reconstructs_odd_sizes_to_the_same_size():
    gen = VAEGenerator(tiny_vae(), device="cpu", tile=None)
    images = [noise_image(53, 37, 1), noise_image(53, 37, 2), noise_image(3, 5, 3), photo_like(40, 64)]
    out = gen.reconstruct(images)
    assert [o.size for o in out] == [i.size for i in images]
    assert all(o.mode == "RGB" for o in out)
    # the latent mean is deterministic, and a batch gives what single images give
    alone = gen.reconstruct([images[1]])[0]
    diff = np.abs(np.asarray(alone, dtype=int) - np.asarray(out[1], dtype=int))
    assert diff.max() <= 1
    # it is a reconstruction, not a copy
    assert not np.array_equal(np.asarray(out[0]), np.asarray(images[0]))


def test_vae_sampling_is_seeded_and_differs_from_the_mean():
    vae = tiny_vae()
    img = [photo_like(24, 16)]
    mean = np.asarray(VAEGenerator(vae, device="cpu", tile=None).reconstruct(img)[0], dtype=int)
    s1 = np.asarray(
        VAEGenerator(vae, device="cpu", tile=None, sample=True, seed=3).reconstruct(img)[0], dtype=int
    )
    s2 = np.asarray(
        VAEGenerator(vae, device="cpu", tile=None, sample=True, seed=3).reconstruct(img)[0], dtype=int
    )
    assert np.array_equal(s1, s2)
    assert not np.array_equal(s1, mean)


def test_vae_tiles_large_images_and_keeps_their_size():
    gen = VAEGenerator(tiny_vae(), device="cpu", tile=32)
    assert gen.vae.use_tiling and gen.vae.tile_latent_min_size == 4
    out = gen.reconstruct([photo_like(75, 41)])
    assert out[0].size == (75, 41)
    with pytest.raises(ValueError, match="multiple"):
        VAEGenerator(tiny_vae(), device="cpu", tile=30)


def test_pad_to_multiple_reflects_and_falls_back_for_tiny_images():
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    padded, (h, w) = pad_to_multiple(x, 8)
    assert padded.shape[-2:] == (8, 8) and (h, w) == (5, 6)
    assert torch.equal(padded[..., :5, :6], x)
    assert torch.equal(padded[..., 5, :6], x[..., 3, :])  # reflection about the last row
    tiny, _ = pad_to_multiple(torch.ones(1, 3, 2, 2), 8)  # too small to reflect: replicate
    assert tiny.shape[-2:] == (8, 8) and torch.all(tiny == 1)


def test_vae_loads_from_local_folders(tmp_path):
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "flat", safe_serialization=True)
    vae.save_pretrained(tmp_path / "pipeline" / "vae", safe_serialization=True)
    img = [photo_like(20, 12)]
    ref = VAEGenerator(vae, device="cpu", tile=None).reconstruct(img)[0]
    for folder in ("flat", "pipeline"):
        gen = build_generator(f"vae:{tmp_path / folder}", device="cpu")
        assert gen.name == f"vae:{folder}"
        assert np.array_equal(np.asarray(gen.reconstruct(img)[0]), np.asarray(ref))


def test_vae_errors_name_the_fix(tmp_path, monkeypatch):
    with pytest.raises(VAELoadError, match="no such folder"):
        build_generator(f"vae:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VAELoadError, match="no config.json"):
        build_generator(f"vae:{tmp_path / 'empty'}")
    monkeypatch.setattr("aligngemini.generators.vae._hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(VAELoadError) as err:
        build_generator("vae:some-org/some-vae", device="cpu")
    message = str(err.value)
    assert (
        "no model hub is reachable" in message
        and "save_pretrained('DIR')" in message
        and "vae:DIR" in message
    )


# ------------------------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("", "empty"),
        ("vae", "missing"),
        ("vae:", "missing"),
        ("gan:foo", "unknown generator kind"),
        ("esrgan:big:x2", "unknown ESRGAN variant"),
        ("esrgan:medium:x5", "scale"),
        ("esrgan:medium:2", "scale"),
        ("esrgan:medium", "expected esrgan"),
        ("esrgan:medium:x2:lanczos", "down-scaling"),
    ],
)
def test_bad_specs_give_clear_errors(spec, match):
    with pytest.raises(GeneratorSpecError, match=match):
        build_generator(spec)


def test_esrgan_specs_parse():
    assert parse_esrgan_spec("esrgan:medium:x2") == ("medium", 2, "area", 2)
    assert parse_esrgan_spec("esrgan:thick:x8:bicubic") == ("thick", 8, "bicubic", 8)


# ----------------------------------------------------------------------------------------- train-vae


def write_photos(folder: Path, n: int, size: tuple[int, int] = (48, 40)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"photo_{i}.png"
        photo_like(*size, seed=i).save(p)
        paths.append(p)
    return paths


TINY_TRAIN = ["--size", "32", "--batch", "2", "--channels", "8,8,16,16", "--crops-per-image", "2",
              "--threads", "1", "--device", "cpu", "--eval-every", "100", "--save-every", "2"]  # fmt: skip


def test_train_vae_cli_writes_a_loadable_folder_and_resumes(tmp_path):
    from diffusers import AutoencoderKL

    write_photos(tmp_path / "photos" / "nested", 5)
    out = tmp_path / "vae"
    argv = ["generators", "train-vae", "--images", str(tmp_path / "photos"), "--out", str(out), *TINY_TRAIN]
    assert cli_main([*argv, "--steps", "3"]) == 0
    for name in ("config.json", "diffusion_pytorch_model.safetensors", "MODEL_CARD.md", "metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["train_images"] == 4 and metrics["val_images"] == 1
    card = (out / "MODEL_CARD.md").read_text()
    assert np.isfinite(metrics["val_psnr_db"]) and "PSNR" in card
    assert "Undertrained" in card and "decoder_detail" not in card  # 3 steps cannot beat bicubic x8
    vae = AutoencoderKL.from_pretrained(out, local_files_only=True)  # the folder just written; never a hub
    assert vae.config.latent_channels == 4 and len(vae.config.block_out_channels) == 4
    assert build_generator(f"vae:{out}", device="cpu").reconstruct([photo_like(21, 19)])[0].size == (21, 19)
    # an existing output is refused without --resume/--overwrite; --resume continues to the new step count
    assert cli_main([*argv, "--steps", "4"]) == 2
    assert cli_main([*argv, "--steps", "5", "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 5
    # a 16-channel latent (SD3 / FLUX.1 style) is one flag; the decoder reads what the encoder writes
    wide = tmp_path / "vae16"
    wide_argv = [str(wide) if a == str(out) else a for a in argv]
    assert cli_main([*wide_argv, "--steps", "2", "--latent-channels", "16"]) == 0
    assert AutoencoderKL.from_pretrained(wide, local_files_only=True).config.latent_channels == 16
    assert build_generator(f"vae:{wide}", device="cpu").reconstruct([photo_like(21, 19)])[0].size == (21, 19)


def test_train_vae_resume_matches_an_uninterrupted_run(tmp_path):
    write_photos(tmp_path / "photos", 4)
    common = dict(images=str(tmp_path / "photos"), size=32, batch=2, block_out_channels=(8, 8, 16, 16),
                  crops_per_image=2, threads=1, device="cpu", eval_every=100, save_every=2)  # fmt: skip
    train_vae(TrainVAEConfig(out=str(tmp_path / "a"), steps=4, **common))
    train_vae(TrainVAEConfig(out=str(tmp_path / "b"), steps=2, **common))
    train_vae(TrainVAEConfig(out=str(tmp_path / "b"), steps=4, resume=True, **common))
    from safetensors.torch import load_file

    a = load_file(tmp_path / "a" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "b" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_training_images_from_a_manifest_use_real_rows_only(tmp_path):
    paths = write_photos(tmp_path / "imgs", 3)
    rows = [
        {"path": "imgs/photo_0.png", "label": "real", "split": "train"},
        {"path": str(paths[1]), "label": "fake", "split": "train"},
        {"path": str(paths[2]), "label": "real", "split": "val"},
    ]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert list_training_images(manifest) == sorted([tmp_path / "imgs" / "photo_0.png", paths[2]])
    assert list_training_images(manifest, split="val") == [paths[2]]
    with pytest.raises(TrainVAEError, match="split 'test'"):
        list_training_images(manifest, split="test")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"path": "x.png", "label": "real"}\nnot json\n')
    with pytest.raises(TrainVAEError, match="broken.jsonl:2"):
        list_training_images(broken)
    only_fake = tmp_path / "fake.jsonl"
    only_fake.write_text(json.dumps(rows[1]) + "\n")
    with pytest.raises(TrainVAEError, match="label 'real'"):
        list_training_images(only_fake)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainVAEError, match="no images"):
        list_training_images(tmp_path / "empty")


def test_train_vae_refuses_images_smaller_than_the_crop(tmp_path):
    write_photos(tmp_path / "small", 3, size=(20, 20))
    cfg = TrainVAEConfig(images=str(tmp_path / "small"), out=str(tmp_path / "o"), steps=1, size=32,
                         block_out_channels=(8, 8, 16, 16), device="cpu", threads=1)  # fmt: skip
    with pytest.raises(TrainVAEError, match="no usable 32px crops"):
        train_vae(cfg)


# ------------------------------------------------------------------------------------- TF.js reader


def conv_layer(name, inbound, filters, kernel, strides=1, padding="same", activation="linear"):
    return {
        "class_name": "Conv2D",
        "name": name,
        "config": {"name": name, "filters": filters, "kernel_size": [kernel, kernel], "strides": [strides, strides],
                   "padding": padding, "data_format": "channels_last", "dilation_rate": [1, 1], "groups": 1,
                   "activation": activation, "use_bias": True},
        "inbound_nodes": [[[n, 0, 0, {}] for n in inbound]],
    }  # fmt: skip


def layer(cls, name, inbound, **config):
    return {"class_name": cls, "name": name, "config": {"name": name, **config},
            "inbound_nodes": [[[n, 0, 0, {}] for n in inbound]]}  # fmt: skip


def quantize_u8(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    lo, hi = float(values.min()), float(values.max())
    scale = (hi - lo) / 255.0
    return np.round((values - lo) / scale).astype(np.uint8), scale, lo


def write_tiny_model(folder: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """A model touching each layer class the ESRGAN packages use and a few more, its weights split over two
    shards in float32, uint8-quantized and float16. Returns the (dequantized) weights as Keras holds them."""
    rng = np.random.default_rng(seed)
    w = {
        "c1/kernel": rng.normal(0, 0.3, (3, 3, 3, 4)).astype(np.float32),
        "c1/bias": rng.normal(0, 0.1, 4).astype(np.float32),
        "c2/kernel": rng.normal(0, 0.3, (1, 1, 4, 4)).astype(np.float32),
        "c2/bias": rng.normal(0, 0.1, 4).astype(np.float32),
        "prelu/alpha": rng.uniform(0.05, 0.3, (1, 1, 8)).astype(np.float32),
        "c3/kernel": rng.normal(0, 0.3, (3, 3, 8, 12)).astype(np.float32),
        "c3/bias": rng.normal(0, 0.1, 12).astype(np.float32),
        "c4/kernel": rng.normal(0, 0.3, (5, 5, 3, 3)).astype(np.float32),
        "c4/bias": rng.normal(0, 0.1, 3).astype(np.float32),
    }
    q, scale, lo = quantize_u8(w["c2/kernel"])
    w["c2/kernel"] = (q.astype(np.float64) * scale + lo).astype(np.float32)  # what a reader must return
    w["c3/kernel"] = w["c3/kernel"].astype(np.float16).astype(np.float32)
    layers = [
        {"class_name": "InputLayer", "name": "LR", "config": {"name": "LR", "batch_input_shape": [None, None, None, 3]},
         "inbound_nodes": []},
        conv_layer("c1", ["LR"], 4, 3, activation="relu"),
        conv_layer("c2", ["c1"], 4, 1, padding="valid"),
        layer("MultiplyBeta", "mb", ["c2"], beta=0.2),
        layer("Add", "add", ["c1", "mb"]),
        layer("Concatenate", "cat", ["c1", "add"], axis=3),
        layer("PReLU", "prelu", ["cat"], shared_axes=[1, 2]),
        conv_layer("c3", ["prelu"], 12, 3, strides=2),
        layer("LeakyReLU", "lrelu", ["c3"], alpha=0.1),
        layer("PixelShuffle2x", "ps", ["lrelu"], scale=2),
        layer("UpSampling2D", "up", ["ps"], size=[2, 2], interpolation="nearest", data_format="channels_last"),
        conv_layer("c4", ["up"], 3, 5),
        layer("Activation", "out", ["c4"], activation="sigmoid"),
    ]  # fmt: skip
    specs1 = [
        {"name": "c1/kernel", "shape": [3, 3, 3, 4], "dtype": "float32"},
        {"name": "c1/bias", "shape": [4], "dtype": "float32"},
        {"name": "c2/kernel", "shape": [1, 1, 4, 4], "dtype": "float32",
         "quantization": {"dtype": "uint8", "scale": scale, "min": lo}},
        {"name": "c2/bias", "shape": [4], "dtype": "float32"},
    ]  # fmt: skip
    specs2 = [
        {"name": "prelu/alpha", "shape": [1, 1, 8], "dtype": "float32"},
        {
            "name": "c3/kernel",
            "shape": [3, 3, 8, 12],
            "dtype": "float32",
            "quantization": {"dtype": "float16"},
        },
        {"name": "c3/bias", "shape": [12], "dtype": "float32"},
        {"name": "c4/kernel", "shape": [5, 5, 3, 3], "dtype": "float32"},
        {"name": "c4/bias", "shape": [3], "dtype": "float32"},
    ]
    g1 = b"".join([w["c1/kernel"].tobytes(), w["c1/bias"].tobytes(), q.tobytes(), w["c2/bias"].tobytes()])
    g2 = b"".join([w["prelu/alpha"].tobytes(), w["c3/kernel"].astype(np.float16).tobytes(), w["c3/bias"].tobytes(),
                   w["c4/kernel"].tobytes(), w["c4/bias"].tobytes()])  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "group1-shard1of2.bin").write_bytes(g1[:50])
    (folder / "group1-shard2of2.bin").write_bytes(g1[50:])
    (folder / "group2-shard1of1.bin").write_bytes(g2)
    model = {
        "format": "layers-model",
        "modelTopology": {"keras_version": "2.10.0", "backend": "tensorflow", "model_config": {
            "class_name": "Functional",
            "config": {"name": "tiny", "layers": layers, "input_layers": [["LR", 0, 0]],
                       "output_layers": [["out", 0, 0]]}}},
        "weightsManifest": [
            {"paths": ["group1-shard1of2.bin", "group1-shard2of2.bin"], "weights": specs1},
            {"paths": ["group2-shard1of1.bin"], "weights": specs2},
        ],
    }  # fmt: skip
    (folder / "model.json").write_text(json.dumps(model))
    return w


def tf_same_conv_nhwc(x: torch.Tensor, kernel: np.ndarray, bias: np.ndarray, stride: int = 1) -> torch.Tensor:
    """Keras Conv2D written from its definition, in NHWC: TF 'same' padding puts the odd pixel after."""
    k = kernel.shape[0]
    h, w_ = x.shape[1:3]
    pads = []
    for size in (h, w_):
        out = -(-size // stride)
        total = max((out - 1) * stride + k - size, 0)
        pads.append((total // 2, total - total // 2))
    xp = F.pad(x.permute(0, 3, 1, 2), (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
    y = F.conv2d(xp, torch.from_numpy(kernel).permute(3, 2, 0, 1), torch.from_numpy(bias), stride=stride)
    return y.permute(0, 2, 3, 1)


def reference_forward(x_nhwc: torch.Tensor, w: dict[str, np.ndarray]) -> torch.Tensor:
    c1 = torch.relu(tf_same_conv_nhwc(x_nhwc, w["c1/kernel"], w["c1/bias"]))
    c2 = torch.einsum("bhwi,io->bhwo", c1, torch.from_numpy(w["c2/kernel"][0, 0])) + torch.from_numpy(
        w["c2/bias"]
    )
    cat = torch.cat([c1, c1 + 0.2 * c2], dim=-1)
    alpha = torch.from_numpy(w["prelu/alpha"])
    pr = torch.where(cat >= 0, cat, cat * alpha)
    c3 = tf_same_conv_nhwc(pr, w["c3/kernel"], w["c3/bias"], stride=2)
    lr = torch.where(c3 >= 0, c3, 0.1 * c3)
    b, h, w_, c = lr.shape  # TF depth_to_space, NHWC: channel (i*2 + j)*C + c goes to pixel (2h+i, 2w+j)
    ps = lr.reshape(b, h, w_, 2, 2, c // 4).permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w_, c // 4)
    up = ps.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    return torch.sigmoid(tf_same_conv_nhwc(up, w["c4/kernel"], w["c4/bias"]))


def test_tfjs_reader_matches_a_hand_written_equivalent(tmp_path):
    w = write_tiny_model(tmp_path / "m")
    model = load_tfjs_model(tmp_path / "m" / "model.json")
    x = torch.rand(2, 7, 9, 3, generator=torch.Generator().manual_seed(0))
    ref = reference_forward(x, w)
    ours = model(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert ours.shape == ref.shape == (2, 16, 20, 3)  # stride 2 (same: ceil) then x2 shuffle then x2 nearest
    assert float((ours - ref).abs().max()) < 1e-5


def test_tfjs_weights_dequantize(tmp_path):
    w = write_tiny_model(tmp_path / "m")
    model = json.loads((tmp_path / "m" / "model.json").read_text())
    got = read_weights(model, tmp_path / "m")
    for name, value in w.items():
        assert got[name].shape == value.shape
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-6)


def test_depth_to_space_follows_tf_channel_order():
    x = torch.arange(8, dtype=torch.float32).view(1, 8, 1, 1)  # NCHW, 2 output channels, block 2
    y = depth_to_space(x, 2)
    # TF: pixel (i, j) of output channel c reads input channel (i*2 + j)*2 + c
    assert y[0, 0].tolist() == [[0.0, 2.0], [4.0, 6.0]]
    assert y[0, 1].tolist() == [[1.0, 3.0], [5.0, 7.0]]


def test_tfjs_reader_errors(tmp_path):
    write_tiny_model(tmp_path / "m")
    model_path = tmp_path / "m" / "model.json"
    model = json.loads(model_path.read_text())
    # a short shard
    (tmp_path / "m" / "group2-shard1of1.bin").write_bytes(b"\0" * 16)
    with pytest.raises(TFJSError, match="shards end at byte"):
        load_tfjs_model(model_path)
    write_tiny_model(tmp_path / "m")
    # an unknown layer class
    model["modelTopology"]["model_config"]["config"]["layers"][3]["class_name"] = "Mystery"
    model_path.write_text(json.dumps(model))
    with pytest.raises(TFJSError, match="custom_layers"):
        load_tfjs_model(model_path)
    # ... which custom_layers can supply
    loaded = load_tfjs_model(model_path, custom_layers={"Mystery": lambda cfg, w: torch.nn.Identity()})
    assert loaded(torch.rand(1, 3, 4, 4)).shape == (1, 3, 8, 8)
    # a weight no layer reads
    model["weightsManifest"][1]["weights"].append({"name": "ghost/kernel", "shape": [1], "dtype": "float32"})
    (tmp_path / "m" / "group2-shard1of1.bin").write_bytes(
        (tmp_path / "m" / "group2-shard1of1.bin").read_bytes() + b"\0" * 4
    )
    model_path.write_text(json.dumps(model))
    with pytest.raises(TFJSError, match="not used"):
        load_tfjs_model(model_path, custom_layers={"Mystery": lambda cfg, w: torch.nn.Identity()})


def test_tfjs_sequential_models(tmp_path):
    kernel = np.random.default_rng(1).normal(size=(3, 3, 3, 2)).astype(np.float32)
    bias = np.array([0.5, -0.5], np.float32)
    model = {
        "format": "layers-model",
        "modelTopology": {"model_config": {"class_name": "Sequential", "config": {"name": "s", "layers": [
            {"class_name": "Conv2D", "config": {"name": "conv", "filters": 2, "kernel_size": [3, 3],
             "strides": [1, 1], "padding": "valid", "activation": "tanh", "use_bias": True,
             "batch_input_shape": [None, 6, 6, 3]}}]}}},
        "weightsManifest": [{"paths": ["w.bin"], "weights": [
            {"name": "conv/kernel", "shape": [3, 3, 3, 2], "dtype": "float32"},
            {"name": "conv/bias", "shape": [2], "dtype": "float32"}]}],
    }  # fmt: skip
    (tmp_path / "model.json").write_text(json.dumps(model))
    (tmp_path / "w.bin").write_bytes(kernel.tobytes() + bias.tobytes())
    x = torch.rand(1, 3, 6, 6)
    ref = torch.tanh(F.conv2d(x, torch.from_numpy(kernel).permute(3, 2, 0, 1), torch.from_numpy(bias)))
    assert torch.allclose(load_tfjs_model(tmp_path / "model.json")(x), ref, atol=1e-6)


# ------------------------------------------------------------------------------------------ ESRGAN


def write_esrgan_like(folder: Path, scale: int = 2) -> None:
    """A one-conv super-resolution model, upscalerjs style: Conv2D(3 -> 3*s*s) then PixelShuffle<s>x."""
    rng = np.random.default_rng(0)
    c = 3 * scale * scale
    kernel = rng.normal(0, 0.2, (3, 3, 3, c)).astype(np.float32)
    bias = np.full(c, 0.1, np.float32)
    layers = [
        {"class_name": "InputLayer", "name": "LR", "config": {"name": "LR"}, "inbound_nodes": []},
        conv_layer("pre", ["LR"], c, 3),
        layer(f"PixelShuffle{scale}x", "shuffle", ["pre"], scale=scale),
    ]
    model = {
        "format": "layers-model",
        "modelTopology": {"model_config": {"class_name": "Functional", "config": {
            "layers": layers, "input_layers": [["LR", 0, 0]], "output_layers": [["shuffle", 0, 0]]}}},
        "weightsManifest": [{"paths": ["w.bin"], "weights": [
            {"name": "pre/kernel", "shape": list(kernel.shape), "dtype": "float32"},
            {"name": "pre/bias", "shape": [c], "dtype": "float32"}]}],
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.json").write_text(json.dumps(model))
    (folder / "w.bin").write_bytes(kernel.tobytes() + bias.tobytes())


def test_esrgan_generator_keeps_sizes_and_tiles_exactly(tmp_path):
    write_esrgan_like(tmp_path / "x2")
    gen = ESRGANGenerator(
        "thick", 2, device="cpu", network=load_tfjs_model(tmp_path / "x2" / "model.json"), tile=None
    )
    assert gen.name == "esrgan:thick:x2"
    images = [noise_image(33, 21, 1), noise_image(33, 21, 2), noise_image(1, 1, 3)]
    out = gen.reconstruct(images)
    assert [o.size for o in out] == [i.size for i in images]
    # the receptive field is one low-res pixel: tiles with an overlap of 2 must reproduce the whole-image pass
    low = torch.rand(1, 3, 19, 23)
    whole = gen.upscale(low)
    gen.tile, gen.tile_overlap = 8, 2
    assert torch.equal(gen.upscale(low), whole)
    bicubic = ESRGANGenerator(
        "thick", 2, device="cpu", network=load_tfjs_model(tmp_path / "x2" / "model.json"), downscale="bicubic"
    )
    assert bicubic.name == "esrgan:thick:x2:bicubic"
    assert bicubic.reconstruct(images[:1])[0].size == (33, 21)


def make_tarball(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_fetch_npm_caches_checks_integrity_and_refuses_unsafe_tarballs(tmp_path):
    import base64
    import hashlib

    calls = []

    def fetcher(spec: str, dest: Path) -> Path:
        calls.append(spec)
        return make_tarball(
            dest / "pkg.tgz", {"package/package.json": b'{"name": "x"}', "package/models/a": b"1"}
        )

    cache = tmp_path / "cache"
    cache.mkdir()
    pkg = fetch_npm("@scope/pkg@1.2.3", fetcher=fetcher, cache=cache)
    assert (pkg / "models" / "a").read_bytes() == b"1"
    assert fetch_npm("@scope/pkg@1.2.3", fetcher=fetcher, cache=cache) == pkg
    assert calls == ["@scope/pkg@1.2.3"]  # fetched once

    with pytest.raises(NpmFetchError, match="pin an exact version"):
        fetch_npm("@scope/pkg@^1.0", fetcher=fetcher, cache=cache)
    with pytest.raises(NpmFetchError, match="does not match"):
        fetch_npm("other@1.0.0", integrity="sha512-AAAA", fetcher=fetcher, cache=cache)
    good = make_tarball(tmp_path / "good.tgz", {"package/x": b"y"})
    digest = "sha512-" + base64.b64encode(hashlib.sha512(good.read_bytes()).digest()).decode()
    assert fetch_npm("good@1.0.0", integrity=digest, fetcher=lambda s, d: good, cache=cache).is_dir()

    evil = make_tarball(tmp_path / "evil.tgz", {"package/ok": b"", "../escape": b"x"})
    with pytest.raises(NpmFetchError, match="unsafe"):
        fetch_npm("evil@1.0.0", fetcher=lambda s, d: evil, cache=cache)
    assert not (tmp_path / "escape").exists()

    def offline(spec: str, dest: Path) -> Path:
        raise NpmFetchError(f"{spec}: npm pack failed: ENOTFOUND registry.npmjs.org")

    with pytest.raises(NpmFetchError, match="ALIGNGEMINI_NPM_DIR"):
        fetch_npm("@upscalerjs/esrgan-medium@1.0.0", fetcher=offline, cache=cache)


def test_default_fetcher_reads_a_local_tarball_folder(tmp_path, monkeypatch):
    from aligngemini.npm import npm_pack

    tarball = make_tarball(tmp_path / "upscalerjs-esrgan-medium-1.0.0.tgz", {"package/x": b"y"})
    monkeypatch.setenv("ALIGNGEMINI_NPM_DIR", str(tmp_path))
    assert npm_pack("@upscalerjs/esrgan-medium@1.0.0", tmp_path / "unused") == tarball


# --------------------------------------------------------------------------------------------- CLI


def test_reconstruct_cli_writes_pngs_and_refuses_to_overwrite(tmp_path):
    tiny_vae().save_pretrained(tmp_path / "vae", safe_serialization=True)
    (tmp_path / "in" / "sub").mkdir(parents=True)
    noise_image(17, 11, 1).save(tmp_path / "in" / "a.jpg", quality=90)
    noise_image(9, 14, 2).save(tmp_path / "in" / "sub" / "a.png")
    (tmp_path / "in" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    argv = ["generators", "reconstruct", str(tmp_path / "in"), "-g", f"vae:{tmp_path / 'vae'}", "--out", str(out),
            "--device", "cpu"]  # fmt: skip
    assert cli_main(argv) == 1  # the broken file is reported; the others are written
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a-2.png", "a.png"]
    sizes = {Image.open(out / n).size for n in written}
    assert sizes == {(17, 11), (9, 14)}
    (tmp_path / "in" / "broken.png").unlink()
    assert cli_main(argv) == 1  # outputs exist
    assert cli_main([*argv, "--overwrite"]) == 0
    assert (
        cli_main(
            ["generators", "reconstruct", str(tmp_path / "in"), "-g", "nope:x", "--out", str(tmp_path / "o2")]
        )
        == 2
    )


def test_train_vae_time_budget_plans_fewer_steps(tmp_path):
    write_photos(tmp_path / "photos", 3)
    cfg = TrainVAEConfig(images=str(tmp_path / "photos"), out=str(tmp_path / "o"), steps=1000, size=32, batch=1,
                         block_out_channels=(8, 8, 16, 16), crops_per_image=2, threads=1, device="cpu",
                         eval_every=1000, save_every=1000, max_seconds=1e-3)  # fmt: skip
    result = train_vae(cfg)
    assert result.steps == 30  # timed over steps 10-30, then no time is left
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["steps"] == 30


# -- TAESD family --------------------------------------------------------------------------------------------


def _write_taesd(
    folder: Path, latent: int = 32, norm_enc: set[int] | None = None, norm_dec: set[int] | None = None
):
    """Random TAESD-family weights in the upstream key layout (FLUX.2 variant: GroupNorm branches on the
    deepest blocks), written as safetensors."""
    from safetensors.torch import save_file

    from aligngemini.generators.taesd import build_decoder, build_encoder

    torch.manual_seed(0)
    enc = build_encoder(latent, {11, 12, 13} if norm_enc is None else norm_enc)
    dec = build_decoder(latent, {3, 4, 5} if norm_dec is None else norm_dec)
    with torch.no_grad():  # an output that varies around mid-grey instead of saturating at 0 or 1
        dec[-1].weight.mul_(20.0)
        dec[-1].bias.fill_(0.5)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half() for k, v in enc.state_dict().items()}, folder / "taetest_encoder.safetensors")
    save_file({k: v.half() for k, v in dec.state_dict().items()}, folder / "taetest_decoder.safetensors")
    return enc, dec


def test_taesd_generator_reads_the_architecture_from_the_weights(tmp_path):
    enc, dec = _write_taesd(tmp_path / "taef2")
    gen = build_generator(f"taesd:{tmp_path / 'taef2'}", device="cpu")
    assert gen.name == "taesd:taef2"
    assert [i for i, m in enumerate(gen.encoder) if getattr(m, "pool", None) is not None] == [11, 12, 13]
    assert [i for i, m in enumerate(gen.decoder) if getattr(m, "pool", None) is not None] == [3, 4, 5]
    assert gen.encoder[-1].out_channels == 32
    rng = np.random.default_rng(0)
    imgs = [
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        for h, w in ((37, 50), (64, 64), (37, 50))
    ]
    out = gen.reconstruct(imgs)
    assert [o.size for o in out] == [i.size for i in imgs]
    # the same computation by hand: pad to a multiple of 8, encode, decode (fp16-stored weights), clamp, crop
    x = torch.from_numpy(np.asarray(imgs[0], dtype=np.float32) / 255).permute(2, 0, 1)[None]
    padded, _ = pad_to_multiple(x, 8)
    enc.load_state_dict({k: v.half().float() for k, v in enc.state_dict().items()})
    dec.load_state_dict({k: v.half().float() for k, v in dec.state_dict().items()})
    with torch.no_grad():
        want = (dec.eval()(enc.eval()(padded)).clamp(0, 1)[..., :37, :50] * 255).round()
    got = torch.from_numpy(np.asarray(out[0], dtype=np.float32)).permute(2, 0, 1)[None]
    assert want.std() > 1  # not a constant image
    assert (got - want).abs().max() <= 1
    again = gen.reconstruct([imgs[0]])[0]
    diff = np.abs(np.asarray(out[0], dtype=int) - np.asarray(again, dtype=int))
    assert diff.max() <= 1  # no latent sampling: the same image twice is the same to 8-bit rounding


def test_train_vae_on_a_frozen_encoder_trains_a_decoder_that_loads_as_taesd_kl(tmp_path):
    from aligngemini.generators.latent_decoder import load_latent_decoder

    enc, _ = _write_taesd(tmp_path / "taetest", latent=8)
    (tmp_path / "taetest" / "LICENSE").write_text("MIT, for the test\n")
    write_photos(tmp_path / "photos", 5)
    out = tmp_path / "dec"
    argv = ["generators", "train-vae", "--images", str(tmp_path / "photos"), "--out", str(out), *TINY_TRAIN,
            "--encoder", f"taesd:{tmp_path / 'taetest'}"]  # fmt: skip
    assert cli_main([*argv, "--steps", "3"]) == 0
    source = tmp_path / "taetest" / "taetest_encoder.safetensors"
    assert (out / "taesd_encoder.safetensors").read_bytes() == source.read_bytes()
    assert (out / "ENCODER_LICENSE").read_text() == "MIT, for the test\n"
    arch = json.loads((out / "kl_decoder.json").read_text())
    assert arch["latent_channels"] == 8  # the encoder's, not the default 4
    assert arch["encoder"].startswith("taesd:")
    assert not (out / "config.json").exists()  # not a whole AutoencoderKL: 'vae:' would be the wrong loader
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and np.isfinite(metrics["encoder_own_decoder_psnr_db"])
    assert "taesd-kl:<this folder>" in (out / "MODEL_CARD.md").read_text()
    # the generator is the source encoder (never trained) followed by the decoder trained here
    gen = build_generator(f"taesd-kl:{out}", device="cpu")
    assert gen.name == "taesd-kl:dec"
    img = photo_like(21, 19)
    got = np.asarray(gen.reconstruct([img])[0], dtype=np.float32)
    _, dec = load_latent_decoder(out)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None]
    padded, _ = pad_to_multiple(x, 8)
    enc.load_state_dict({k: v.half().float() for k, v in enc.state_dict().items()})  # as stored: fp16
    with torch.no_grad():
        want = ((dec(enc.eval()(padded)) + 1) / 2).clamp(0, 1)[0, :, :19, :21].permute(1, 2, 0) * 255
    assert got.shape == (19, 21, 3) and np.abs(got - want.round().numpy()).max() <= 1
    assert cli_main([*argv, "--steps", "5", "--resume"]) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 5
    # wrong inputs: a spec that is not a TAESD folder, a folder without the decoder's files
    bad = [
        "generators",
        "train-vae",
        "--images",
        str(tmp_path / "photos"),
        "--out",
        str(tmp_path / "x"),
        *TINY_TRAIN,
    ]
    assert cli_main([*bad, "--encoder", "vae:somewhere"]) == 2
    assert not (tmp_path / "x").exists()
    (tmp_path / "encoder-only").mkdir()  # the reference decoder missing: refused before any training
    (tmp_path / "encoder-only" / source.name).write_bytes(source.read_bytes())
    assert cli_main([*bad, "--encoder", f"taesd:{tmp_path / 'encoder-only'}"]) == 2
    assert not (tmp_path / "x").exists()
    with pytest.raises(GeneratorSpecError, match="missing kl_decoder.safetensors, kl_decoder.json"):
        build_generator(f"taesd-kl:{tmp_path / 'taetest'}", device="cpu")


def test_spectral_loss_ignores_phase_and_sees_lost_detail():
    from aligngemini.generators.train_vae import band_energy_l1

    x = torch.from_numpy(np.asarray(photo_like(64, 64), dtype=np.float32) / 255).permute(2, 0, 1)[None]
    shifted = x.roll(shifts=(5, 9), dims=(-2, -1))  # a circular shift changes every phase, no magnitude
    soft = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)  # the same scene, less detail
    assert float(band_energy_l1(x, x)) == 0
    assert float(band_energy_l1(shifted, x)) < 1e-4 < float((shifted - x).abs().mean())
    assert float(band_energy_l1(soft, x)) > 0.1


def test_train_vae_init_starts_a_new_run_from_earlier_weights(tmp_path):
    from safetensors.torch import load_file

    _write_taesd(tmp_path / "taetest", latent=8)
    write_photos(tmp_path / "photos", 5)
    base = ["generators", "train-vae", "--images", str(tmp_path / "photos"), *TINY_TRAIN,
            "--encoder", f"taesd:{tmp_path / 'taetest'}"]  # fmt: skip
    first, tuned = tmp_path / "dec", tmp_path / "tuned"
    assert cli_main([*base, "--out", str(first), "--steps", "3"]) == 0
    # at learning rate 0 the new run's weights are the ones it started from, to the bit
    argv = [*base, "--out", str(tuned), "--init", str(first), "--spectral-weight", "0.1"]
    assert cli_main([*argv, "--steps", "2", "--lr", "0"]) == 0
    a, b = load_file(first / "kl_decoder.safetensors"), load_file(tuned / "kl_decoder.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = (tuned / "MODEL_CARD.md").read_text()
    assert "0.1 x ring-energy L1" in card and f"started from the weights of `{first}`" in card
    assert "Undertrained" in card and "decoder_detail.py" in card  # a spectral run's gap may be texture
    assert json.loads((tuned / "metrics.json").read_text())["config"]["init"] == str(first)
    # with the loss on, the weights move
    assert cli_main([*argv, "--steps", "2", "--overwrite"]) == 0
    b = load_file(tuned / "kl_decoder.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # refused before anything is written: another architecture, another encoder, not a decoder, itself
    bad = [*base, "--out", str(tmp_path / "x"), "--steps", "2"]
    assert cli_main([*bad, "--init", str(first), "--channels", "8,8,8,16"]) == 2
    other = tmp_path / "other"
    other.mkdir()
    for f in first.iterdir():
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    (other / "taesd_encoder.safetensors").write_bytes(b"not the same encoder")
    assert cli_main([*bad, "--init", str(other)]) == 2
    assert cli_main([*bad, "--init", str(tmp_path / "photos")]) == 2
    assert not (tmp_path / "x").exists()
    assert cli_main([*base, "--out", str(first), "--init", str(first), "--steps", "2", "--overwrite"]) == 2
    whole_vae = bad[: bad.index("--encoder")] + bad[bad.index("--encoder") + 2 :]
    assert cli_main([*whole_vae, "--init", str(first)]) == 2  # a decoder cannot start a whole VAE
    # a whole VAE starts from a whole VAE's weights the same way
    vae = ["generators", "train-vae", "--images", str(tmp_path / "photos"), *TINY_TRAIN, "--steps", "2"]
    assert cli_main([*vae, "--out", str(tmp_path / "vae")]) == 0
    start_there = ["--init", str(tmp_path / "vae"), "--lr", "0"]
    assert cli_main([*vae, "--out", str(tmp_path / "vae2"), *start_there]) == 0
    a = load_file(tmp_path / "vae" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "vae2" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    from aligngemini.generators.train_vae import adaptive_weight, patch_discriminator

    w = torch.nn.Parameter(torch.ones(3, 4))
    x = torch.randn(3, 4)
    rec, adv = (3 * w * x).sum(), (w * x).sum()  # gradients 3x and x
    assert float(adaptive_weight(rec, adv, w)) == pytest.approx(3, rel=1e-3)
    critic = patch_discriminator(width=8)
    assert critic(torch.zeros(2, 3, 64, 64)).shape == (2, 1, 14, 14)  # one logit per patch


def test_train_vae_adversarial_term_moves_the_weights_resumes_exactly_and_is_named(tmp_path):
    from safetensors.torch import load_file

    _write_taesd(tmp_path / "taetest", latent=8)
    write_photos(tmp_path / "photos", 5)
    base = ["generators", "train-vae", "--images", str(tmp_path / "photos"), *TINY_TRAIN,
            "--encoder", f"taesd:{tmp_path / 'taetest'}", "--lr", "1e-3", "--eval-every", "2"]  # fmt: skip
    adv = [*base, "--adversarial-weight", "0.5"]
    assert cli_main([*base, "--out", str(tmp_path / "plain"), "--steps", "4"]) == 0
    assert cli_main([*adv, "--out", str(tmp_path / "adv"), "--steps", "4"]) == 0
    plain = load_file(tmp_path / "plain" / "kl_decoder.safetensors")
    whole = load_file(tmp_path / "adv" / "kl_decoder.safetensors")
    assert plain.keys() == whole.keys()  # the critic stays out of the generator's files
    assert any(not torch.equal(plain[k], whole[k]) for k in plain)  # the same seed: only the critic differs
    ckpt = load_file(tmp_path / "adv" / "checkpoint" / "model.safetensors")
    assert any(k.startswith("critic.") for k in ckpt) and any(k.startswith("model.") for k in ckpt)
    card = (tmp_path / "adv" / "MODEL_CARD.md").read_text()
    assert "0.5 x adaptively weighted PatchGAN hinge loss" in card and "detail ratio" in card
    metrics = json.loads((tmp_path / "adv" / "metrics.json").read_text())
    assert [h["step"] for h in metrics["history"]] == [2, 4]
    assert all(np.isfinite(h["val_detail"]) and h["val_detail"] > 0 for h in metrics["history"])
    assert metrics["val_detail_ratio"] == round(metrics["history"][-1]["val_detail"], 4)
    # interrupted at step 2 and resumed: the critic and its optimiser state come back, so the run is the same
    assert cli_main([*adv, "--out", str(tmp_path / "resumed"), "--steps", "2"]) == 0
    assert cli_main([*adv, "--out", str(tmp_path / "resumed"), "--steps", "4", "--resume"]) == 0
    resumed = load_file(tmp_path / "resumed" / "kl_decoder.safetensors")
    assert max(float((whole[k] - resumed[k]).abs().max()) for k in whole) < 1e-5
    # a checkpoint with a critic is not resumed without one (nor the other way), and is left as it was
    before = (tmp_path / "adv" / "checkpoint" / "model.safetensors").read_bytes()
    assert cli_main([*base, "--out", str(tmp_path / "adv"), "--steps", "6", "--resume"]) == 2
    assert cli_main([*adv, "--out", str(tmp_path / "plain"), "--steps", "6", "--resume"]) == 2
    assert (tmp_path / "adv" / "checkpoint" / "model.safetensors").read_bytes() == before


def test_train_vae_distill_fits_the_source_decoder_and_needs_an_encoder(tmp_path):
    from safetensors.torch import load_file

    _write_taesd(tmp_path / "taetest", latent=8)
    write_photos(tmp_path / "photos", 5)
    base = ["generators", "train-vae", "--images", str(tmp_path / "photos"), *TINY_TRAIN, "--steps", "3",
            "--lr", "1e-3"]  # fmt: skip
    enc = ["--encoder", f"taesd:{tmp_path / 'taetest'}"]
    assert cli_main([*base, *enc, "--out", str(tmp_path / "photo-target")]) == 0
    assert cli_main([*base, *enc, "--distill", "--out", str(tmp_path / "distilled")]) == 0
    a = load_file(tmp_path / "photo-target" / "kl_decoder.safetensors")
    b = load_file(tmp_path / "distilled" / "kl_decoder.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the same seed and crops: only the target differs
    card = (tmp_path / "distilled" / "MODEL_CARD.md").read_text()
    assert "own decoder's output (distillation), not the photos" in card
    assert (
        cli_main([*base, "--distill", "--out", str(tmp_path / "no-encoder")]) == 2
    )  # a whole VAE has no teacher
    assert not (tmp_path / "no-encoder").exists()


def test_taesd_in_bf16_computes_in_bf16_and_stays_close_to_fp32(tmp_path):
    _write_taesd(tmp_path / "taef2")
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    fp32 = build_generator(f"taesd:{tmp_path / 'taef2'}", device="cpu")
    bf16 = build_generator(f"taesd:{tmp_path / 'taef2'}", device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.decoder.parameters()} == {torch.bfloat16}
    a, b = (np.asarray(g.reconstruct([img])[0], dtype=float) for g in (fp32, bf16))
    assert 0 < np.abs(a - b).mean() < 4  # another arithmetic, the same reconstruction to a few levels


def test_taesd_without_norm_branches_and_with_4_latent_channels(tmp_path):
    _write_taesd(tmp_path / "taesd", latent=4, norm_enc=set(), norm_dec=set())
    gen = build_generator(f"taesd:{tmp_path / 'taesd'}", device="cpu")
    assert all(getattr(m, "pool", None) is None for m in [*gen.encoder, *gen.decoder])
    assert gen.encoder[-1].out_channels == 4
    assert gen.reconstruct([Image.new("RGB", (20, 12), (9, 99, 199))])[0].size == (20, 12)


def test_taesd_errors_name_the_fix(tmp_path):
    with pytest.raises(GeneratorSpecError, match="no such folder"):
        build_generator(f"taesd:{tmp_path / 'missing'}")
    (tmp_path / "pth").mkdir()
    (tmp_path / "pth" / "taef2_encoder.pth").write_bytes(b"pickle")
    with pytest.raises(GeneratorSpecError, match="safetensors"):
        build_generator(f"taesd:{tmp_path / 'pth'}")
