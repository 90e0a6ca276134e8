"""Layout readers on tiny generated trees, one per named benchmark, and layout autodetection."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aligngemini.eval import layouts as L


def _img(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value % 256, 10, 20)).save(path)
    return path


def _fill(folder: Path, n: int, value: int = 0) -> None:
    for i in range(n):
        _img(folder / f"im{i:02d}.png", value + i)


def _counts(evalset: L.EvalSet) -> dict[str, tuple[int, int]]:
    labels = evalset.labels
    return {
        k: (int((labels[i] == 0).sum()), int((labels[i] == 1).sum()))
        for k, i in evalset.subset_indices().items()
    }


def test_genimage(tmp_path: Path) -> None:
    root = tmp_path / "GenImage"
    for gen in ("ADM", "Midjourney"):
        base = root / gen / f"imagenet_{gen.lower()}"
        _fill(base / "val" / "ai", 3)
        _fill(base / "val" / "nature", 2)
        _fill(base / "train" / "ai", 4)  # never used for evaluation
    assert L.detect_layout(root) == "genimage"
    es = L.read_data([root])
    assert _counts(es) == {"ADM": (2, 3), "Midjourney": (2, 3)}
    assert all("train" not in it.path.parts for it in es.items)
    assert es.inputs[0]["layout"] == "genimage"


def test_forensynths_and_aigcdetect_collapse_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "ForenSynths"
    for cls in ("airplane", "car"):
        _fill(root / "progan" / cls / "0_real", 2)
        _fill(root / "progan" / cls / "1_fake", 1)
    _fill(root / "biggan" / "0_real", 2)
    _fill(root / "biggan" / "1_fake", 2)
    assert L.detect_layout(root) == "forensynths"
    assert _counts(L.read_data([root])) == {"biggan": (2, 2), "progan": (4, 2)}
    assert _counts(L.read_data([root], layout="aigcdetect")) == {"biggan": (2, 2), "progan": (4, 2)}


def test_aigibench_prefers_test_split(tmp_path: Path) -> None:
    root = tmp_path / "AIGIBench"
    for sub in ("CommunityAI", "SocialRF"):
        _fill(root / "test" / sub / "0_real", 2)
        _fill(root / "test" / sub / "1_fake", 3)
    _fill(root / "train" / "sdv1.4" / "1_fake", 5)
    assert L.detect_layout(root) == "aigibench"
    assert _counts(L.read_data([root])) == {"CommunityAI": (2, 3), "SocialRF": (2, 3)}
    only = L.read_data([root], subsets=["SocialRF"])
    assert _counts(only) == {"SocialRF": (2, 3)}
    with pytest.raises(L.LayoutError, match="unknown subset"):
        L.read_data([root], subsets=["nope"])


def test_chameleon_single_subset(tmp_path: Path) -> None:
    root = tmp_path / "Chameleon"
    _fill(root / "test" / "0_real", 3)
    _fill(root / "test" / "1_fake", 2)
    assert L.detect_layout(root) == "chameleon"
    assert _counts(L.read_data([root])) == {"Chameleon": (3, 2)}
    # Pointing at the split folder names the benchmark after its parent.
    assert _counts(L.read_data([root / "test"], layout="chameleon")) == {"Chameleon": (3, 2)}


def test_wildrf_platforms(tmp_path: Path) -> None:
    root = tmp_path / "WildRF"
    for plat in ("facebook", "reddit", "twitter"):
        _fill(root / "test" / plat / "real", 2)
        _fill(root / "test" / plat / "fake", 1)
        _fill(root / "train" / plat / "fake", 3)
    assert L.detect_layout(root) == "wildrf"
    assert _counts(L.read_data([root])) == {"facebook": (2, 1), "reddit": (2, 1), "twitter": (2, 1)}


def test_synthwildx_shared_reals_and_missing_files(tmp_path: Path) -> None:
    root = tmp_path / "synthwildx"
    rows = []
    for typ, n in (("dalle3", 2), ("firefly", 2), ("midjourney", 1), ("real", 3)):
        for i in range(n):
            rel = f"{typ}/F{i}.jpg"
            _img(root / rel, i)
            rows.append({"url": f"https://example.invalid/{typ}{i}", "filename": rel, "typ": typ})
    rows.append({"url": "https://example.invalid/gone", "filename": "dalle3/gone.jpg", "typ": "dalle3"})
    with (root / "list.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["url", "filename", "typ"])
        w.writeheader()
        w.writerows(rows)
    assert L.detect_layout(root) == "synthwildx"
    assert L.detect_layout(root / "list.csv") == "synthwildx"
    es = L.read_data([root])
    assert _counts(es) == {"dalle3": (3, 2), "firefly": (3, 2), "midjourney": (3, 1)}
    assert len(es.items) == 8 and any("not on disk" in n for n in es.notes)


def test_bfree_online_csv(tmp_path: Path) -> None:
    root = tmp_path / "bfree"
    rows = []
    for label, n in (("REAL", 2), ("FAKE", 3)):
        for i in range(n):
            rel = f"{label}/src{i}/img{i:05d}.jpg"
            _img(root / rel, i)
            rows.append({"filename": rel, "label": label, "source_id": f"src{i}", "date": "2024-01-01",
                         "days_since_1st_post": str(i), "w": "8", "h": "8", "md5": "x", "url": "u"})  # fmt: skip
    with (root / "BFree_viral_images.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert L.detect_layout(root) == "bfree-online"
    es = L.read_data([root])
    assert _counts(es) == {"bfree": (2, 3)}
    assert {it.extra["days_since_1st_post"] for it in es.items} == {"0", "1", "2"}


def test_drct2m_shared_coco_reals(tmp_path: Path) -> None:
    root = tmp_path / "AIGC_data"
    _fill(root / "MSCOCO" / "val2017", 4)
    _fill(root / "MSCOCO" / "train2017", 5)
    for gen in ("stable-diffusion-v1-4", "sdxl-turbo"):
        _fill(root / "DRCT-2M" / gen / "val2017", 2)
        _fill(root / "DRCT-2M" / gen / "train2017", 3)
    assert L.detect_layout(root) == "drct2m"
    assert _counts(L.read_data([root])) == {"sdxl-turbo": (4, 2), "stable-diffusion-v1-4": (4, 2)}
    # The brief's flat form: real/ + <generator>/val2017
    flat = tmp_path / "drct_flat"
    _fill(flat / "real", 3)
    _fill(flat / "sd21" / "val2017", 2)
    assert L.detect_layout(flat) == "drct2m"
    assert _counts(L.read_data([flat])) == {"sd21": (3, 2)}


def test_synthbuster_raise_reals(tmp_path: Path) -> None:
    root = tmp_path / "synthbuster"
    _fill(root / "real_RAISE_1k", 3)
    for gen in ("dalle2", "glide", "midjourney-v5"):
        _fill(root / gen, 2)
    (root / "prompts.csv").write_text("image,prompt\n")
    assert L.detect_layout(root) == "synthbuster"
    assert _counts(L.read_data([root])) == {"dalle2": (3, 2), "glide": (3, 2), "midjourney-v5": (3, 2)}


def test_plain_folder_and_multiple_inputs(tmp_path: Path) -> None:
    a = tmp_path / "mine"
    _fill(a / "real", 2)
    _fill(a / "fake", 3)
    assert L.detect_layout(a) == "folder"
    assert _counts(L.read_data([a])) == {"mine": (2, 3)}
    b = tmp_path / "WildRF"
    _fill(b / "test" / "reddit" / "real", 1)
    _fill(b / "test" / "reddit" / "fake", 1)
    es = L.read_data([a, b])
    assert _counts(es) == {"mine": (2, 3), "WildRF/reddit": (1, 1)}
    assert es.benchmark_subsets() == {"mine": ["mine"], "WildRF": ["WildRF/reddit"]}
    assert [i["layout"] for i in es.inputs] == ["folder", "wildrf"]
    # ai/ + real/ without GenImage's val/ split is a plain folder, not GenImage.
    c = tmp_path / "realorai_like"
    _fill(c / "ai", 2)
    _fill(c / "real", 2)
    assert L.detect_layout(c) == "folder"
    assert _counts(L.read_data([c])) == {"realorai_like": (2, 2)}


def test_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(L.LayoutError, match="no such file"):
        L.read_data([tmp_path / "missing"])
    with pytest.raises(L.LayoutError, match="unknown layout"):
        L.read_data([tmp_path], layout="imagenet")
    empty = tmp_path / "empty" / "real"
    empty.mkdir(parents=True)
    with pytest.raises(L.LayoutError, match="found no images"):
        L.read_data([tmp_path / "empty"], layout="folder")


def test_single_class_input_is_noted(tmp_path: Path) -> None:
    root = tmp_path / "fakes_only"
    _fill(root / "fake", 2)
    es = L.read_data([root])
    assert any("only fake" in n for n in es.notes)
    assert np.all(es.labels == 1)


def test_manifest_rows_to_items(tmp_path: Path) -> None:
    """Rows shaped like aligngemini.data.manifest.ManifestRow: subsets from extra['subset'] or the fake's
    generator, reals shared, relative paths against the manifest's folder, split filter."""
    from dataclasses import dataclass, field

    @dataclass
    class Row:
        path: str
        label: str
        generator: str | None = None
        split: str | None = None
        group: str | None = None
        extra: dict = field(default_factory=dict)

    rows = [Row("a.png", "real", split="test"), Row("b.png", "fake", "sdxl", "test"), Row("c.png", "fake", "flux", "test"),
            Row("d.png", "fake", "flux", "train"), Row("e.png", "real", None, "test", extra={"subset": "flux"})]  # fmt: skip
    items = L._items_from_manifest_rows(rows, "m", base=tmp_path, split="test")
    assert [it.path.name for it in items] == ["a.png", "b.png", "c.png", "e.png"]
    assert [it.subset for it in items] == [None, "sdxl", "flux", "flux"]
    assert items[0].path == tmp_path / "a.png"
    es = L.EvalSet(items, [{"path": "m"}])
    assert {k: sorted(int(i) for i in v) for k, v in es.subset_indices().items()} == {
        "sdxl": [0, 1],
        "flux": [0, 2, 3],
    }
    # Fakes without generators: one subset named after the manifest.
    plain = L._items_from_manifest_rows(
        [Row("x.png", "fake"), Row("y.png", "real")], "m", base=tmp_path, split=None
    )
    assert [it.subset for it in plain] == ["m", None]
    with pytest.raises(L.LayoutError, match="label"):
        L._items_from_manifest_rows([Row("z.png", "maybe")], "m", base=tmp_path, split=None)


def test_csv_manifest(tmp_path: Path) -> None:
    _fill(tmp_path / "ai", 2)
    _fill(tmp_path / "real", 3)
    lines = (
        ["file,label,sha256"]
        + [f"ai/im{i:02d}.png,fake,x" for i in range(2)]
        + [f"real/im{i:02d}.png,real,x" for i in range(3)]
    )
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    assert L.detect_layout(tmp_path / "manifest.csv") == "manifest"
    assert _counts(L.read_data([tmp_path / "manifest.csv"])) == {tmp_path.name: (3, 2)}
    (tmp_path / "nolabel.csv").write_text("file,kind\na.png,x\n")
    with pytest.raises(L.LayoutError, match="label column"):
        L.read_data([tmp_path / "nolabel.csv"])
