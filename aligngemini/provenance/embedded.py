"""Metadata a file carries outside C2PA: XMP (IPTC ``DigitalSourceType``, ``CreatorTool``), generation
parameters in PNG text chunks (Stable Diffusion web UIs, ComfyUI, InvokeAI, NovelAI) or in EXIF
``UserComment``, and EXIF ``Software``. Pillow parses the containers (its own limits on text chunks hold);
XMP is matched in the raw bytes, so that no XML parser ever sees a hostile packet."""

from __future__ import annotations

import io
import json
import re
from typing import Any

from PIL import Image, UnidentifiedImageError

from aligngemini.provenance.model import (
    AI_SOURCE_TYPES,
    CAPTURE_SOURCE_TYPES,
    Provenance,
    clip,
    source_type_code,
)

MAX_XMP = 1024 * 1024  # bytes of one XMP packet searched
MAX_PACKETS = 4
MAX_JSON = 2 * 1024 * 1024  # characters of a generator's JSON we parse
_XMP_START, _XMP_END = b"<x:xmpmeta", b"</x:xmpmeta>"
_VALUE = r"""(?:\s*=\s*["']([^"']{1,300})["']|\s*>\s*([^<]{1,300})<|[^>]{0,200}?rdf:resource\s*=\s*["']([^"']{1,300})["'])"""
_DST = re.compile(r"Iptc4xmpExt:DigitalSourceType" + _VALUE)
_CREATOR_TOOL = re.compile(r"xmp:CreatorTool" + _VALUE)
_A1111 = re.compile(r"(?:^|\n)Steps: \d+, Sampler: ")
_A1111_FIELD = re.compile(r"(Model|Steps|Sampler|Size): ([^,\n]{1,80})")
_EXIF_SOFTWARE, _EXIF_IFD, _EXIF_USER_COMMENT = 0x0131, 0x8769, 0x9286


def read_embedded(data: bytes, into: Provenance) -> None:
    """Add what the file's metadata declares to ``into``."""
    _read_xmp(data, into)
    try:
        with Image.open(io.BytesIO(data)) as img:
            info = dict(img.info)
            exif = img.getexif()
            user_comment = exif.get_ifd(_EXIF_IFD).get(_EXIF_USER_COMMENT)
            software = exif.get(_EXIF_SOFTWARE)
    except (Image.DecompressionBombError, UnidentifiedImageError):
        return  # the decoder reports these itself; the XMP above was read from the raw bytes
    except Exception as exc:  # noqa: BLE001 - malformed containers raise many types
        into.warn(f"metadata unreadable: {type(exc).__name__}: {clip(exc, 120)}")
        return
    _read_text_chunks(info, into)
    if user_comment is not None:
        text = _user_comment(user_comment)
        if text and _A1111.search(text):
            into.declared_ai = True
            into.add_evidence(
                "EXIF UserComment: Stable Diffusion web UI parameters (" + _a1111_fields(text) + ")"
            )
    if software:
        into.add_evidence(f"EXIF Software: {clip(software, 100)}")


def _read_xmp(data: bytes, into: Provenance) -> None:
    codes: list[str] = []
    start = 0
    for _ in range(MAX_PACKETS):
        begin = data.find(_XMP_START, start)
        if begin < 0:
            break
        end = data.find(_XMP_END, begin, begin + MAX_XMP)
        if end < 0:
            into.warn(f"an XMP packet at byte {begin} has no end within {MAX_XMP} bytes; not read")
            break
        packet = data[begin:end].decode("utf-8", errors="replace")
        start = end
        for match in _DST.finditer(packet):
            code = source_type_code(next(g for g in match.groups() if g))
            if code and code not in codes:
                codes.append(code)
                into.add_evidence(f"XMP IPTC DigitalSourceType: {code}")
        tool = _CREATOR_TOOL.search(packet)
        if tool:
            into.add_evidence(f"XMP CreatorTool: {clip(next(g for g in tool.groups() if g), 100)}")
    if any(c in AI_SOURCE_TYPES for c in codes):
        into.declared_ai = True
    elif into.declared_ai is None and any(c in CAPTURE_SOURCE_TYPES for c in codes):
        into.declared_ai = False


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _read_text_chunks(info: dict[str, Any], into: Provenance) -> None:
    params = _text(info.get("parameters"))
    if params and _A1111.search(params):
        into.declared_ai = True
        into.add_evidence(
            "PNG text 'parameters': Stable Diffusion web UI parameters (" + _a1111_fields(params) + ")"
        )
    for key in ("prompt", "workflow"):
        models = _comfy_models(_text(info.get(key)), into)
        if models is not None:
            into.declared_ai = True
            into.add_evidence(f"PNG text '{key}': ComfyUI {'workflow' if key == 'workflow' else 'prompt graph'}"
                              + (f" (models: {', '.join(models)})" if models else ""))  # fmt: skip
            break
    for key in ("invokeai_metadata", "sd-metadata", "Dream"):
        if _text(info.get(key)):
            into.declared_ai = True
            into.add_evidence(f"PNG text '{key}': InvokeAI generation metadata")
            break
    software = _text(info.get("Software"))
    if software == "NovelAI":
        into.declared_ai = True
        into.add_evidence(
            "PNG text 'Software': NovelAI" + (f" ({clip(info['Source'], 80)})" if info.get("Source") else "")
        )
    elif software:
        into.add_evidence(f"PNG text 'Software': {clip(software, 100)}")


def _comfy_models(text: str, into: Provenance) -> list[str] | None:
    """The model files a ComfyUI graph loads ([] when none is named); None when ``text`` is not one."""
    if not text.lstrip().startswith("{"):
        return None
    if len(text) > MAX_JSON:
        into.warn(f"a {len(text)}-character JSON text chunk is over the limit; not parsed")
        return None
    try:
        graph = json.loads(text)
    except (ValueError, RecursionError):
        into.warn("a PNG text chunk holds malformed JSON; not parsed")
        return None
    nodes = graph.get("nodes") if isinstance(graph, dict) and isinstance(graph.get("nodes"), list) else (
        list(graph.values()) if isinstance(graph, dict) else [])  # fmt: skip
    if not any(isinstance(n, dict) and ("class_type" in n or "type" in n) for n in nodes[:2000]):
        return None
    models: list[str] = []
    for node in nodes[:2000]:
        inputs = node.get("inputs") if isinstance(node, dict) else None
        values = inputs.items() if isinstance(inputs, dict) else []
        for key, value in values:
            if key in ("ckpt_name", "unet_name", "model_name") and isinstance(value, str):
                name = clip(value, 60)
                if name not in models and len(models) < 4:
                    models.append(name)
    return models


def _a1111_fields(text: str) -> str:
    found = dict(_A1111_FIELD.findall(text[-4000:]))
    return ", ".join(
        f"{k}: {clip(found[k], 60)}" for k in ("Model", "Steps", "Sampler", "Size") if k in found
    )


def _user_comment(raw: Any) -> str:
    """EXIF UserComment: an 8-byte character-code prefix, then text (UTF-16 for UNICODE)."""
    if isinstance(raw, str):
        return raw[:20000]
    if not isinstance(raw, bytes | bytearray):
        return ""
    head, body = bytes(raw[:8]), bytes(raw[8:40008])
    if head.startswith(b"UNICODE"):
        for enc in ("utf-16-be", "utf-16-le"):
            text = body.decode(enc, errors="replace")
            if "Steps" in text:
                return text
        return ""
    return body.decode("utf-8", errors="replace")
