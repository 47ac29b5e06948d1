"""``disttgl fetch NAME --out DIR [--mirror DIR_OR_URL] [--retries N]``: download a registered dataset.

pooch does the transfer (HTTP/FTP, progress bar, retries with back-off, temporary file renamed into
place). The sha256 is checked inside pooch's retry loop (our downloader wrapper hashes the temporary
file and raises ``ValueError`` on a mismatch), so a bad copy is retried, then deleted, and the file is
hashed only once. A mirror is a local folder (offline clusters: files under their registry name, flat
or in a ``<NAME>/`` subfolder; copied, never fetched over the network) or a URL base.
Where the registry knows no hash, the first download's hash is recorded in ``<file>.sha256`` and
later runs are pinned to it.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import os
import re
import shutil
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import pooch

from disttgl.atomic import atomic_path, check_writable_dir
from disttgl.errors import DataError
from disttgl.data.registry import Dataset, RemoteFile, get_dataset

log = logging.getLogger(__name__)

Downloader = Callable[[str, str, object], None]


class _Mismatch(ValueError):
    """Raised inside pooch's retry loop; a ``ValueError`` so that pooch retries and deletes the temp."""

    def __init__(self, expected: str, got: str):
        super().__init__(f"sha256 mismatch: expected {expected}, got {got}")
        self.expected, self.got = expected, got


@dataclass(frozen=True)
class _Source:
    url: str  # URL or local path handed to the downloader
    downloader: Downloader
    retries: int


def _copy(url: str, output_file: str, _pooch: object) -> None:
    shutil.copyfile(url, output_file)


def _url_downloader(url: str, progress: bool) -> Downloader:
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        return pooch.HTTPDownloader(progressbar=progress)
    if scheme == "ftp":
        return pooch.FTPDownloader(progressbar=progress)
    raise DataError(None, f"unsupported URL scheme {scheme!r} in {url} (use http, https or ftp)")


def _locate(d: Dataset, f: RemoteFile, mirror: str | os.PathLike | None, retries: int,
            progress: bool) -> _Source:
    """Where one file comes from: the registry URL, a URL mirror, or a local mirror folder."""
    if mirror is None:
        return _Source(f.url, _url_downloader(f.url, progress), retries)
    text = os.fspath(mirror)
    if "://" in text and not text.startswith("file://"):
        url = text.rstrip("/") + "/" + f.filename
        return _Source(url, _url_downloader(url, progress), retries)
    folder = Path(text.removeprefix("file://"))
    if not folder.is_dir():
        raise DataError(folder, "mirror folder does not exist")
    subdirs = dict.fromkeys([d.name, d.name.lower(), *d.aliases])  # ordered, deduplicated
    candidates = [folder / f.filename] + [folder / s / f.filename for s in subdirs]
    for c in candidates:
        if c.is_file():
            return _Source(str(c), _copy, 0)  # a local copy is not worth retrying
    raise DataError(folder, f"mirror has no {f.filename} for dataset {d.name} (looked for "
                            f"{', '.join(str(c.relative_to(folder)) for c in candidates)})")


def _record_path(target: Path) -> Path:
    return target.with_name(target.name + ".sha256")


def _read_record(target: Path) -> str | None:
    record = _record_path(target)
    if not record.exists():
        return None
    text = record.read_text().split()
    if not text or not re.fullmatch(r"[0-9a-f]{64}", text[0]):
        raise DataError(record, "not a sha256 record (expected '<64 hex digits>  <filename>')")
    return text[0]


def _write_record(target: Path, sha256: str) -> None:
    with atomic_path(_record_path(target)) as tmp:
        tmp.write_text(f"{sha256}  {target.name}\n")


def _download(target: Path, src: _Source, expected: str | None) -> str:
    """Download ``src`` to ``target`` through pooch, verifying ``expected``; return the sha256."""
    import requests  # pooch's own dependency; imported late like pooch does

    seen: dict[str, str] = {}

    def verified(url: str, tmp: str, p: object) -> None:
        src.downloader(url, tmp, p)
        seen["sha256"] = got = pooch.file_hash(tmp)
        if expected is not None and got != expected:
            raise _Mismatch(expected, got)

    store = pooch.create(path=target.parent, base_url="", registry={target.name: None},
                         urls={target.name: src.url}, retry_if_failed=src.retries)
    attempts = f"{src.retries + 1} attempt{'s' * (src.retries > 0)}"
    try:
        store.fetch(target.name, downloader=verified)
    except _Mismatch as exc:
        raise DataError(target, f"checksum mismatch for {target.name} from {src.url} after "
                                f"{attempts}: expected sha256 {exc.expected}, got {exc.got}") from None
    except requests.exceptions.RequestException as exc:
        raise DataError(src.url, f"download of {target.name} failed after {attempts}: {exc}") from None
    except OSError as exc:
        raise DataError(src.url, f"cannot copy {target.name}: {exc.strerror or exc}") from None
    return seen["sha256"]


def _gunzip(src: Path, dest: Path) -> None:
    try:
        with gzip.open(src, "rb") as fin, atomic_path(dest) as tmp, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DataError(src, f"not a valid gzip file ({exc})") from None


def _unzip(src: Path, out: Path, members: tuple[str, ...]) -> None:
    """Extract the archive's regular files flat into ``out`` (each atomically; zipfile checks every
    member's CRC-32 as it reads it) and check that ``members`` were among them."""
    found = set()
    try:
        with zipfile.ZipFile(src) as z:
            for info in z.infolist():
                base = Path(info.filename).name
                if info.is_dir() or not base or base.startswith(".") or info.filename.startswith("__MACOSX/"):
                    continue
                if base in found:
                    raise DataError(src, f"the archive holds two files named {base}")
                with z.open(info) as fin, atomic_path(out / base) as tmp, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout, 1 << 20)
                found.add(base)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise DataError(src, f"not a valid zip archive ({exc})") from None
    missing = [m for m in members if m not in found]
    if missing:
        held = ", ".join(sorted(found)) or "nothing"
        raise DataError(src, f"the archive has no {', '.join(missing)} (it holds {held})")


def _fetch_file(d: Dataset, f: RemoteFile, out: Path, mirror, retries: int, progress: bool) -> Path:
    target = out / f.filename
    recorded = None if f.sha256 else _read_record(target)
    expected = f.sha256 or recorded
    fresh = True
    if target.exists():
        got = pooch.file_hash(str(target))
        if expected is None or got == expected:
            log.info("%s: already present, sha256 %s", target, got)
            fresh = False
        else:
            log.warning("%s: sha256 %s does not match %s; downloading it again", target, got, expected)
            target.unlink()
    if fresh:
        try:
            got = _download(target, _locate(d, f, mirror, retries, progress), expected)
        except DataError as exc:
            if not recorded:
                raise
            raise DataError(exc.path, f"{exc.problem} (the expected hash was recorded in "
                                      f"{_record_path(target)} by an earlier download; delete that "
                                      "file to accept the new one)") from None
    if f.gzip:
        dest = out / f.local_name
        if fresh or not dest.exists():
            try:
                _gunzip(target, dest)
            except DataError:
                target.unlink(missing_ok=True)  # a corrupt archive must not look like a finished fetch
                raise
    if f.unzip and (fresh or not all((out / m).exists() for m in f.unzip)):
        try:
            _unzip(target, out, f.unzip)
        except DataError:
            target.unlink(missing_ok=True)  # a corrupt archive must not look like a finished fetch
            raise
    if f.sha256 is None and recorded != got:
        log.warning("%s: the registry has no sha256 for %s; recorded %s in %s, later runs are pinned "
                    "to it", d.name, f.filename, got, _record_path(target))
        _write_record(target, got)
    return out / f.local_name


def _local_paths(f: RemoteFile, out: Path, fetched: Path) -> list[Path]:
    return [out / m for m in f.unzip] if f.unzip else [fetched]


def fetch(name: str, out_dir: str | os.PathLike, mirror: str | os.PathLike | None = None,
          retries: int = 3, registry: Mapping[str, Dataset] | None = None,
          progress: bool | None = None) -> list[Path]:
    """Fetch every file of dataset ``name`` into ``out_dir``; return the local (decompressed, extracted) paths.

    ``registry`` overrides the built-in one (tests point URLs at a local server); ``progress``
    defaults to a tqdm bar when stderr is a terminal.
    """
    if retries < 0:
        raise DataError(None, f"retries must be >= 0, got {retries}")
    d = get_dataset(name, registry)
    if not d.files:
        log.info("%s: nothing to download (generated by `disttgl synth`)", d.name)
        return []
    out = check_writable_dir(Path(out_dir) / d.files[0].filename).parent
    progress = sys.stderr.isatty() if progress is None else progress
    return [p for f in d.files for p in _local_paths(f, out, _fetch_file(d, f, out, mirror, retries, progress))]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", help="dataset name (see `disttgl datasets`)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the raw files")
    parser.add_argument("--mirror", default=None,
                        help="local folder or URL base holding the files under their registry names")
    parser.add_argument("--retries", type=int, default=3, help="extra download attempts (default 3)")


def run(args: argparse.Namespace) -> int:
    for path in fetch(args.name, args.out, mirror=args.mirror, retries=args.retries):
        print(path)
    return 0
