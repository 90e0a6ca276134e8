"""Uploads out of a request: the body read into memory within its limit (never spooled to disk), multipart
parts picked by field name and bounded while they arrive, and client file names made safe to echo back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aligngemini.serve.limits import IMAGE_FIELDS, MAX_NAME_CHARS, ApiError, Limits


def clean_name(raw: str | None, fallback: str) -> str:
    """The client's file name, reduced to its last path component and bounded; never a server path."""
    if not raw:
        return fallback
    name = raw.replace("\\", "/").rsplit("/", 1)[-1].strip()
    name = "".join(ch for ch in name if ch.isprintable())
    return name[:MAX_NAME_CHARS] or fallback


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, limits: Limits) -> bytes:
    """The whole body in memory, refused (413) as soon as it passes ``max_request_bytes``."""
    too_big = ApiError(413, "request_too_large",
                       f"the request body is over the limit of {limits.max_request_bytes} bytes",
                       limit=("max_request_bytes", limits.max_request_bytes))  # fmt: skip
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise ApiError(400, "bad_request", "Content-Length is not a number") from None
        if declared > limits.max_request_bytes:
            raise too_big
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        if len(buf) > limits.max_request_bytes:
            raise too_big
    return bytes(buf)


@dataclass
class Upload:
    name: str
    data: bytes


def parse_multipart(body: bytes, content_type: str, limits: Limits, *, max_images: int) -> list[Upload]:
    """Image parts of a multipart/form-data body (fields named in IMAGE_FIELDS), bounded in count and size."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_request", "multipart/form-data without a boundary parameter")
    uploads: list[Upload] = []
    state: dict[str, Any] = {"headers": {}, "field": b"", "value": b"", "data": bytearray(), "keep": False}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["field"].decode("latin-1").lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        disp, opts = parse_options_header(state["headers"].get("content-disposition", b""))
        field = opts.get(b"name", b"").decode("utf-8", "replace")
        state["keep"] = disp == b"form-data" and field in IMAGE_FIELDS
        state["filename"] = opts.get(b"filename", b"").decode("utf-8", "replace")
        if state["keep"] and len(uploads) >= max_images:
            raise ApiError(413, "too_many_images",
                           f"more than {max_images} image(s) in one request; send them in several requests",
                           limit=("max_images", max_images))  # fmt: skip

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if not state["keep"]:
            return
        state["data"] += data[start:end]
        if len(state["data"]) > limits.max_file_bytes:
            name = clean_name(state["filename"], f"upload-{len(uploads) + 1}")
            raise ApiError(413, "file_too_large", f"{name}: over the per-file limit of {limits.max_file_bytes} bytes",
                           limit=("max_file_bytes", limits.max_file_bytes))  # fmt: skip

    def on_part_end() -> None:
        if state["keep"]:
            name = clean_name(state["filename"], f"upload-{len(uploads) + 1}")
            uploads.append(Upload(name, bytes(state["data"])))
        state.update(headers={}, data=bytearray(), keep=False, filename="")

    callbacks = {
        "on_header_field": on_header_field,
        "on_header_value": on_header_value,
        "on_header_end": on_header_end,
        "on_headers_finished": on_headers_finished,
        "on_part_data": on_part_data,
        "on_part_end": on_part_end,
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except ApiError:
        raise
    except Exception as exc:  # noqa: BLE001 - the parser's errors all mean a malformed body
        raise ApiError(400, "bad_request", f"malformed multipart body: {exc}") from None
    return uploads
