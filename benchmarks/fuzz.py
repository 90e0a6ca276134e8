"""Coverage-guided fuzzing (atheris, libFuzzer) of the parsers that read untrusted input: image decoding
(``decode_bytes``), bundle loading (config.json and archive members) and the server's multipart parser.

Each target (``tests/fuzz_targets.py``) runs in its own process for a bounded time, starting from valid seed
inputs; every input that makes it crash is saved to ``tests/fuzz_corpus/TARGET/`` (replayed by the tests
from then on) and counted. Needs ``pip install atheris`` (not a dependency of the package).

    python benchmarks/fuzz.py --seconds 300                         # every target, 5 minutes each
    python benchmarks/fuzz.py --targets decode --seconds 60
    python benchmarks/fuzz.py --seconds 300 --out benchmarks/results/fuzz   # writes .json and .md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT)]
from fuzz_targets import TARGETS, seed_inputs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_header import record_header, write_record  # noqa: E402

REGRESSIONS = ROOT / "tests" / "fuzz_corpus"


def run_one(target: str) -> None:
    """In the child process: hand the target to libFuzzer (arguments after ``--`` are libFuzzer's)."""
    import logging
    import warnings

    import atheris

    logging.disable(logging.CRITICAL)  # the multipart library logs every malformed body
    warnings.simplefilter("ignore")
    fn = TARGETS[target]
    fn(b"")  # import everything the target touches, so that instrumentation covers it
    atheris.instrument_all()
    argv = [sys.argv[0], *sys.argv[sys.argv.index("--") + 1 :]]
    atheris.Setup(argv, fn)
    atheris.Fuzz()


def fuzz(target: str, seconds: int, workdir: Path) -> dict[str, Any]:
    corpus = workdir / target / "corpus"
    crashes = workdir / target / "crashes"
    corpus.mkdir(parents=True)
    crashes.mkdir(parents=True)
    for i, data in enumerate(seed_inputs(target)):
        (corpus / f"seed-{i}").write_bytes(data)
    cmd = [sys.executable, __file__, "--child", target, "--", str(corpus), f"-max_total_time={seconds}",
           "-print_final_stats=1", f"-artifact_prefix={crashes}/", "-rss_limit_mb=4096", "-timeout=30",
           "-max_len=4096"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    log = proc.stderr
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", log)
    cov = re.findall(r"#\d+\s+\w+\s+cov: (\d+) ft: (\d+)", log)
    found = sorted(crashes.iterdir())
    saved = []
    for path in found:
        data = path.read_bytes()
        dest = REGRESSIONS / target / f"{path.name.split('-')[0]}-{hashlib.sha1(data).hexdigest()[:10]}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
        saved.append(str(dest.relative_to(ROOT)))
    crash_trace = ""
    if found:
        tb = log[log.find("Traceback") :] if "Traceback" in log else log[-3000:]
        crash_trace = tb[:3000]
    return {
        "target": target,
        "seconds": seconds,
        "inputs_tried": int(runs[-1]) if runs else None,
        "coverage_edges": int(cov[-1][0]) if cov else None,
        "features": int(cov[-1][1]) if cov else None,
        "corpus_size": sum(1 for _ in corpus.iterdir()),
        "crashes": len(found),
        "crash_inputs_saved": saved,
        "crash_trace": crash_trace,
        "exit_code": proc.returncode,
    }


def render_md(record: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {r['target']} | {r['seconds']} | {r['inputs_tried']} | {r['coverage_edges']} | {r['corpus_size']} | "
        f"{r['crashes']} |"
        for r in record["results"]
    )
    return f"""# Fuzzing the untrusted-input parsers

`{record["command"]}` on the {record["machine"]}, {record["date"]}, atheris {record["atheris"]},
Python {record["python"]}. Coverage-guided (libFuzzer via atheris), every loaded Python module instrumented,
each target in its own process, seeded with valid inputs (`tests/fuzz_targets.py`).

| target | seconds | inputs tried | coverage edges | corpus | crashes |
| --- | --- | --- | --- | --- | --- |
{rows}

Targets: `decode` = `decode.decode_bytes` on any bytes (refused with ImageLoadError or decoded within the
pixel limit; Pillow's global limit untouched); `bundle` = `bundle.load_bundle` on archives (tar, tar.gz, zip)
and folders whose members and config.json the fuzzer chooses (path traversal, absolute names, links, pickles,
malformed JSON), refused with BundleError and never writing outside the unpacked bundle's cache folder;
`multipart` = `serve.uploads.parse_multipart` on any body and boundary (uploads within every limit, or a 4xx);
`provenance` = `provenance.read_provenance` on any bytes, seeded with C2PA-signed, generator-parameter and XMP
files (a bounded, serialisable record, never an exception; the C2PA SDK's native parser runs but is not
coverage-instrumented).

Crash inputs are kept in `tests/fuzz_corpus/TARGET/` and replayed by `tests/test_fuzz_regressions.py`.
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        run_one(argv[1])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", nargs="+", choices=sorted(TARGETS), default=sorted(TARGETS))
    p.add_argument("--seconds", type=int, default=300, help="time per target (default: 300)")
    p.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    p.add_argument("--machine", default="2-core CPU dev box")
    args = p.parse_args(argv)
    from importlib.metadata import version

    import atheris  # noqa: F401 - fail early with the install hint below

    header = record_header("fuzz", argv, args.machine)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in args.targets:
            res = fuzz(target, args.seconds, Path(tmp))
            print(json.dumps({k: v for k, v in res.items() if k != "crash_trace"}), file=sys.stderr)
            if res["crash_trace"]:
                print(res["crash_trace"], file=sys.stderr)
            results.append(res)
    record = {
        **header,
        "atheris": version("atheris"),
        "python": platform.python_version(),
        "results": results,
    }
    if args.out:
        write_record(args.out, record, render_md(record))
    return 1 if any(r["crashes"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
