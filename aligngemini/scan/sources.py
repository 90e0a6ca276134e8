"""What a scan's SOURCE arguments name, as a stream of paths: folders and globs (images found by content),
file lists (one path per line), and Parquet or CSV listings (a ``path`` column, else the first), each local
or at any fsspec URI (``s3://``, ``gs://``, ``memory://``...) the user has credentials for."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from pathlib import Path

from aligngemini.decode import DEFAULT_MAX_BYTES, iter_image_paths, sniff_image_type

LISTING_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".txt": "list", ".lst": "list"}
PATH_COLUMNS = ("path", "file", "filename", "uri", "url")


class SourceError(ValueError):
    """A SOURCE that cannot be read; the message names it and says what is expected."""


def is_uri(text: str) -> bool:
    return "://" in text and not text.startswith("file://")


def _local(text: str) -> str:
    return text[len("file://") :] if text.startswith("file://") else text


def listing_kind(source: str) -> str | None:
    """ "parquet", "csv" or "list" for a listing file, by suffix; None for anything else."""
    return LISTING_SUFFIXES.get(Path(source.split("?", 1)[0]).suffix.lower())


def iter_listing(source: str, kind: str) -> Iterator[str]:
    """The paths a listing names, streamed (a Parquet listing is read one record batch at a time). Relative
    paths in a local listing are taken relative to the listing's folder."""
    base = "" if is_uri(source) else str(Path(_local(source)).parent)

    def resolve(p: str) -> str:
        p = p.strip()
        if not p or is_uri(p) or Path(_local(p)).is_absolute() or not base:
            return _local(p)
        return str(Path(base) / p)

    try:
        if kind == "parquet":
            yield from (resolve(p) for p in _parquet_paths(source) if p)
            return
        with _open_text(source) as fh:
            if kind == "list":
                yield from (resolve(line) for line in fh if line.strip() and not line.startswith("#"))
                return
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                return
            names = [h.strip().lower() for h in header]
            col = next((names.index(c) for c in PATH_COLUMNS if c in names), None)
            if col is None:  # no header naming a path column: the first column, first row included
                col = 0
                if header and header[0].strip():
                    yield resolve(header[0])
            for row in reader:
                if len(row) > col and row[col].strip():
                    yield resolve(row[col])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"{source}: cannot read the listing ({exc})") from None


def _parquet_paths(source: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(_open_binary(source))
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise SourceError(f"{source}: not a readable Parquet file ({exc})") from None
    names = [n.lower() for n in pf.schema_arrow.names]
    col = next((pf.schema_arrow.names[names.index(c)] for c in PATH_COLUMNS if c in names), None)
    if col is None:
        raise SourceError(f"{source}: no path column; name one of {', '.join(PATH_COLUMNS)}")
    for batch in pf.iter_batches(columns=[col], batch_size=65536):
        yield from (str(p) for p in batch.column(0).to_pylist() if p)


def _open_text(source: str) -> io.TextIOBase:
    if is_uri(source):
        import fsspec

        return fsspec.open(source, "rt", encoding="utf-8", newline="").open()
    return open(_local(source), encoding="utf-8", newline="")  # noqa: SIM115 - the caller closes it


def _open_binary(source: str):  # noqa: ANN202 - a file object
    if is_uri(source):
        import fsspec

        return fsspec.open(source, "rb").open()
    return open(_local(source), "rb")  # noqa: SIM115


def iter_sources(sources: list[str], on_skip: Callable[[str, str], None] | None = None) -> Iterator[str]:
    """Every path the sources name, in order (names may repeat; the store keeps each once)."""
    for source in sources:
        kind = listing_kind(source)
        if kind is not None:
            yield from iter_listing(source, kind)
        elif is_uri(source):
            yield from _iter_uri(source, on_skip)
        else:
            skip = (lambda p, why: on_skip(str(p), why)) if on_skip else None
            yield from (str(p) for p in iter_image_paths([_local(source)], on_skip=skip))


def _iter_uri(source: str, on_skip: Callable[[str, str], None] | None) -> Iterator[str]:
    import fsspec

    fs, root = fsspec.core.url_to_fs(source)
    if not fs.isdir(root):
        yield source
        return
    for found in sorted(fs.find(root)):
        uri = fs.unstrip_protocol(found)
        with fs.open(found, "rb") as fh:
            head = fh.read(32)
        if sniff_image_type(head) is not None:
            yield uri
        elif on_skip is not None:
            on_skip(uri, "not an image (its first bytes match no supported format)")


def read_input(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of one input, local or at a URI; raises OSError (or ValueError over ``max_bytes``) naming why."""
    if is_uri(path):
        import fsspec

        with fsspec.open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    else:
        local = Path(_local(path))
        if local.is_dir():
            raise IsADirectoryError(21, "is a directory", str(local))
        with open(local, "rb") as fh:
            data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"over the limit of {max_bytes} bytes")
    return data
