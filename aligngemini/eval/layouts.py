"""Benchmark layouts: a folder, CSV or manifest on disk -> labelled images grouped into *subsets*.

Each reader returns ``EvalItem`` rows. ``subset`` names the group a row is scored in (a generator, a
platform); ``None`` marks a *shared real*: a real image that joins every subset of its benchmark, as in
Synthbuster (RAISE reals against each generator), DRCT-2M (MS-COCO reals) and SynthWildX (X reals).

Named layouts (``--layout NAME``; ``auto`` picks one by looking):

  genimage      <generator>/[imagenet_*/]val/ai|nature
  forensynths   <generator>/[<class>/]0_real|1_fake          (ForenSynths, AIGCDetectBenchmark test sets)
  aigcdetect    same as forensynths
  aigibench     [test/]<subset>/0_real|1_fake                 (CommunityAI, SocialRF, ...)
  chameleon     [test/]0_real|1_fake                          (one subset)
  wildrf        [test/]<platform>/real|fake
  synthwildx    list.csv (url,filename,typ) + the files it names; typ "real" or a generator
  bfree-online  BFree_viral_images.csv (filename,label REAL|FAKE,source_id,days_since_1st_post,...)
  drct2m        <real|MSCOCO>/val2017 + <generator>/val2017
  synthbuster   real_RAISE_1k/ + <generator>/
  folder        any tree with real/fake, 0_real/1_fake or nature/ai folders (subset = the path above them)
  manifest      a JSONL manifest (aligngemini.data.manifest) or a CSV with path and label columns
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aligngemini.decode import IMAGE_SUFFIXES

REAL_DIR_NAMES = frozenset({"0_real", "real", "nature", "reals"})
FAKE_DIR_NAMES = frozenset({"1_fake", "fake", "ai", "fakes", "synthetic", "generated"})
SPLITS = ("test", "val", "train")
MANIFEST_SUFFIXES = (".jsonl", ".csv", ".tsv")
_MAX_SCAN_DEPTH = 6
_GENERIC_STEMS = frozenset({"manifest", "list", "index", "labels", "data", "test", "val", "train"})


class LayoutError(ValueError):
    """Data that no reader can use; the message names the path and what was expected."""


@dataclass
class EvalItem:
    path: Path
    label: int  # 0 real, 1 fake
    subset: str | None  # None: a shared real, scored in every subset of its benchmark
    generator: str | None = None
    benchmark: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalSet:
    """Items from one or more inputs; subset keys are ``benchmark/subset`` when there are several inputs."""

    items: list[EvalItem]
    inputs: list[dict[str, Any]]  # per input: path, layout, benchmark, n, notes
    notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        return np.array([it.label for it in self.items], dtype=np.int64)

    @property
    def benchmarks(self) -> list[str]:
        return list(dict.fromkeys(it.benchmark for it in self.items))

    def subset_indices(self) -> dict[str, np.ndarray]:
        """Indices of the items scored in each subset (shared reals join every subset of their benchmark)."""
        named: dict[str, dict[str, list[int]]] = {}
        shared: dict[str, list[int]] = {}
        for i, it in enumerate(self.items):
            if it.subset is None:
                shared.setdefault(it.benchmark, []).append(i)
            else:
                named.setdefault(it.benchmark, {}).setdefault(it.subset, []).append(i)
        out: dict[str, np.ndarray] = {}
        for bench in self.benchmarks:
            subsets = named.get(bench, {})
            if not subsets:  # reals only: one subset named after the benchmark
                subsets = {bench: []}
            for name, idx in subsets.items():
                key = f"{bench}/{name}" if len(self.inputs) > 1 and name != bench else name
                out[key] = np.array(sorted(idx + shared.get(bench, [])), dtype=np.int64)
        return out

    def benchmark_subsets(self) -> dict[str, list[str]]:
        """Subset keys per benchmark (for per-benchmark summaries)."""
        keys = list(self.subset_indices())
        out: dict[str, list[str]] = {}
        for bench in self.benchmarks:
            prefix = f"{bench}/"
            mine = [k for k in keys if k == bench or (len(self.inputs) > 1 and k.startswith(prefix))]
            out[bench] = mine if len(self.inputs) > 1 else keys
        return out


# --------------------------------------------------------------------------------------------------
# Helpers


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _images_under(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if _is_image(p) and not name.startswith("."):
                out.append(p)
    return out


def _label_of_dir(name: str) -> int | None:
    low = name.lower()
    if low in REAL_DIR_NAMES:
        return 0
    if low in FAKE_DIR_NAMES:
        return 1
    return None


@dataclass
class _LabelDir:
    path: Path
    label: int
    parts: tuple[str, ...]  # path components between the root and the label folder
    split: str | None


def _find_label_dirs(root: Path) -> list[_LabelDir]:
    """Folders named like a class (real/fake, 0_real/1_fake, nature/ai), without descending into them."""
    found: list[_LabelDir] = []

    def walk(folder: Path, parts: tuple[str, ...]) -> None:
        if len(parts) > _MAX_SCAN_DEPTH:
            return
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            label = _label_of_dir(child.name)
            if label is not None:
                split = next((p.lower() for p in parts if p.lower() in SPLITS), None)
                found.append(_LabelDir(child, label, parts, split))
            else:
                walk(child, (*parts, child.name))

    walk(root, ())
    return found


def _choose_split(dirs: list[_LabelDir], split: str | None) -> list[_LabelDir]:
    """Keep the requested split; by default the test split if there is one, else val, else everything
    that is not train (train only when nothing else exists)."""
    if split:
        kept = [d for d in dirs if d.split == split.lower()]
        if not kept:
            raise LayoutError(f"no '{split}' split among {sorted({d.split or '-' for d in dirs})}")
        return kept
    present = {d.split for d in dirs}
    for preferred in ("test", "val"):
        if preferred in present:
            return [d for d in dirs if d.split == preferred]
    non_train = [d for d in dirs if d.split != "train"]
    return non_train or dirs


def _strip(parts: Iterable[str]) -> list[str]:
    return [p for p in parts if p.lower() not in SPLITS]


def _bench_name(root: Path) -> str:
    """A benchmark's display name: the folder, skipping a trailing split folder (``Chameleon/test``)."""
    r = root.resolve()
    while r.name.lower() in SPLITS and r.parent != r:
        r = r.parent
    if r.is_file():  # a generic file name (manifest.csv, list.csv) says less than its folder's name
        return r.parent.name if r.stem.lower() in _GENERIC_STEMS else r.stem
    return r.name


def _items_from_label_dirs(
    root: Path, dirs: list[_LabelDir], subset_of: Callable[[list[str]], str], bench: str
) -> list[EvalItem]:
    items = []
    for d in dirs:
        subset = subset_of(_strip(d.parts))
        for p in _images_under(d.path):
            items.append(EvalItem(p, d.label, subset, subset if d.label == 1 else None, bench))
    return items


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return [c.strip() for c in (reader.fieldnames or [])], rows


def _csv_header(path: Path) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            first = fh.readline()
    except OSError:
        return []
    return [c.strip().lower() for c in next(csv.reader([first]), [])]


def _is_synthwildx_csv(path: Path) -> bool:
    return {"filename", "typ"} <= set(_csv_header(path))


def _is_bfree_csv(path: Path) -> bool:
    head = set(_csv_header(path))
    return {"filename", "label"} <= head and ({"source_id", "days_since_1st_post"} & head) != set()


# --------------------------------------------------------------------------------------------------
# Readers: root -> items (benchmark-relative subsets)


def read_genimage(root: Path, split: str | None = None) -> list[EvalItem]:
    dirs = _choose_split(_find_label_dirs(root), split)
    bench = _bench_name(root)

    def subset(parts: list[str]) -> str:
        parts = [p for p in parts if not p.lower().startswith("imagenet_")]
        return parts[0] if parts else bench

    return _items_from_label_dirs(root, dirs, subset, bench)


def _first_part_reader(root: Path, split: str | None = None) -> list[EvalItem]:
    """``<subset>/[<class>/]0_real|1_fake``: the first folder names the subset, class folders collapse."""
    dirs = _choose_split(_find_label_dirs(root), split)
    bench = _bench_name(root)
    return _items_from_label_dirs(root, dirs, lambda parts: parts[0] if parts else bench, bench)


read_forensynths = _first_part_reader
read_aigibench = _first_part_reader
read_wildrf = _first_part_reader


def read_chameleon(root: Path, split: str | None = None) -> list[EvalItem]:
    dirs = _choose_split(_find_label_dirs(root), split)
    bench = _bench_name(root)
    return _items_from_label_dirs(root, dirs, lambda parts: bench, bench)


def read_folder(root: Path, split: str | None = None) -> list[EvalItem]:
    """Any tree with class folders; the subset is the path above the class folder."""
    dirs = _find_label_dirs(root)
    if not dirs:
        raise LayoutError(
            f"{root}: no class folders (real/fake, 0_real/1_fake, nature/ai) found; "
            "give a named --layout, a manifest, or organise the images by class"
        )
    dirs = _choose_split(dirs, split)
    bench = _bench_name(root)
    return _items_from_label_dirs(root, dirs, lambda parts: "/".join(parts) if parts else bench, bench)


def _listing(csv_path: Path) -> tuple[Path, str, list[dict[str, str]]]:
    """A benchmark listed in a CSV: the folder its paths are relative to, the benchmark's name, the rows."""
    base = csv_path.parent
    _, rows = _read_csv(csv_path)
    return base, _bench_name(base), rows


def read_synthwildx(root: Path, split: str | None = None) -> list[EvalItem]:
    """SynthWildX (Cozzolino et al. 2024): ``list.csv`` with columns url, filename, typ; typ is ``real``
    or the generator (dalle3, firefly, midjourney). Files listed but not downloaded are skipped."""
    csv_path = root if root.is_file() else root / "list.csv"
    if not csv_path.is_file():
        raise LayoutError(f"{root}: SynthWildX needs its list.csv (columns url, filename, typ)")
    base, bench, rows = _listing(csv_path)
    items = []
    for row in rows:
        typ = (row.get("typ") or "").strip()
        rel = (row.get("filename") or "").strip()
        if not rel or not typ:
            continue
        label = 0 if typ.lower() == "real" else 1
        items.append(
            EvalItem(
                base / rel,
                label,
                None if label == 0 else typ,
                None if label == 0 else typ,
                bench,
                {"url": row.get("url")},
            )  # fmt: skip
        )
    return items


def read_bfree_online(root: Path, split: str | None = None) -> list[EvalItem]:
    """B-Free's viral-images set (BFree-Online): a CSV with filename, label (REAL/FAKE), source_id,
    date, days_since_1st_post, w, h, md5, url; one subset. Files not downloaded are skipped."""
    if root.is_file():
        csv_path = root
    else:
        found = sorted(p for p in root.glob("*.csv") if _is_bfree_csv(p))
        if not found:
            raise LayoutError(f"{root}: BFree-Online needs its CSV (filename, label, source_id, ...)")
        csv_path = found[0]
    base, bench, rows = _listing(csv_path)
    items = []
    for row in rows:
        rel = (row.get("filename") or "").strip()
        lab = (row.get("label") or "").strip().lower()
        if not rel or lab not in ("real", "fake"):
            continue
        extra = {k: row.get(k) for k in ("source_id", "date", "days_since_1st_post", "md5") if row.get(k)}
        label = 1 if lab == "fake" else 0
        items.append(EvalItem(base / rel, label, bench, "unknown" if label else None, bench, extra))
    return items


def read_drct2m(root: Path, split: str | None = None) -> list[EvalItem]:
    """DRCT-2M: MS-COCO reals (``real/``, ``MSCOCO/``, ``coco/``, with or without ``val2017/``) shared by
    every generator's ``<generator>/val2017`` fakes."""
    split_dir = split or "val2017"
    real_names = {"real", "mscoco", "coco", "0_real"}
    reals: list[Path] = []
    fakes: dict[str, list[Path]] = {}
    for dirpath, dirnames, _ in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        depth = len(here.relative_to(root).parts)
        if depth > 4:
            dirnames[:] = []
            continue
        if here.name == split_dir:
            owner = here.parent
            if owner.name.lower() in real_names:
                reals.extend(_images_under(here))
            else:
                rel = owner.relative_to(root).parts
                name = owner.name if owner != root else _bench_name(root)
                if name in fakes:  # same generator name under two parents (e.g. DR variants): qualify
                    name = "/".join(rel[-2:])
                fakes[name] = _images_under(here)
            dirnames[:] = []
        elif here.name.lower() in real_names and here != root and not (here / split_dir).is_dir():
            reals.extend(_images_under(here))
            dirnames[:] = []
    if not fakes:
        raise LayoutError(f"{root}: no <generator>/{split_dir} folders (DRCT-2M layout)")
    bench = _bench_name(root)
    items = [EvalItem(p, 0, None, None, bench) for p in reals]
    for gen, paths in fakes.items():
        items.extend(EvalItem(p, 1, gen, gen, bench) for p in paths)
    return items


def read_synthbuster(root: Path, split: str | None = None) -> list[EvalItem]:
    """Synthbuster (Bammey 2023): one folder per generator of fakes, RAISE-1k reals (``real_RAISE_1k``,
    or any folder with 'raise' or 'real' in its name) shared by all of them."""
    base = root
    if not any(_is_raise(d) for d in _subdirs(root)) and (root / "synthbuster").is_dir():
        base = root / "synthbuster"
    dirs = _subdirs(base)
    real_dirs = [d for d in dirs if _is_raise(d)]
    if not real_dirs:
        raise LayoutError(f"{root}: no RAISE reals folder (real_RAISE_1k) found (Synthbuster layout)")
    bench = _bench_name(root)
    items = [EvalItem(p, 0, None, None, bench) for d in real_dirs for p in _images_under(d)]
    for d in dirs:
        if d in real_dirs:
            continue
        paths = _images_under(d)
        items.extend(EvalItem(p, 1, d.name, d.name, bench) for p in paths)
    return items


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def _is_raise(d: Path) -> bool:
    low = d.name.lower()
    return "raise" in low or low in ("real", "0_real", "reals")


def read_manifest_file(path: Path, split: str | None = None) -> list[EvalItem]:
    """A JSONL manifest (``aligngemini.data.manifest``), or a CSV with a path column (path, file or
    filename) and a label column (real/fake or 0/1), optionally generator, subset and split. The subset
    is ``extra['subset']`` (CSV: ``subset``) when given, else the generator for fakes; reals without a
    subset are shared across the manifest's subsets."""
    if path.suffix.lower() in (".csv", ".tsv"):
        return _items_from_manifest_rows(
            _csv_manifest_rows(path), _bench_name(path), base=path.parent, split=split
        )
    from aligngemini.data.manifest import read_manifest

    try:
        rows = read_manifest(path)
    except ValueError as exc:
        raise LayoutError(str(exc)) from None
    return _items_from_manifest_rows(rows, _bench_name(path), base=path.parent, split=split)


@dataclass
class _CsvRow:
    path: str
    label: str
    generator: str | None = None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _csv_manifest_rows(path: Path) -> list[_CsvRow]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh, delimiter=delimiter)
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        path_col = next((cols[c] for c in ("path", "file", "filename", "image") if c in cols), None)
        label_col = cols.get("label")
        if path_col is None or label_col is None:
            raise LayoutError(
                f"{path}: a CSV manifest needs a path column (path, file or filename) and a label column; "
                f"it has {sorted(cols.values())}"
            )
        rows = []
        for rec in reader:
            extra = {"subset": rec[cols["subset"]]} if "subset" in cols and rec[cols["subset"]] else {}
            rows.append(_CsvRow(rec[path_col], rec[label_col].strip(), (rec.get(cols.get("generator", ""), "") or None),
                                (rec.get(cols.get("split", ""), "") or None), extra))  # fmt: skip
        return rows


def _items_from_manifest_rows(
    rows: Iterable[Any], bench: str, *, base: Path, split: str | None
) -> list[EvalItem]:
    items = []
    for row in rows:
        row_split = getattr(row, "split", None)
        if split and row_split and str(row_split) != split:
            continue
        label_text = str(getattr(row, "label", "")).lower()
        if label_text not in ("real", "fake", "0", "1"):
            raise LayoutError(
                f"{bench}: row {getattr(row, 'path', '?')} has label {label_text!r}; want real/fake"
            )
        label = 1 if label_text in ("fake", "1") else 0
        extra = dict(getattr(row, "extra", None) or {})
        gen = getattr(row, "generator", None) or None
        subset = extra.get("subset") or (gen if label == 1 else None)
        path = Path(row.path)
        if not path.is_absolute():
            path = base / path
        info = {k: getattr(row, k) for k in ("source", "group", "split", "sha256") if getattr(row, k, None)}
        items.append(EvalItem(path, label, subset, gen, bench, {**info, **extra}))
    if items and all(it.subset is None for it in items if it.label == 1):
        for it in items:
            if it.label == 1:
                it.subset = bench
    return items


LAYOUTS: dict[str, Callable[..., list[EvalItem]]] = {
    "genimage": read_genimage,
    "forensynths": read_forensynths,
    "aigcdetect": read_forensynths,
    "aigibench": read_aigibench,
    "chameleon": read_chameleon,
    "wildrf": read_wildrf,
    "synthwildx": read_synthwildx,
    "bfree-online": read_bfree_online,
    "drct2m": read_drct2m,
    "synthbuster": read_synthbuster,
    "folder": read_folder,
    "manifest": read_manifest_file,
}
LAYOUT_CHOICES = ("auto", *LAYOUTS)


# --------------------------------------------------------------------------------------------------
# Detection


def detect_layout(path: str | os.PathLike) -> str:
    """Name of the layout of ``path`` (a folder, or a CSV/manifest file), judged from its structure."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() == ".csv":
            if _is_synthwildx_csv(p):
                return "synthwildx"
            if _is_bfree_csv(p):
                return "bfree-online"
        if p.suffix.lower() in MANIFEST_SUFFIXES:
            return "manifest"
        raise LayoutError(f"{p}: a file must be a manifest ({', '.join(MANIFEST_SUFFIXES)})")
    if not p.is_dir():
        raise LayoutError(f"{p}: no such file or folder")
    if (p / "list.csv").is_file() and _is_synthwildx_csv(p / "list.csv"):
        return "synthwildx"
    if any(_is_bfree_csv(c) for c in p.glob("*.csv")):
        return "bfree-online"
    for base in (p, p / "synthbuster"):
        subs = _subdirs(base)
        if any("raise" in d.name.lower() for d in subs) and len(subs) >= 2:
            return "synthbuster"
    if _has_val2017(p):
        return "drct2m"
    dirs = _find_label_dirs(p)
    if not dirs:
        return "folder"  # read_folder explains what it looked for
    names = {d.path.name.lower() for d in dirs}
    if "nature" in names or ("ai" in names and any(d.split == "val" for d in dirs)):
        return "genimage"
    kept = _choose_split(dirs, None)
    firsts = {tuple(_strip(d.parts))[:1] for d in kept}
    hint = str(p.resolve()).lower()
    subset_names = {f[0].lower() for f in firsts if f}
    if "aigibench" in hint or subset_names & {"communityai", "socialrf"}:
        return "aigibench"
    if "wildrf" in hint or (subset_names and subset_names <= {"facebook", "reddit", "twitter"}):
        return "wildrf"
    if "chameleon" in hint and firsts == {()}:
        return "chameleon"
    if firsts != {()} and all(len(_strip(d.parts)) >= 1 for d in kept):
        return "forensynths"
    return "folder"


def _has_val2017(root: Path) -> bool:
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if len(here.relative_to(root).parts) >= 3:
            dirnames[:] = []
        if "val2017" in dirnames:
            return True
    return False


def read_data(
    inputs: Sequence[str | os.PathLike],
    layout: str = "auto",
    *,
    split: str | None = None,
    subsets: Sequence[str] | None = None,
) -> EvalSet:
    """Read every input with its layout (named, or detected per input), drop listed files that are not on
    disk (noted), and keep only ``subsets`` when given (subset keys as reported)."""
    if layout not in LAYOUT_CHOICES:
        raise LayoutError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUT_CHOICES)}")
    all_items: list[EvalItem] = []
    infos: list[dict[str, Any]] = []
    notes: list[str] = []
    used_names: set[str] = set()
    for raw in inputs:
        path = Path(raw).expanduser()
        if not path.exists():
            raise LayoutError(f"{path}: no such file or folder")
        name = layout if layout != "auto" else detect_layout(path)
        items = LAYOUTS[name](path, split=split)
        bench = items[0].benchmark if items else _bench_name(path)
        if bench in used_names:  # two inputs with the same folder name: keep their subsets apart
            k = 2
            while f"{bench}-{k}" in used_names:
                k += 1
            bench = f"{bench}-{k}"
            for it in items:
                it.benchmark = bench
        used_names.add(bench)
        present = [it for it in items if it.path.is_file()]
        missing = len(items) - len(present)
        input_notes = []
        if missing:
            input_notes.append(f"{missing} listed file(s) not on disk were skipped")
        if not present:
            raise LayoutError(f"{path}: the {name} layout found no images")
        n_real = sum(it.label == 0 for it in present)
        n_fake = len(present) - n_real
        if n_real == 0 or n_fake == 0:
            input_notes.append(f"only {'fake' if n_real == 0 else 'real'} images: two-class metrics are null")
        infos.append({"path": str(path), "layout": name, "benchmark": bench, "n_images": len(present),
                      "n_real": n_real, "n_fake": n_fake, "notes": input_notes})  # fmt: skip
        notes.extend(f"{bench}: {n}" for n in input_notes)
        all_items.extend(present)
    evalset = EvalSet(all_items, infos, notes)
    if subsets:
        wanted = set(subsets)
        index = evalset.subset_indices()
        unknown = sorted(wanted - set(index))
        if unknown:
            raise LayoutError(f"unknown subset(s) {unknown}; the data has {sorted(index)}")
        keep = sorted({int(i) for key in wanted for i in index[key]})
        evalset = EvalSet([evalset.items[i] for i in keep], infos, notes)
    return evalset
