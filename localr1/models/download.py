"""Getting GGUF files onto disk exactly once: resolve, check space, download, verify.

Files go into the standard Hugging Face cache layout (so models fetched with other tools count, and
``hf cache`` sees ours); ``huggingface_hub`` resolves repositories, file metadata, URLs and credentials.
The transfer itself is localr1's, because it must survive a killed process: a partial file
``blobs/<sha256>.incomplete`` is continued with Range requests in the next run, dropped connections are
retried from where they stopped, and a lock per file keeps two pulls of one model from corrupting each
other. On top of that, localr1:

* refuses repository paths that could leave the cache, and fetches only ``.gguf`` files (or, for
  ``convert``, a checkpoint's safetensors and JSON files: never pickles, never code);
* checks free disk space against what is still to download, before any byte is written;
* verifies each file's sha256 against the Hub's LFS hash (huggingface_hub checks only the size), remembers
  the verified files so the check is not repeated, and deletes a file that does not match.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from localr1.errors import DownloadError, ModelNotFoundError, UsageError
from localr1.machine.hardware import Simulation
from localr1.models.catalog import CatalogModel, load_catalog, split_name
from localr1.models.gguf_info import split_siblings
from localr1.models.resolve import hf_hub_cache
from localr1.paths import data_dir
from localr1.units import GiB

# Imported inside the functions that use them: filelock, huggingface_hub, tqdm (heavy to import, and not needed by
# every command).

_REPO_RE = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
_SPLIT_PART = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


@dataclass(frozen=True)
class RemoteFile:
    path: str  # inside the repository
    size: int
    sha256: str | None  # the LFS object id; None when unknown (offline)


@dataclass(frozen=True)
class PullTarget:
    repo_id: str
    revision: str
    files: tuple[RemoteFile, ...]
    label: str  # what the user will see: r1:14b:Q4_K_M, or owner/repo/file.gguf
    catalog: CatalogModel | None = None
    quant: str | None = None
    notes: tuple[str, ...] = ()  # where the Hub's listing differs from the catalog

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline_mode(flag: bool = False) -> bool:
    return flag or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def safe_repo_path(path: str) -> str:
    """A file path from the Hub or the user, refused if it could point outside the repository's folder."""
    p = PurePosixPath(path)
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or any(part in ("", ".", "..") for part in path.split("/"))
        or any(ord(ch) < 32 for ch in path)
        or p.is_absolute()
        or re.match(r"^[A-Za-z]:", path)
    ):
        raise DownloadError(f"refusing the file name {path!r}: it would leave the model cache")
    return path


MAX_FILE_BYTES = 1 << 42  # 4 TiB: more than any one GGUF file (R1 671B in F16 is 1.3 TB, split)
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
_ETAG_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")  # a git blob sha1, or an LFS file's sha256


def _network_name(value: str | None, pattern: re.Pattern, what: str, kind: str) -> str:
    if not value or not pattern.match(value):
        raise DownloadError(
            f"the server sent an invalid {kind} for {what}: {str(value)[:60]!r}",
            hint="Check HF_ENDPOINT: it does not behave like the Hugging Face Hub.",
        )
    return value


def check_commit(value: str | None, what: str) -> str:
    """A commit id from the server (``X-Repo-Commit``): 40 hex digits, or refused before it names a folder."""
    return _network_name(value, _COMMIT_RE, what, "commit id")


def check_etag(value: str | None, what: str) -> str:
    """An ETag from the server, which names the blob file: a sha1 or sha256 in hex, or refused."""
    return _network_name(value, _ETAG_RE, what, "ETag")


def check_repo_id(repo_id: str) -> str:
    if not _REPO_RE.match(repo_id) or ".." in repo_id:
        raise UsageError(f"{repo_id!r} is not a repository name", hint="Use owner/name, e.g. unsloth/DeepSeek-R1-GGUF.")
    return repo_id


# --- resolution -------------------------------------------------------------------------------------------


def _api():
    from huggingface_hub import HfApi

    _quiet_hub_logs()
    return HfApi(endpoint=endpoint())


def _quiet_hub_logs() -> None:
    """huggingface_hub logs each retry as a warning; localr1 reports failures itself (--debug shows them)."""
    if not os.environ.get("LOCALR1_DEBUG"):
        from huggingface_hub.utils import logging as hf_logging

        hf_logging.set_verbosity_error()


def _is_gguf(path: str) -> bool:
    return path.endswith(".gguf")


_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_UNREACHABLE_HINT = "Check the connection (or HF_ENDPOINT); models already on disk work with --offline."


def check_reachable(timeout: float = 5.0) -> None:
    """Fail at once, not after huggingface_hub's ~23 s of retries, where the Hub's host cannot be reached at
    all: no name resolution, connection refused, no route. A slow connection is left to the client and its
    retries, and so is everything behind a proxy (the client connects through it, this check could not)."""
    if any(os.environ.get(v) for v in _PROXY_VARIABLES):
        return

    url = urlsplit(endpoint())
    if not url.hostname:
        raise UsageError(f"HF_ENDPOINT {endpoint()!r} is not a URL", hint="For example https://huggingface.co")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except TimeoutError:
        return
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise DownloadError(
            f"could not reach the Hugging Face Hub at {endpoint()} ({reason})", hint=_UNREACHABLE_HINT
        ) from None


def list_remote(repo_id: str, revision: str = "main", accept: Callable[[str], bool] = _is_gguf) -> list[RemoteFile]:
    """The GGUF files of a repository (or those ``accept`` takes), with sizes and LFS hashes."""
    from huggingface_hub.hf_api import RepoFile

    check_reachable()
    with hub_errors(repo_id):
        entries = list(_api().list_repo_tree(repo_id, revision=revision, recursive=True))
    out = []
    for e in entries:
        if isinstance(e, RepoFile) and accept(e.path):
            sha = e.lfs.sha256 if e.lfs is not None else None
            out.append(RemoteFile(safe_repo_path(e.path), int(e.size), sha))
    return out


def listed_build(files: list[RemoteFile], rel: str) -> tuple[str, tuple[str, ...]]:
    """The first file of the build the catalog names ``rel``, as the Hub lists it now: the same name, or the
    same build split into another number of parts (``NAME-00001-of-*.gguf``), or no longer split (one
    ``NAME.gguf``), or newly split. With a note when it is not the catalog's name."""
    paths = {f.path for f in files}
    if rel in paths:
        return rel, ()
    posix = PurePosixPath(rel)
    m = _SPLIT_PART.search(posix.name)
    stem = posix.name[: m.start()] if m else posix.name.removesuffix(".gguf")
    folders = {str(posix.parent), str(posix.parent.parent) if m else str(posix.parent), stem, "."}
    candidates = sorted(
        p
        for p in paths
        if str(PurePosixPath(p).parent) in folders
        and (
            re.fullmatch(re.escape(stem) + r"-00001-of-\d{5}\.gguf", PurePosixPath(p).name)
            or PurePosixPath(p).name == f"{stem}.gguf"
        )
    )
    if len(candidates) != 1:
        return rel, ()  # _with_parts names what is missing
    found = candidates[0]
    return found, (f"the Hub now lists this build as {found} (the catalog says {rel})",)


def _with_parts(files: list[RemoteFile], first: str) -> list[RemoteFile]:
    """The file and, for a split model, all of its parts (checked to be complete)."""
    siblings = [str(PurePosixPath(p)) for p in split_siblings(Path(first))]
    wanted = {s.replace(os.sep, "/") for s in siblings}
    found = sorted((f for f in files if f.path in wanted), key=lambda f: f.path)
    if len(found) != len(wanted):
        have = {f.path for f in found}
        missing = sorted(wanted - have)
        raise DownloadError(f"the repository does not have {missing[0]}", hint="Check the model name and quant.")
    return found


def parse_spec(spec: str) -> tuple[str, str | None]:
    """``owner/repo``, ``owner/repo:file.gguf`` or ``owner/repo/path/file.gguf`` -> (repo, file)."""
    if ":" in spec:
        repo, _, file = spec.partition(":")
        return check_repo_id(repo), safe_repo_path(file)
    parts = spec.split("/")
    if len(parts) > 2 and spec.endswith(".gguf"):
        return check_repo_id("/".join(parts[:2])), safe_repo_path("/".join(parts[2:]))
    return check_repo_id(spec), None


def resolve_target(
    spec: str,
    *,
    quant: str | None = None,
    choose_quant: Callable[[CatalogModel], str] | None = None,
    offline: bool = False,
    revision: str = "main",
) -> PullTarget:
    """What ``pull SPEC`` means: a catalog build (quant chosen for this machine if not given) or a Hub file."""
    catalog = load_catalog()
    name, spec_quant = split_name(spec)
    quant = spec_quant or quant
    if name in catalog:
        model = catalog[name]
        if quant is None:
            quant = choose_quant(model) if choose_quant else model.default_quant
        rel = model.file_for(quant)
        label = f"{name}:{quant}"
        if offline:
            return PullTarget(
                model.gguf_repo, revision, tuple(_cached_files(model.gguf_repo, rel)), label, model, quant
            )
        remote = list_remote(model.gguf_repo, revision)
        live, notes = listed_build(remote, rel)
        files = _with_parts(remote, live)
        listed = model.sizes.get(quant)
        total = sum(f.size for f in files)
        if listed and abs(total - listed) > 0.02 * listed:
            notes += (
                f"the Hub's {label} is {total / 1e9:.1f} GB, not the {listed / 1e9:.1f} GB the catalog lists "
                "(re-uploaded?): the disk check and the plan after download use the real size",
            )
        return PullTarget(model.gguf_repo, revision, tuple(files), label, model, quant, notes)
    if "/" not in spec:
        known = ", ".join(sorted(catalog)[:8])
        raise ModelNotFoundError(f"unknown model {spec!r}", hint=f"Use a catalog name ({known}) or owner/repo.")
    repo_id, file = parse_spec(spec)
    if file is not None and not file.endswith(".gguf"):
        raise DownloadError(f"refusing {file}: localr1 downloads only .gguf model files")
    if offline:
        if file is None:
            raise DownloadError("offline: name the file too (owner/repo:file.gguf)")
        return PullTarget(repo_id, revision, tuple(_cached_files(repo_id, file)), f"{repo_id}/{file}")
    remote = list_remote(repo_id, revision)
    if file is None:
        firsts = [f for f in remote if split_siblings(Path(f.path))[0] == Path(f.path)]
        if quant:
            firsts = [f for f in firsts if quant.lower() in f.path.lower()]
        if len(firsts) != 1:
            names = ", ".join(f.path for f in firsts[:6]) or "none"
            raise DownloadError(
                f"{repo_id} has {len(firsts)} GGUF models{' matching ' + quant if quant else ''}: {names}",
                hint=f"Name one: localr1 pull {repo_id}:FILE.gguf",
            )
        file = firsts[0].path
    return PullTarget(repo_id, revision, tuple(_with_parts(remote, file)), f"{repo_id}/{file}")


CHECKPOINT_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "chat_template.jinja", "README.md", "model.safetensors.index.json",
)  # fmt: skip


def _is_checkpoint_file(path: str) -> bool:
    return "/" not in path and (path in CHECKPOINT_FILES or path.endswith(".safetensors"))


def checkpoint_folder(
    repo_id: str, *, revision: str = "main", offline: bool = False, show_progress: bool = True
) -> Path:
    """A Hugging Face checkpoint (config, tokenizer, safetensors weights) in the cache; downloaded if needed.

    Pickle weights and code files (``*.py``) are never fetched."""
    check_repo_id(repo_id)
    if offline:
        return _find_cached(repo_id, ["config.json"], f"{repo_id} (checkpoint)")[0].parent
    files = list_remote(repo_id, revision, accept=_is_checkpoint_file)
    names = {f.path for f in files}
    if "config.json" not in names:
        raise DownloadError(f"{repo_id} has no config.json, so it is not a Hugging Face checkpoint")
    if not any(n.endswith(".safetensors") for n in names):
        raise DownloadError(
            f"{repo_id} has no safetensors weights",
            hint="localr1 never downloads pickle weights; download them yourself and pass the folder with --allow-pickle.",
        )
    files.sort(key=lambda f: (f.path != "config.json", f.path))
    target = PullTarget(repo_id, revision, tuple(files), f"{repo_id} (checkpoint)")
    return pull(target, show_progress=show_progress).parent


def _find_cached(repo_id: str, rels: list[str], what: str) -> list[Path]:
    """The newest snapshot of the repository that holds all of these files; offline, nothing else can help."""
    snaps = hf_hub_cache() / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    for snap in sorted(snaps.iterdir(), reverse=True) if snaps.is_dir() else []:
        paths = [snap / rel for rel in rels]
        if all(p.is_file() for p in paths):
            return paths
    raise DownloadError(
        f"{what} is not in the local cache and localr1 is offline",
        hint="Connect and run pull again without --offline (or unset HF_HUB_OFFLINE).",
    )


def _cached_files(repo_id: str, rel: str) -> list[RemoteFile]:
    rels = [p.as_posix() for p in split_siblings(Path(rel))]
    paths = _find_cached(repo_id, rels, rel)
    return [RemoteFile(r, p.stat().st_size, None) for r, p in zip(rels, paths)]


# --- downloading ------------------------------------------------------------------------------------------


def _blob_dir(repo_id: str) -> Path:
    return hf_hub_cache() / ("models--" + repo_id.replace("/", "--")) / "blobs"


def remaining_bytes(target: PullTarget) -> int:
    """What is still to download: complete blobs count as done, partial ones for what they hold."""
    blobs = _blob_dir(target.repo_id)
    left = 0
    for f in target.files:
        if f.sha256 and (blobs / f.sha256).is_file():
            continue
        partial = blobs / f"{f.sha256}.incomplete" if f.sha256 else None
        have = partial.stat().st_size if partial is not None and partial.is_file() else 0
        left += max(0, f.size - have)
    return left


def free_disk(path: Path) -> int:

    simulated = Simulation.from_env().disk
    if simulated is not None:
        return simulated
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def preflight(target: PullTarget) -> int:
    """Raise before any byte is written if the disk cannot hold what is left to download."""
    need = remaining_bytes(target)
    free = free_disk(hf_hub_cache())
    margin = 256 << 20
    if need + margin > free:
        raise DownloadError(
            f"not enough disk space for {target.label}: it needs {need / GiB:.1f} GiB more, "
            f"{free / GiB:.1f} GiB is free in {hf_hub_cache()}",
            hint="Free some space (localr1 rm MODEL), or point HF_HUB_CACHE at a bigger disk.",
        )
    return need


class hub_errors:
    """Turn huggingface_hub's and the network's exceptions into one-line DownloadErrors.

    ``transfer`` says whether bytes may already be on disk (then a retry resumes), or whether the Hub was
    only being asked about the files."""

    def __init__(self, what: str, *, transfer: bool = False) -> None:
        self.what = what
        self.transfer = transfer

    def __enter__(self) -> hub_errors:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or isinstance(exc, (KeyboardInterrupt, DownloadError, UsageError)):
            return False
        from huggingface_hub import errors as hf

        if isinstance(exc, hf.GatedRepoError):
            raise DownloadError(
                f"{self.what} is gated: accept its terms on the Hub first",
                hint="Then log in with `hf auth login` (or set HF_TOKEN) and pull again.",
            ) from exc
        if isinstance(exc, hf.RepositoryNotFoundError):
            raise DownloadError(
                f"repository {self.what} was not found (or it is private)",
                hint="Check the name; for a private repository log in with `hf auth login`.",
            ) from exc
        if isinstance(exc, hf.RevisionNotFoundError):
            raise DownloadError(f"{self.what}: no such revision") from exc
        if isinstance(exc, hf.EntryNotFoundError):
            raise DownloadError(f"{self.what} is not in the repository") from exc
        if isinstance(exc, hf.HfHubHTTPError):
            raise DownloadError(f"the Hub refused the download of {self.what}: {str(exc).splitlines()[0]}") from exc
        if isinstance(exc, (*_http_errors(), OSError)) and not isinstance(exc, FileNotFoundError) and not self.transfer:
            raise DownloadError(
                f"could not reach the Hugging Face Hub at {endpoint()} ({type(exc).__name__}: {exc})",
                hint=_UNREACHABLE_HINT,
            ) from exc
        if isinstance(exc, (*_http_errors(), OSError)) and not isinstance(exc, FileNotFoundError):
            raise DownloadError(
                f"the download of {self.what} was interrupted ({type(exc).__name__}: {exc})",
                hint="Run pull again: it resumes where it stopped.",
            ) from exc
        return False


def _verified_index() -> Path:
    return data_dir() / "verified.json"


def _load_index() -> dict:
    try:
        return json.loads(_verified_index().read_text())
    except (OSError, ValueError):
        return {}


def _remember(blob: Path, sha256: str) -> None:
    from filelock import FileLock

    index_path = _verified_index()
    index_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(index_path) + ".lock"):
        index = _load_index()
        st = blob.stat()
        index[str(blob)] = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        tmp = index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, index_path)


def is_verified(blob: Path, sha256: str) -> bool:
    entry = _load_index().get(str(blob))
    if not entry:
        return False
    st = blob.stat()
    return entry == {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def verify(link: Path, remote: RemoteFile, *, show_progress: bool = True) -> None:
    """Check a downloaded file against the Hub's sha256; delete it if it does not match."""
    if remote.sha256 is None:
        return
    blob = Path(os.path.realpath(link))
    if is_verified(blob, remote.sha256):
        return
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=blob.stat().st_size, unit="B", unit_scale=True, desc=f"verify {Path(remote.path).name}")
    try:
        actual = sha256_file(blob, bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    if actual != remote.sha256:
        for p in {blob, link}:
            p.unlink(missing_ok=True)
        raise DownloadError(
            f"{remote.path} was corrupted in transit (sha256 {actual[:12]}… instead of {remote.sha256[:12]}…); "
            "the bad file was deleted",
            hint="Run pull again to download it afresh.",
        )
    _remember(blob, remote.sha256)


def _http_errors() -> tuple[type[BaseException], ...]:
    """The network exception base classes of the HTTP client huggingface_hub uses (httpx or its fork)."""
    found: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            found.append(__import__(name).HTTPError)
    return tuple(found)


ProgressFn = Callable[[str, int, int], None]  # (file name, bytes done, bytes total)


def _fetch(
    repo_id: str,
    f: RemoteFile,
    revision: str,
    *,
    show_progress: bool,
    progress: ProgressFn | None = None,
    retries: int = 5,
) -> Path:
    """One file into the Hugging Face cache layout, resumable across runs and safe against concurrent pulls.

    huggingface_hub itself now downloads into a per-process temporary file, which is lost when the process
    is killed; here the partial file is ``blobs/<sha256>.incomplete``, shared under a file lock, and every
    attempt (in this run or the next) continues it with a Range request.
    """
    from filelock import FileLock
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo_id, safe_repo_path(f.path), revision=revision, endpoint=endpoint())
    with hub_errors(f"{repo_id}/{f.path}"):
        meta = get_hf_file_metadata(url)
    if not meta.etag or not meta.commit_hash:
        raise DownloadError(f"the Hub sent no version information for {f.path}")
    # Every name below comes from the server: checked before it touches the filesystem.
    etag = check_etag(meta.etag, f.path)
    commit = check_commit(meta.commit_hash, f.path)
    repo_dir = hf_hub_cache() / ("models--" + check_repo_id(repo_id).replace("/", "--"))
    blob = repo_dir / "blobs" / etag
    pointer = repo_dir / "snapshots" / commit / safe_repo_path(f.path)
    size = meta.size if meta.size is not None else f.size
    if size is not None and not 0 <= size <= MAX_FILE_BYTES:
        raise DownloadError(f"the server announced an impossible size for {f.path}: {size}")
    blob.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(blob) + ".lock"):
        if not blob.exists():
            partial = blob.with_name(etag + ".incomplete")
            _transfer(meta.location, partial, size, f"{repo_id}/{f.path}", show_progress, progress, retries)
            os.replace(partial, blob)
        if not pointer.exists():
            pointer.parent.mkdir(parents=True, exist_ok=True)
            try:
                pointer.symlink_to(os.path.relpath(blob, pointer.parent))
            except FileExistsError:
                pass
            except OSError:  # no symlinks (some Windows setups): the file itself goes into the snapshot
                os.replace(blob, pointer)
        if len(revision) != 40:  # a branch or tag: record which commit it pointed to, as huggingface_hub does
            ref = repo_dir / "refs" / safe_repo_path(revision)
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(commit)
    return pointer


def _transfer(
    location: str,
    partial: Path,
    size: int | None,
    what: str,
    show_progress: bool,
    progress: ProgressFn | None,
    retries: int,
) -> None:
    """Fill ``partial`` up to ``size`` bytes from ``location``: Range requests continue what is there (from this
    run or an earlier one), a dropped connection is retried while bytes keep coming, and a server that sends
    more than it announced is refused (the partial file is discarded, so it cannot block the next pull)."""
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    name = Path(what).name
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        have = partial.stat().st_size if partial.exists() else 0
        bar = tqdm(total=size, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=name)
    net_errors = _http_errors()
    try:
        attempts = retries
        while True:
            have = partial.stat().st_size if partial.exists() else 0
            if size is not None and have > size:  # left by a server that sent too much: start over
                partial.unlink()
                have = 0
            if size is not None and have == size:
                break
            headers = build_hf_headers()
            if have:
                headers["Range"] = f"bytes={have}-"
            try:
                with get_session().stream("GET", location, headers=headers, follow_redirects=True) as r:
                    with hub_errors(what):
                        hf_raise_for_status(r)
                    mode = "ab" if have and r.status_code == 206 else "wb"  # a server may ignore Range
                    if bar is not None and mode == "wb":
                        bar.reset(total=size)
                    with open(partial, mode) as out:
                        for chunk in r.iter_bytes(1 << 20):
                            if size is not None and out.tell() + len(chunk) > size:
                                out.truncate(0)
                                raise DownloadError(
                                    f"the server sent more than the {size:,} bytes it announced for "
                                    f"{name}; the partial file was discarded",
                                    hint="Run pull again; if it repeats, a proxy or the server is at fault.",
                                )
                            out.write(chunk)
                            attempts = retries  # progress was made: the retry budget starts over
                            if bar is not None:
                                bar.update(len(chunk))
                            if progress is not None:
                                progress(name, out.tell(), size or 0)
                if size is None:
                    break
            except net_errors as exc:
                attempts -= 1
                if attempts < 0:
                    with hub_errors(what, transfer=True):
                        raise exc
    finally:
        if bar is not None:
            bar.close()
    got = partial.stat().st_size
    if size is not None and got != size:
        raise DownloadError(
            f"{name}: received {got:,} bytes, expected {size:,}", hint="Run pull again: it resumes where it stopped."
        )


def pull(
    target: PullTarget, *, offline: bool = False, show_progress: bool = True, progress: ProgressFn | None = None
) -> Path:
    """Download (or find in the cache) every file of the target; returns the first file's path.

    ``progress`` is called with each chunk (for front ends that draw their own progress bar)."""
    if offline:
        return _find_cached(target.repo_id, [f.path for f in target.files], target.label)[0]
    preflight(target)
    paths = []
    for f in target.files:
        local = _fetch(target.repo_id, f, target.revision, show_progress=show_progress, progress=progress)
        verify(local, f, show_progress=show_progress)
        paths.append(local)
    return paths[0]
