"""Image files that declare their origin, built here: generator parameters in PNG text chunks, IPTC XMP, and
C2PA manifests signed with c2pa-python's own signing API under a throwaway certificate chain made in the test.
Nothing is downloaded."""

from __future__ import annotations

import datetime as dt
import io
import json
from dataclasses import dataclass
from typing import Any

from PIL import Image, PngImagePlugin

AI_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
CAPTURE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"
A1111 = (
    "a red fox in the snow, photo\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 42, Size: 64x48, Model hash: abc123, Model: sd_xl_base_1.0"
)
COMFY_PROMPT = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "flux1-dev.safetensors"}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 1, "steps": 20, "model": ["4", 0]}},
}
COMFY_WORKFLOW = {
    "nodes": [{"id": 4, "type": "CheckpointLoaderSimple", "widgets_values": ["flux1-dev.safetensors"]}]
}


def pixels(seed: int = 0, size: tuple[int, int] = (64, 48)) -> Image.Image:
    import numpy as np

    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def png(text: dict[str, str] | None = None, seed: int = 0) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buf = io.BytesIO()
    pixels(seed).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def jpeg(seed: int = 0, **save: Any) -> bytes:
    buf = io.BytesIO()
    pixels(seed).save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def xmp_packet(
    source_type: str, creator_tool: str = "Example Generator 2.0", as_element: bool = False
) -> bytes:
    dst = (f"<Iptc4xmpExt:DigitalSourceType>{source_type}</Iptc4xmpExt:DigitalSourceType>" if as_element
           else "")  # fmt: skip
    attr = "" if as_element else f' Iptc4xmpExt:DigitalSourceType="{source_type}"'
    return (
        '<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
        f'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="{creator_tool}"{attr}>{dst}'
        '</rdf:Description></rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
    ).encode()


@dataclass
class Credentials:
    """A test CA and a signing certificate under it, in PEM."""

    chain: bytes  # signer then CA
    key: bytes
    ca: bytes


def make_credentials(org: str = "Example AI Lab") -> Credentials:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)]
        )

    def usage(**on: bool) -> x509.KeyUsage:
        flags = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                 "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")  # fmt: skip
        return x509.KeyUsage(**{f: on.get(f, False) for f in flags})

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def cert(subject: str, public: Any, ca: bool) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name("Test CA"))
             .public_key(public).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))  # fmt: skip
        if ca:
            b = b.add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True).add_extension(
                x509.SubjectKeyIdentifier.from_public_key(public), critical=False)  # fmt: skip
        else:
            b = (b.add_extension(usage(digital_signature=True), critical=True)
                 .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
                 .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                critical=False))  # fmt: skip
        return b.sign(ca_key, hashes.SHA256())

    pem = serialization.Encoding.PEM
    ca_pem = cert("Test CA", ca_key.public_key(), True).public_bytes(pem)
    leaf = cert("Test Signer", key.public_key(), False).public_bytes(pem)
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return Credentials(leaf + ca_pem, key_pem, ca_pem)


def manifest(source_type: str = AI_TYPE, generator: str = "Example Image Model") -> dict[str, Any]:
    return {
        "claim_generator_info": [{"name": generator, "version": "3.1"}],
        "title": "generated.jpg",
        "assertions": [{"label": "c2pa.actions", "data": {"actions": [
            {"action": "c2pa.created", "digitalSourceType": source_type, "softwareAgent": {"name": generator}}]}}],
    }  # fmt: skip


def c2pa_signed(source: bytes, creds: Credentials, *, mime: str = "image/jpeg", source_type: str = AI_TYPE,
                remote_url: str | None = None) -> tuple[bytes, bytes]:  # fmt: skip
    """``source`` with a C2PA manifest signed by ``creds`` (embedded, or only referenced at ``remote_url``);
    returns the signed file and the manifest store."""
    import c2pa

    settings = c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": False}},
                                        "verify": {"ocsp_fetch": False, "remote_manifest_fetch": False}})  # fmt: skip
    context = c2pa.Context(settings)
    signer = c2pa.Signer.from_info(
        c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, creds.chain, creds.key, None)
    )
    builder = c2pa.Builder(json.dumps(manifest(source_type)), context=context)
    if remote_url:
        builder.set_no_embed()
        builder.set_remote_url(remote_url)
    out = io.BytesIO()
    store = builder.sign(signer, mime, io.BytesIO(source), out)
    return out.getvalue(), store


def tamper(signed: bytes) -> bytes:
    """The same file with one byte of image data changed: the manifest's content hash no longer matches."""
    data = bytearray(signed)
    data[-10] ^= 0xFF
    return bytes(data)
