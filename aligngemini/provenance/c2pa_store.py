"""C2PA Content Credentials, read with the ``c2pa-python`` package (the C2PA's own Rust SDK), offline.

Remote manifests and OCSP are never fetched: the SDK is told not to, and a file that only points at a remote
manifest is reported with its URL. Trust is only ever "trusted" against anchors the user supplies; without
them a valid signature is reported as valid but untrusted.
"""

from __future__ import annotations

import functools
import io
import json
import re
from typing import Any

from aligngemini.provenance.model import (
    AI_SOURCE_TYPES,
    CAPTURE_SOURCE_TYPES,
    MAX_ITEMS,
    Provenance,
    clip,
    source_type_code,
)

# Bytes that every embedded manifest store (JUMBF) or remote reference (XMP dcterms:provenance) contains: a
# file without any of them is not handed to the native parser at all.
_MARKERS = (b"jumb", b"c2pa", b"dcterms:provenance")
_REMOTE = re.compile(r"remote manifests? from url (\S{1,500})", re.I)
MAX_MANIFEST_JSON = 4 * 1024 * 1024  # characters of the SDK's JSON report we are willing to parse


def may_hold_c2pa(data: bytes) -> bool:
    return any(m in data for m in _MARKERS)


@functools.cache
def _context(trust_anchors: str | None) -> Any:
    import c2pa  # the native SDK loads only when a file may hold a manifest

    settings: dict[str, Any] = {
        "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False},
        "core": {"allowed_network_hosts": []},
    }
    if trust_anchors:
        settings["trust"] = {"user_anchors": trust_anchors}
    try:
        return c2pa.Context(c2pa.Settings.from_dict(settings))
    except c2pa.C2paError:  # an SDK without core.allowed_network_hosts: the two fetch switches still hold
        del settings["core"]
        return c2pa.Context(c2pa.Settings.from_dict(settings))


def read_c2pa(data: bytes, mime: str | None, into: Provenance, trust_anchors: str | None = None) -> None:
    """Summarise the file's C2PA manifest store into ``into.c2pa`` (left None when it has none)."""
    if not may_hold_c2pa(data):
        return
    try:
        import c2pa
    except ImportError:
        into.warn("C2PA not read: the c2pa-python package is not installed (pip install c2pa-python)")
        return
    try:
        reader = c2pa.Reader.try_create(
            mime or "image/jpeg", io.BytesIO(data), context=_context(trust_anchors)
        )
        if reader is None:
            return
        with reader:
            report = reader.json()
    except c2pa.C2paError as exc:
        remote = _REMOTE.search(str(exc))
        if remote:
            url = clip(remote.group(1), 300)
            into.c2pa = {"remote_url": url, "signature_valid": False, "declares_ai": False,
                         "validation_state": None}  # fmt: skip
            into.add_evidence(f"C2PA manifest stored remotely at {url} (not fetched)")
        else:
            into.warn(f"C2PA manifest unreadable: {clip(exc, 150)}")
        return
    except Exception as exc:  # noqa: BLE001 - a native parser on hostile input: report, never crash
        into.warn(f"C2PA manifest unreadable: {type(exc).__name__}: {clip(exc, 120)}")
        return
    if len(report) > MAX_MANIFEST_JSON:
        into.warn(f"C2PA manifest report of {len(report)} characters is over the limit; not summarised")
        return
    try:
        store = json.loads(report)
    except (ValueError, RecursionError) as exc:
        into.warn(f"C2PA manifest report unreadable: {clip(exc, 120)}")
        return
    if isinstance(store, dict):
        summarise(store, into)


def _actions(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for assertion in manifest.get("assertions") or []:
        if not isinstance(assertion, dict) or not str(assertion.get("label", "")).startswith("c2pa.actions"):
            continue
        data = assertion.get("data")
        for act in (data.get("actions") if isinstance(data, dict) else None) or []:
            if isinstance(act, dict):
                found.append(act)
    return found


def _agent(act: dict[str, Any]) -> str | None:
    agent = act.get("softwareAgent")
    if isinstance(agent, dict):
        agent = " ".join(str(agent[k]) for k in ("name", "version") if agent.get(k))
    return clip(agent, 80) if agent else None


def _generator(manifest: dict[str, Any]) -> str | None:
    info = manifest.get("claim_generator_info")
    if isinstance(info, list) and info and isinstance(info[0], dict):
        return clip(" ".join(str(info[0][k]) for k in ("name", "version") if info[0].get(k)), 100) or None
    gen = manifest.get("claim_generator")
    return clip(gen, 100) if gen else None


def summarise(store: dict[str, Any], into: Provenance) -> None:
    """The SDK's manifest-store report, reduced to what a reader of a verdict needs."""
    manifests = store.get("manifests") if isinstance(store.get("manifests"), dict) else {}
    active = manifests.get(store.get("active_manifest")) or {}
    if not isinstance(active, dict):
        active = {}
    codes: set[str] = set()
    for manifest in manifests.values():  # an AI origin may sit in an ingredient's manifest, under an edit
        if isinstance(manifest, dict):
            codes.update(
                c for c in (source_type_code(a.get("digitalSourceType")) for a in _actions(manifest)) if c
            )
    sig = active.get("signature_info") if isinstance(active.get("signature_info"), dict) else {}
    state = store.get("validation_state")
    results = store.get("validation_results") if isinstance(store.get("validation_results"), dict) else {}
    failures = [
        clip(f.get("code"), 80)
        for f in (
            (results.get("activeManifest") or {}).get("failure") or store.get("validation_status") or []
        )
        if isinstance(f, dict) and f.get("code")
    ][:MAX_ITEMS]
    actions = [
        {"action": clip(a.get("action", ""), 60), "digital_source_type": source_type_code(a.get("digitalSourceType")),
         "software_agent": _agent(a)}
        for a in _actions(active)[:MAX_ITEMS]
    ]  # fmt: skip
    summary = {
        "claim_generator": _generator(active),
        "title": clip(active["title"], 120) if active.get("title") else None,
        "issuer": clip(sig["issuer"], 120) if sig.get("issuer") else None,
        "signer": clip(sig["common_name"], 120) if sig.get("common_name") else None,
        "signed_at": clip(sig["time"], 40) if sig.get("time") else None,
        "actions": actions,
        "source_types": sorted(codes)[:MAX_ITEMS],
        "declares_ai": bool(codes & AI_SOURCE_TYPES),
        "declares_capture": bool(codes & CAPTURE_SOURCE_TYPES),
        "manifests": len(manifests),
        "validation_state": clip(state, 20) if state else None,
        "signature_valid": state in ("Valid", "Trusted"),
        "trusted": state == "Trusted",
        "failures": failures,
        "remote_url": None,
    }
    into.c2pa = summary
    who = summary["claim_generator"] or "an unnamed tool"
    by = f", signed by {summary['issuer']}" if summary["issuer"] else ""
    if not summary["signature_valid"]:
        broken = [f for f in failures if f != "signingCredential.untrusted"]
        status = "signature or content hash does not verify: " + (", ".join(broken[:3]) or "invalid")
    else:
        status = "signature valid" + (
            ", issuer trusted" if summary["trusted"] else ", issuer not in a trust list"
        )
    claim = ("declares " + ", ".join(sorted(codes & AI_SOURCE_TYPES))) if summary["declares_ai"] else (
        "declares " + ", ".join(sorted(codes)) if codes else "no digital source type")  # fmt: skip
    into.add_evidence(f"C2PA by {who}{by}: {claim} ({status})")
