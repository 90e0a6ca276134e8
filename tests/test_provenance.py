"""The provenance reader on files built here: each kind of declaration, C2PA signed, tampered, trusted and
remote, and hostile metadata. No test touches the network."""

from __future__ import annotations

import http.server
import io
import json
import threading
import zlib

import pytest
from PIL import Image, PngImagePlugin
from provenance_files import (
    A1111,
    AI_TYPE,
    CAPTURE_TYPE,
    COMFY_PROMPT,
    COMFY_WORKFLOW,
    c2pa_signed,
    jpeg,
    make_credentials,
    png,
    tamper,
    xmp_packet,
)

from aligngemini.provenance import Provenance, read_provenance
from aligngemini.provenance.model import MAX_ITEMS, MAX_TEXT


@pytest.fixture(scope="module")
def creds():
    return make_credentials()


@pytest.fixture(scope="module")
def signed_jpeg(creds) -> bytes:
    return c2pa_signed(jpeg(seed=1), creds)[0]


def test_a_plain_file_declares_nothing() -> None:
    for data in (png(), jpeg(), b""):
        prov = read_provenance(data)
        assert prov.to_dict() == {
            "c2pa": None,
            "declared_ai": None,
            "signed": False,
            "evidence": [],
            "warnings": [],
        }


def test_a1111_parameters_in_a_png_declare_ai_and_name_the_model() -> None:
    prov = read_provenance(png({"parameters": A1111}))
    assert prov.declared_ai is True and not prov.signed and prov.c2pa is None
    assert len(prov.evidence) == 1
    assert "Stable Diffusion web UI" in prov.evidence[0] and "Model: sd_xl_base_1.0" in prov.evidence[0]
    assert "Steps: 20" in prov.evidence[0]


def test_a_parameters_chunk_that_is_not_generation_parameters_declares_nothing() -> None:
    prov = read_provenance(png({"parameters": "exposure +0.3, made in my darkroom"}))
    assert prov.declared_ai is None and prov.evidence == []


def test_comfyui_prompt_graph_declares_ai_with_its_models() -> None:
    prov = read_provenance(png({"prompt": json.dumps(COMFY_PROMPT), "workflow": json.dumps(COMFY_WORKFLOW)}))
    assert prov.declared_ai is True
    assert prov.evidence == ["PNG text 'prompt': ComfyUI prompt graph (models: flux1-dev.safetensors)"]
    only_workflow = read_provenance(png({"workflow": json.dumps(COMFY_WORKFLOW)}))
    assert only_workflow.declared_ai is True and "ComfyUI workflow" in only_workflow.evidence[0]


def test_a1111_parameters_in_exif_user_comment_declare_ai() -> None:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + A1111.encode("utf-16-be")
    exif[0x0131] = "Stable Diffusion web UI"
    prov = read_provenance(jpeg(exif=exif.tobytes()))
    assert prov.declared_ai is True
    assert any("EXIF UserComment" in e and "sd_xl_base_1.0" in e for e in prov.evidence)
    assert "EXIF Software: Stable Diffusion web UI" in prov.evidence


@pytest.mark.parametrize("as_element", [False, True])
def test_xmp_iptc_digital_source_type(as_element: bool) -> None:
    prov = read_provenance(jpeg(xmp=xmp_packet(AI_TYPE, as_element=as_element)))
    assert prov.declared_ai is True and not prov.signed
    assert "XMP IPTC DigitalSourceType: trainedAlgorithmicMedia" in prov.evidence
    assert "XMP CreatorTool: Example Generator 2.0" in prov.evidence
    capture = read_provenance(jpeg(xmp=xmp_packet(CAPTURE_TYPE, "Camera Firmware 1.0")))
    assert capture.declared_ai is False and "XMP IPTC DigitalSourceType: digitalCapture" in capture.evidence


def test_xmp_in_a_png_itxt_chunk_is_read_too() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp_packet(AI_TYPE).decode())
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG", pnginfo=info)
    assert read_provenance(buf.getvalue()).declared_ai is True


def test_exif_software_alone_is_evidence_but_no_declaration() -> None:
    exif = Image.Exif()
    exif[0x0131] = "Adobe Photoshop 25.0"
    prov = read_provenance(jpeg(exif=exif.tobytes()))
    assert prov.declared_ai is None and prov.evidence == ["EXIF Software: Adobe Photoshop 25.0"]


# -- C2PA ------------------------------------------------------------------------------------------
def test_a_signed_c2pa_claim_of_ai_generation(signed_jpeg: bytes) -> None:
    prov = read_provenance(signed_jpeg)
    c = prov.c2pa
    assert c is not None and prov.signed and prov.signed_ai_claim and prov.declared_ai is True
    assert c["claim_generator"] == "Example Image Model 3.1"
    assert c["issuer"] == "Example AI Lab" and c["signer"] == "Test Signer"
    assert c["actions"] == [{"action": "c2pa.created", "digital_source_type": "trainedAlgorithmicMedia",
                             "software_agent": "Example Image Model"}]  # fmt: skip
    assert c["validation_state"] == "Valid" and c["signature_valid"] and not c["trusted"]
    assert c["failures"] == ["signingCredential.untrusted"]  # a throwaway CA is in no trust list
    assert prov.evidence[0].startswith("C2PA by Example Image Model 3.1, signed by Example AI Lab")
    assert "issuer not in a trust list" in prov.evidence[0]
    assert "declared_ai" in prov.to_dict() and json.dumps(prov.to_dict())  # serialisable as is


def test_the_signer_is_trusted_only_against_anchors_the_user_gives(creds, signed_jpeg: bytes) -> None:
    trusted = read_provenance(signed_jpeg, trust_anchors=creds.ca.decode())
    assert trusted.c2pa["trusted"] and trusted.c2pa["validation_state"] == "Trusted"
    other = make_credentials("Someone Else")
    assert not read_provenance(signed_jpeg, trust_anchors=other.ca.decode()).c2pa["trusted"]


def test_a_tampered_copy_still_declares_ai_but_is_not_signed(signed_jpeg: bytes) -> None:
    prov = read_provenance(tamper(signed_jpeg))
    assert prov.c2pa is not None and prov.declared_ai is True
    assert not prov.signed and not prov.signed_ai_claim
    assert prov.c2pa["validation_state"] == "Invalid"
    assert "assertion.dataHash.mismatch" in prov.c2pa["failures"]
    assert prov.evidence[0].endswith(
        "(signature or content hash does not verify: assertion.dataHash.mismatch)"
    )


def test_a_signed_capture_claim_declares_not_ai(creds) -> None:
    prov = read_provenance(c2pa_signed(jpeg(seed=2), creds, source_type=CAPTURE_TYPE)[0])
    assert prov.signed and prov.declared_ai is False and not prov.signed_ai_claim


def test_a_signed_png_is_read_as_well(creds) -> None:
    prov = read_provenance(c2pa_signed(png(seed=3), creds, mime="image/png")[0])
    assert prov.signed and prov.declared_ai is True


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []
    body = b""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        type(self).hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/c2pa")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_remote_manifest_is_reported_and_never_fetched(creds) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _CountingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/manifest.c2pa"
        data, store = c2pa_signed(jpeg(seed=4), creds, remote_url=url)
        _CountingHandler.body = store  # a fetch would find a valid manifest here
        prov = read_provenance(data)
    finally:
        server.shutdown()
        server.server_close()
    assert _CountingHandler.hits == []
    assert prov.c2pa is not None and prov.c2pa["remote_url"] == url and not prov.signed
    assert prov.declared_ai is None  # what the remote manifest says is unknown until someone fetches it
    assert prov.evidence == [f"C2PA manifest stored remotely at {url} (not fetched)"]


# -- hostile metadata --------------------------------------------------------------------------------
def _png_with_chunk(kind: bytes, payload: bytes) -> bytes:
    """A valid PNG with one extra chunk before IDAT, written byte by byte (Pillow would refuse to write it)."""
    base = png()
    idat = base.index(b"IDAT") - 4
    chunk = len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")
    return base[:idat] + chunk + base[idat:]


def test_hostile_metadata_is_a_warning_never_a_crash() -> None:
    cases = {
        "huge text chunk": _png_with_chunk(b"tEXt", b"parameters\x00" + b"A" * (2 * 1024 * 1024)),
        "zTXt bomb": _png_with_chunk(b"zTXt", b"prompt\x00\x00" + zlib.compress(b"{" * (64 * 1024 * 1024))),
        "deep JSON": png({"prompt": '{"a":' * 100_000 + "1" + "}" * 100_000}),
        "malformed JSON": png({"prompt": '{"3": {"class_type": '}),
        "invalid UTF-8 iTXt": _png_with_chunk(
            b"iTXt", b"parameters\x00\x00\x00\x00\x00\xff\xfe\xc3\x28Steps: 1"
        ),
        "invalid UTF-8 XMP": jpeg(xmp=xmp_packet(AI_TYPE).replace(b"Example", b"\xff\xfe\xc3\x28")),
        "XMP without end": b"\xff\xd8\xff\xe1\x00\x20<x:xmpmeta " + b"A" * 2_000_000,
        "garbage JUMBF": b"\xff\xd8\xff\xeb\x00\x20JP\x00\x01jumb c2pa" + bytes(64) + b"\xff\xd9",
        "truncated signed file": b"",  # filled below
        "EXIF UserComment garbage": jpeg(exif=_exif_comment(b"UNICODE\x00" + b"\xd8\x00" * 500)),
        "huge EXIF software": jpeg(exif=_exif_software("S" * 60_000)),
    }
    creds = make_credentials()
    signed = c2pa_signed(jpeg(seed=5), creds)[0]
    cases["truncated signed file"] = signed[: len(signed) // 2]
    for name, data in cases.items():
        prov = read_provenance(data)
        assert isinstance(prov, Provenance), name
        record = prov.to_dict()
        assert json.dumps(record), name
        assert len(prov.evidence) <= MAX_ITEMS and len(prov.warnings) <= MAX_ITEMS, name
        assert all(len(s) <= MAX_TEXT for s in prov.evidence + prov.warnings), name
        assert prov.declared_ai is not True or name == "invalid UTF-8 XMP", (name, record)
    assert (
        read_provenance(cases["invalid UTF-8 XMP"]).declared_ai is True
    )  # the declaration itself was intact
    assert read_provenance(cases["XMP without end"]).warnings
    assert "too large" in read_provenance(cases["zTXt bomb"]).warnings[0]
    assert read_provenance(cases["deep JSON"]).warnings == [
        "a PNG text chunk holds malformed JSON; not parsed"
    ]


def _exif_comment(raw: bytes) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = raw
    return exif.tobytes()


def _exif_software(text: str) -> bytes:
    exif = Image.Exif()
    exif[0x0131] = text
    return exif.tobytes()
