"""The HTTP API and the web page: ``create_app(detector, settings) -> FastAPI``.

Request handlers read uploads into memory (bounded while they arrive), check them (size, type by magic bytes,
decoded pixels from the header) and decode them in the thread pool; the one model worker (:mod:`.batcher`)
scores images from all requests in shared batches. Every refusal is ``{"error": {"kind", "message", "limit"}}``.
No endpoint reads a server path or fetches a URL: images arrive only as request bodies.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aligngemini import __version__
from aligngemini.decode import ImageLoadError, LoadedImage, decode_bytes
from aligngemini.record import Verdict, record_model
from aligngemini.serve.batcher import Batcher, QueueFull, WorkerStopped
from aligngemini.serve.limits import ApiError, Limits, check_image_bytes
from aligngemini.serve.metrics import ServeMetrics
from aligngemini.serve.uploads import Upload, clean_name, parse_multipart, read_body

log = logging.getLogger(__name__)
STATIC_DIR = Path(str(resources.files("aligngemini.serve") / "static"))
RAW_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff",
             "application/octet-stream")  # fmt: skip
ENDPOINTS = ("/", "/healthz", "/readyz", "/metrics", "/v1/info", "/v1/detect", "/v1/explain", "/openapi.json")
CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")  # fmt: skip


@dataclass
class ServeSettings:
    """Server knobs; see ``aligngemini serve --help``."""

    max_batch: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256
    max_file_bytes: int = Limits.max_file_bytes
    max_request_bytes: int = Limits.max_request_bytes
    max_pixels: int = Limits.max_pixels
    max_images: int = Limits.max_images
    token: str | None = None

    def __post_init__(self) -> None:
        self.limits  # noqa: B018 - validates the limits
        if self.max_batch < 1 or self.max_queue < 1 or self.max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be at least 1 and max_wait_ms at least 0")
        if self.max_queue < self.max_images:
            raise ValueError(f"max_queue ({self.max_queue}) must be at least max_images ({self.max_images}), "
                             "or a full request could never be queued")  # fmt: skip
        if self.token is not None and not self.token.strip():
            raise ValueError("the token must not be empty")

    @property
    def limits(self) -> Limits:
        return Limits(self.max_file_bytes, self.max_request_bytes, self.max_pixels, self.max_images)


# -- response schemas (for the OpenAPI document and output validation) --------------------------------
class DetectResponse(BaseModel):
    bundle: str = Field(description="bundle id: name@config-digest")
    results: list[record_model()]  # type: ignore[valid-type]


class ExplainResponse(BaseModel):
    bundle: str
    path: str
    explanation: str


class LimitInfo(BaseModel):
    name: str
    value: int


class ErrorDetail(BaseModel):
    kind: str = Field(description="stable machine-readable word, e.g. file_too_large")
    message: str
    limit: LimitInfo | None = Field(description="the limit that was crossed, if any")


class ErrorBody(BaseModel):
    error: ErrorDetail


class BranchInfo(BaseModel):
    role: str
    family: str | None
    threshold: float
    can_explain: bool
    sources: dict[str, str] = Field(
        description="model sources by config key (bundle files, registry packages)"
    )


class ExplainInfo(BaseModel):
    available: bool
    reason: str | None


class BundleInfo(BaseModel):
    name: str
    id: str
    fusion_rule: str
    uncertain_band: list[float] | None
    thresholds: dict[str, float]
    branches: list[BranchInfo]
    missing_branches: list[str]
    card: str


class InfoResponse(BaseModel):
    version: str
    bundle: BundleInfo
    explain: ExplainInfo
    limits: dict[str, int]
    batching: dict[str, float]


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    reason: str | None = None
    bundle: str | None = None


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {400: "malformed request", 401: "missing or wrong bearer token", 413: "a size or count limit",
            415: "not an image (by content) or an unsupported body type", 422: "a pixel limit or no image",
            501: "the bundle cannot explain", 503: "not ready, or the queue is full (see Retry-After)"}  # fmt: skip
    return {c: {"model": ErrorBody, "description": text.get(c, "error")} for c in codes}


def _image_body(max_images: int, single: bool) -> dict[str, Any]:
    files = {"type": "string", "format": "binary"}
    form = (
        {"type": "object", "properties": {"file": files}, "required": ["file"]}
        if single
        else {"type": "object", "required": ["files"],
              "properties": {"files": {"type": "array", "items": files, "minItems": 1, "maxItems": max_images}}}
    )  # fmt: skip
    content: dict[str, Any] = {"multipart/form-data": {"schema": form}}
    for t in RAW_TYPES:
        content[t] = {"schema": {"type": "string", "format": "binary"}}
    return {
        "requestBody": {
            "required": True,
            "description": "images as multipart files (field 'files' or 'file'), or one raw image body; "
            "the type is read from the bytes",
            "content": content,
        }
    }


# -- branch sources, without server paths -------------------------------------------------------------
SOURCE_KEYS = (
    "weights",
    "tower",
    "head",
    "model",
    "adapter",
    "processor",
    "tokenizer",
    "checkpoint",
    "source",
)


def _describe_source(value: str, bundle_dir: Path) -> str:
    if value.startswith(("pypi:", "npm:", "deb:", "hf:")):
        return value
    try:
        if (bundle_dir / value).exists() and (bundle_dir / value).resolve().is_relative_to(
            bundle_dir.resolve()
        ):
            return f"bundle:{value}"
    except (OSError, ValueError):
        pass
    if value.startswith(("/", "~", ".")) or Path(value).expanduser().exists():
        return f"local:{Path(value).name}"  # a path on the server: its name only
    return value  # a hub id


def branch_sources(section: dict[str, Any], bundle_dir: Path, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in section.items():
        if isinstance(value, dict):
            if key == "backbone" and isinstance(value.get("name"), str):
                out[f"{prefix}{key}.architecture"] = value["name"]
            out.update(branch_sources(value, bundle_dir, f"{prefix}{key}."))
        elif isinstance(value, str) and key in SOURCE_KEYS:
            out[prefix + key] = _describe_source(value, bundle_dir)
    return out


# -- application state ---------------------------------------------------------------------------------
class ServeState:
    """The detector (possibly still loading), the worker that owns it, and the metrics."""

    def __init__(self, detector: Any, settings: ServeSettings) -> None:
        self.settings = settings
        self.metrics = ServeMetrics()
        self.detector: Any = None
        self.batcher: Batcher | None = None
        self.load_error: str | None = None
        self._loader: Callable[[], Any] | None = None
        self._lock = threading.Lock()
        if callable(detector) and not hasattr(detector, "score_loaded"):
            self._loader = detector
        else:
            self._install(detector)

    def _install(self, detector: Any) -> None:
        self.detector = detector
        self.batcher = Batcher(
            self._score,
            self._explain,
            max_batch=self.settings.max_batch,
            max_wait_ms=self.settings.max_wait_ms,
            max_queue=self.settings.max_queue,
            metrics=self.metrics,
        )
        self.batcher.start()

    def load_in_background(self) -> None:
        if self._loader is None:
            return
        loader, self._loader = self._loader, None

        def run() -> None:
            try:
                det = loader()
            except Exception as exc:  # noqa: BLE001 - reported by /readyz and the log
                log.exception("loading the detector failed")
                self.load_error = f"{type(exc).__name__}: {exc}"
                return
            with self._lock:
                self._install(det)

        threading.Thread(target=run, name="aligngemini-load", daemon=True).start()

    @property
    def ready(self) -> bool:
        return self.batcher is not None and self.batcher.alive

    def not_ready_reason(self) -> str:
        if self.load_error:
            return f"the bundle failed to load: {self.load_error}"
        if self.batcher is None:
            return "the models are still loading"
        return "the model worker is not running"

    def require_ready(self) -> Batcher:
        if not self.ready:
            raise ApiError(503, "not_ready", self.not_ready_reason(), headers={"Retry-After": "5"})
        assert self.batcher is not None
        return self.batcher

    # runs on the worker thread only
    def _score(self, images: list[LoadedImage]) -> list[dict[str, Any]]:
        det = self.detector
        scores = det.score_loaded(images)
        provenance = [im.extra.get("provenance") for im in images]  # read in decode_all, off this thread
        verdicts = det.verdicts_from_scores([im.source for im in images], scores, provenance)
        for v, im in zip(verdicts, images, strict=True):
            v.sha256 = im.facts.sha256
        return [v.to_dict() for v in verdicts]

    def _explain(self, image: LoadedImage) -> str:
        return str(self.detector.explain(image.image))

    def explain_unavailable(self) -> str | None:
        """Why this bundle cannot explain, in the Detector's own words; None when it can."""
        det = self.detector
        sem = det.branches.get("semantic")
        if sem is not None and sem.can_explain:
            return None
        try:
            det.explain(b"")  # raises NotImplementedError before reading the input when it cannot explain
        except NotImplementedError as exc:
            return str(exc)
        except Exception:  # noqa: BLE001
            pass
        return "the semantic branch cannot explain"

    def info(self) -> dict[str, Any]:
        det = self.detector
        bundle = det.bundle
        sections = bundle.config.get("branches", {})
        branches = [
            {
                "role": role,
                "family": sections.get(role, {}).get("family"),
                "threshold": float(branch.threshold),
                "can_explain": bool(getattr(branch, "can_explain", False)),
                "sources": branch_sources(sections.get(role, {}), Path(bundle.dir)),
            }
            for role, branch in det.branches.items()
        ]
        band = det.uncertain_band
        reason = self.explain_unavailable()
        s = self.settings
        return {
            "version": __version__,
            "bundle": {
                "name": bundle.name,
                "id": bundle.bundle_id,
                "fusion_rule": det.fusion_rule,
                "uncertain_band": list(band) if band else None,
                "thresholds": det.thresholds,
                "branches": branches,
                "missing_branches": list(det.missing_branches),
                "card": bundle.card,
            },
            "explain": {"available": reason is None, "reason": reason},
            "limits": s.limits.to_dict(),
            "batching": {"max_batch": s.max_batch, "max_wait_ms": s.max_wait_ms, "max_queue": s.max_queue},
        }


# -- metrics and security headers, as plain ASGI middleware ---------------------------------------------
class _Instrument:
    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else ("/static" if path.startswith("/static/") else "other")
        status = {"code": 500}
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-content-type-options", b"nosniff"))
                if endpoint in ("/", "/static"):
                    headers.append((b"content-security-policy", CSP.encode()))
                    headers.append((b"referrer-policy", b"no-referrer"))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.requests.labels(endpoint, scope.get("method", ""), str(status["code"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)


# -- the app ---------------------------------------------------------------------------------------------
def create_app(detector: Any, settings: ServeSettings | None = None) -> FastAPI:
    """The API and page around a loaded ``Detector``, or around a zero-argument callable that loads one (the
    app then starts at once, loads in the background, and ``/readyz`` says 503 until the models are ready)."""
    settings = settings or ServeSettings()
    state = ServeState(detector, settings)
    limits = settings.limits

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        state.load_in_background()
        yield
        if state.batcher is not None:
            state.batcher.stop()

    app = FastAPI(
        title="aligngemini",
        version=__version__,
        summary="Detect AI-generated images with a pixel-artifact branch and a semantic branch (OR fusion).",
        docs_url=None,  # the interactive docs pull scripts from a CDN; the schema is at /openapi.json
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.serve = state
    bearer = HTTPBearer(auto_error=False, description="required when the server was started with --token")

    async def check_token(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:  # noqa: B008
        expected = settings.token
        given = creds.credentials if creds is not None and creds.scheme.lower() == "bearer" else ""
        if not hmac.compare_digest(given.encode(), (expected or "").encode()):
            raise ApiError(401, "unauthorized",
                           "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    protected = [Depends(check_token)] if settings.token else []

    # -- errors in one shape --
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        state.metrics.errors.labels(exc.kind).inc()
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return await _api_error(request, ApiError(exc.status_code, kind, str(exc.detail),
                                                  headers=dict(exc.headers or {})))  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return await _api_error(
            request, ApiError(422, "invalid_request", "; ".join(parts) or "invalid request")
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return await _api_error(request, ApiError(500, "internal", f"internal error: {type(exc).__name__}"))

    # -- reading uploads --
    async def read_uploads(request: Request, name: str | None, max_images: int) -> list[Upload]:
        ctype = request.headers.get("content-type", "")
        media = ctype.split(";", 1)[0].strip().lower()
        if (
            media != "multipart/form-data"
            and not media.startswith("image/")
            and media != "application/octet-stream"
        ):
            raise ApiError(415, "unsupported_media_type",
                           f"send images as multipart/form-data (field 'files') or as a raw body with an image "
                           f"content type, not {media or 'no content type'!r}")  # fmt: skip
        body = await read_body(request.stream(), request.headers.get("content-length"), limits)
        if media == "multipart/form-data":
            uploads = parse_multipart(body, ctype, limits, max_images=max_images)
        else:
            uploads = [Upload(clean_name(name, "upload"), body)] if body else []
        if not uploads:
            raise ApiError(
                422, "no_images", "the request holds no image (multipart field 'files', or a raw body)"
            )
        return uploads

    def decode_all(uploads: list[Upload]) -> list[LoadedImage | dict[str, Any]]:
        for up in uploads:  # refuse the whole request before decoding anything
            check_image_bytes(up.data, up.name, limits)
        out: list[LoadedImage | dict[str, Any]] = []
        for up in uploads:
            try:
                image = decode_bytes(
                    up.data, up.name, max_pixels=limits.max_pixels, max_bytes=limits.max_file_bytes
                )
                image.extra["provenance"] = state.detector.provenance_of(image)
                out.append(image)
            except ImageLoadError as exc:
                state.metrics.errors.labels("decode_error").inc()
                out.append(Verdict.failed(up.name, exc.reason).to_dict())
        return out

    def queue(batcher: Batcher, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except QueueFull as exc:
            raise ApiError(503, "overloaded", str(exc), limit=("max_queue", exc.capacity),
                           headers={"Retry-After": str(exc.retry_after)}) from None  # fmt: skip
        except WorkerStopped as exc:
            raise ApiError(503, "shutting_down", str(exc), headers={"Retry-After": "5"}) from None

    # -- endpoints --
    @app.post(
        "/v1/detect",
        response_model=DetectResponse,
        dependencies=protected,
        responses=_errors(400, 401, 413, 415, 422, 503),
        openapi_extra=_image_body(settings.max_images, single=False),
        summary="Judge one or more images",
        description="One record per image, in upload order, in the CLI's JSONL schema. An image that cannot be "
        "decoded gets a record with `error` while the others are still scored.",
    )
    async def detect(
        request: Request,
        name: str | None = Query(None, max_length=1000, description="file name for a raw-body upload"),
    ) -> dict[str, Any]:
        batcher = state.require_ready()
        uploads = await read_uploads(request, name, settings.max_images)
        decoded = await run_in_threadpool(decode_all, uploads)
        good = [d for d in decoded if isinstance(d, LoadedImage)]
        futures = queue(batcher, lambda: batcher.submit(good)) if good else []
        answers = iter(
            await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)
        )
        results = []
        for d in decoded:
            if not isinstance(d, LoadedImage):
                results.append(d)
                continue
            ans = next(answers)
            if isinstance(ans, BaseException):
                if isinstance(ans, WorkerStopped):
                    raise ApiError(503, "shutting_down", str(ans), headers={"Retry-After": "5"})
                state.metrics.errors.labels("scoring_failed").inc()
                log.error("scoring %s failed: %r", d.source, ans)
                ans = Verdict.failed(d.source, f"scoring failed: {type(ans).__name__}: {ans}").to_dict()
            results.append(ans)
        for r in results:
            state.metrics.images.labels(r["verdict"] or "error").inc()
        return {"bundle": state.detector.bundle_id, "results": results}

    @app.post(
        "/v1/explain",
        response_model=ExplainResponse,
        dependencies=protected,
        responses=_errors(400, 401, 413, 415, 422, 501, 503),
        openapi_extra=_image_body(1, single=True),
        summary="The semantic branch's rationale for one image",
        description="Answers 501 with the reason when the bundle's semantic branch cannot explain.",
    )
    async def explain(
        request: Request,
        name: str | None = Query(None, max_length=1000, description="file name for a raw-body upload"),
    ) -> dict[str, Any]:
        batcher = state.require_ready()
        uploads = await read_uploads(request, name, 1)
        await run_in_threadpool(check_image_bytes, uploads[0].data, uploads[0].name, limits)
        reason = state.explain_unavailable()  # after the request itself was found valid, before decoding
        if reason is not None:
            raise ApiError(501, "cannot_explain", reason)
        (decoded,) = await run_in_threadpool(decode_all, uploads)
        if not isinstance(decoded, LoadedImage):
            raise ApiError(422, "decode_error", f"{decoded['path']}: {decoded['error']}")
        future = queue(batcher, lambda: batcher.submit_explain(decoded))
        try:
            text = await asyncio.wrap_future(future)
        except NotImplementedError as exc:
            raise ApiError(501, "cannot_explain", str(exc)) from None
        except WorkerStopped as exc:
            raise ApiError(503, "shutting_down", str(exc), headers={"Retry-After": "5"}) from None
        return {"bundle": state.detector.bundle_id, "path": decoded.source, "explanation": text}

    @app.get("/v1/info", response_model=InfoResponse, dependencies=protected, responses=_errors(401, 503),
             summary="The bundle: branches, sources, thresholds, uncertain band, model card; and the limits")  # fmt: skip
    async def info() -> dict[str, Any]:
        state.require_ready()
        return state.info()

    @app.get("/healthz", response_model=Health, summary="The process is up (no auth)")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}},
             summary="The models are loaded and the worker runs (no auth)")  # fmt: skip
    async def readyz() -> Response:
        ready = state.ready
        state.metrics.ready.set(1 if ready else 0)
        if ready:
            return JSONResponse({"ready": True, "reason": None, "bundle": state.detector.bundle_id})
        return JSONResponse({"ready": False, "reason": state.not_ready_reason(), "bundle": None},
                            status_code=503, headers={"Retry-After": "5"})  # fmt: skip

    @app.get("/metrics", dependencies=protected, responses={200: {"content": {"text/plain": {}}}, **_errors(401)},
             response_class=Response, summary="Prometheus metrics")  # fmt: skip
    async def metrics() -> Response:
        state.metrics.ready.set(1 if state.ready else 0)
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(_Instrument, metrics=state.metrics)
    return app
