"""One manifest format for every image set: JSONL, one :class:`ManifestRow` per image.

Paths inside the manifest's own folder are stored relative to it (the folder can move); paths outside are
stored absolute. :func:`read_manifest` always hands back absolute paths.

:func:`scan_folder` reads the folder layouts detection benchmarks use: ``real/`` + ``fake/``,
``0_real/`` + ``1_fake/`` and ``nature/`` + ``ai/``, at any depth. Folders between the root and the class
folder name the subset (GenImage ``sdv4/val/ai`` -> subset and generator ``sdv4``; split folders such as
``train``/``val`` fill ``split`` instead), and folders below a fake class folder name the generator
(``fake/sdxl/x.png`` -> generator ``sdxl``).
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from PIL import UnidentifiedImageError

from aligngemini.decode import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, read_header
from aligngemini.resolve import sha256_file

LABELS = ("real", "fake")
REAL_DIRS = frozenset({"real", "0_real", "nature"})
FAKE_DIRS = frozenset({"fake", "1_fake", "ai"})
SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


@dataclass
class ManifestRow:
    """One image. ``path`` is absolute in memory; relative on disk when inside the manifest's folder."""

    path: str
    label: str  # "real" | "fake"
    generator: str | None = None
    source: str = ""  # e.g. "pypi:scikit-image==0.26.0", "deb:mate-backgrounds=1.26.0-1", "realorai"
    license: str | None = None
    sha256: str = ""
    width: int = 0
    height: int = 0
    format: str | None = None
    split: str | None = None  # train / val / test
    group: str | None = None  # items that must share a split: a topic, a clip, a stereo pair
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"{self.path}: label must be one of {LABELS}, got {self.label!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestRow:
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        row = cls(**{k: v for k, v in data.items() if k in names})
        if unknown:  # keep what a newer writer added rather than dropping it silently
            row.extra = {**row.extra, **{k: data[k] for k in sorted(unknown)}}
        return row


def describe_image(path: str | os.PathLike, label: str, **kwargs: Any) -> ManifestRow:
    """A row for one file: sha256 of its bytes and size/format from its header."""
    w, h, fmt, frames = read_header(path)
    row = ManifestRow(
        path=str(Path(path).resolve()),
        label=label,
        sha256=sha256_file(path),
        width=w,
        height=h,
        format=fmt,
        **kwargs,
    )
    if frames > 1:
        row.extra["n_frames"] = frames
    return row


@dataclass
class ManifestData:
    """The ``data`` section every training task's recipe shares: which manifest, which of its sources, which
    splits. Tasks extend it with their own keys."""

    manifest: str = (
        ""  # JSONL rows (path, label real|fake, split[, group]); data:REL names one under the data home
    )
    sources: list[str] | None = (
        None  # train and validate only on rows whose source matches one of these globs
    )
    exclude_sources: list[str] | None = None  # ...and none of these (hold whole sources out)
    train_split: str | list[str] = "train"  # a split name, or several (e.g. [train, val] for a final model)
    val_split: str | list[str] | None = "val"  # None or []: no validation
    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse larger images (decoded pixels)
    max_val: int | None = None  # keep at most this many validation rows (evenly spread)

    @staticmethod
    def in_split(split: str | None, spec: str | list[str] | None) -> bool:
        """Whether a row's split is one the recipe names (``spec``: one name, a list, or None for none)."""
        if spec is None:
            return False
        return (split or "") in ([spec] if isinstance(spec, str) else spec)


LABEL_VALUES = {"real": 0.0, "fake": 1.0, "0": 0.0, "1": 1.0}


def label_value(value: Any, where: str) -> float:
    """A row's label as the training target: 0.0 real, 1.0 fake (also accepts 0/1); names the row if not."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value in (0, 1):
        return float(value)
    key = str(value).strip().lower()
    if key not in LABEL_VALUES:
        raise ValueError(f"{where}: label must be 'real' or 'fake', got {value!r}")
    return LABEL_VALUES[key]


def manifest_path(spec: str | os.PathLike) -> Path:
    """Where a manifest named in a recipe or on the command line lives: ``data:REL`` is ``REL`` under the
    data home (``~/.cache/aligngemini/data`` unless ALIGNGEMINI_HOME says otherwise); ``~`` is expanded."""
    text = str(spec)
    if text.startswith("data:"):
        from aligngemini.paths import home_dir

        return home_dir() / "data" / text[len("data:") :]
    return Path(text).expanduser()


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Rows of a JSONL manifest (a path, or ``data:REL``: see ``manifest_path``) with their paths made
    absolute (relative ones are relative to the manifest's folder). Raises FileNotFoundError with the fix for
    a missing manifest and ValueError naming the line of a malformed row. The one manifest reader: every
    task, builder and trainer reads through it."""
    path = manifest_path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such manifest; build it first (aligngemini data fetch-starter, build-pixel or "
            "build-semantic) or point data.manifest at one"
        )
    base = path.resolve().parent
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = ManifestRow.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{lineno}: not a manifest row ({exc})") from None
            p = Path(row.path)
            row.path = str(p if p.is_absolute() else (base / p).resolve())
            rows.append(row)
    return rows


def select_sources(
    rows: Iterable[ManifestRow], include: Sequence[str] | None = None, exclude: Sequence[str] | None = None
) -> list[ManifestRow]:
    """Rows whose ``source`` matches one of the ``include`` globs (all when None) and none of ``exclude``:
    how a builder or a training run holds whole sources out."""
    keep, drop = list(include or ["*"]), list(exclude or [])
    return [r for r in rows if any(fnmatch.fnmatchcase(r.source or "", k) for k in keep)
            and not any(fnmatch.fnmatchcase(r.source or "", d) for d in drop)]  # fmt: skip


def write_manifest(rows: Iterable[ManifestRow], path: str | os.PathLike) -> Path:
    """Write rows as JSONL, atomically (a temporary file renamed over the target), paths relative to
    the manifest's folder when they lie inside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                d = row.to_dict()
                p = Path(row.path)
                if p.is_absolute():
                    try:
                        d["path"] = p.resolve().relative_to(base).as_posix()
                    except ValueError:
                        d["path"] = str(p)
                f.write(json.dumps(d, ensure_ascii=False, sort_keys=False) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; a manifest is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _classify(parts: tuple[str, ...]) -> tuple[str, int] | None:
    """Label and index of the class folder: the last path component naming a class."""
    for i in range(len(parts) - 1, -1, -1):
        name = parts[i].lower()
        if name in REAL_DIRS:
            return "real", i
        if name in FAKE_DIRS:
            return "fake", i
    return None


def scan_folder(
    root: str | os.PathLike, *, source: str | None = None, license: str | None = None
) -> list[ManifestRow]:
    """Rows for every image under ``root`` that sits below a class folder (see the module docstring).
    Unreadable files are reported on stderr and skipped; images outside any class folder are counted."""
    root = Path(root).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a folder")
    source = source or f"folder:{root.name}"
    rows: list[ManifestRow] = []
    unlabelled = 0
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        rel = path.relative_to(root).parts
        found = _classify(rel[:-1])
        if found is None:
            unlabelled += 1
            continue
        label, i = found
        split = None
        subset_parts = []
        for part in rel[:i]:
            if part.lower() in SPLIT_DIRS:
                split = SPLIT_DIRS[part.lower()]
            else:
                subset_parts.append(part)
        below = list(rel[i + 1 : -1])
        subset = "/".join(subset_parts) or None
        generator = ("/".join(subset_parts + below) or None) if label == "fake" else None
        extra: dict[str, Any] = {}
        if subset:
            extra["subset"] = subset
        try:
            row = describe_image(
                path, label, generator=generator, source=source, license=license, split=split
            )
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            print(f"skipped {path}: {exc}", file=sys.stderr)
            continue
        row.extra.update(extra)
        rows.append(row)
    if unlabelled:
        print(
            f"{root}: {unlabelled} image(s) outside any class folder ({sorted(REAL_DIRS)} / {sorted(FAKE_DIRS)}) "
            "were skipped",
            file=sys.stderr,
        )
    return rows


def dedup(rows: Iterable[ManifestRow]) -> tuple[list[ManifestRow], list[ManifestRow]]:
    """Keep the first row of each sha256; later copies are returned as dropped, each with
    ``extra["duplicate_of"]`` naming the kept path (and ``extra["label_conflict"]`` when labels differ).
    Rows without a hash get one computed from their file."""
    kept: list[ManifestRow] = []
    dropped: list[ManifestRow] = []
    first: dict[str, ManifestRow] = {}
    for row in rows:
        if not row.sha256:
            row.sha256 = sha256_file(row.path)
        original = first.get(row.sha256)
        if original is None:
            first[row.sha256] = row
            kept.append(row)
            continue
        row.extra["duplicate_of"] = original.path
        if original.label != row.label:
            row.extra["label_conflict"] = True
        dropped.append(row)
    return kept, dropped
