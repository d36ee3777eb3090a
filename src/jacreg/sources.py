"""Raw dataset files: where they come from (config ``data.sources``) and how they are verified.

Each torchvision dataset (``mnist``, ``fashion_mnist``, ``cifar10``) has one *source*:

- ``null`` (default): torchvision's own mirrors. torchvision downloads the archives and checks
  their md5 (the packaging it publishes); see :mod:`jacreg.data` for that path.
- an ``http(s)://`` base URL holding the same file names as torchvision's mirrors;
- a local directory (a plain path or a ``file://`` URL), e.g. the shared copy on a cluster or
  Debian's ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).

For a URL or a local directory the *content* is verified, not the packaging: every payload file
(the decompressed IDX files of MNIST-like sets; the batches inside the CIFAR-10 archive) is
decompressed into a staging folder and its digest compared with the digest recorded for the
official release (:data:`CONTENT_DIGESTS`) or given in ``data.digests``, whatever the compression
(``.gz`` or plain). Only verified files are moved into torchvision's layout under ``data/raw/``,
one atomic rename each; a wrong or truncated file stops the preparation with a
:class:`ChecksumError` naming the file and both digests, and the staging folder is removed, so
nothing half-written is left. torchvision's dataset classes then read the verified files
(``download=False``). A later preparation verifies the files in place (for ``mnist`` without a
content digest: by the original archive kept beside each IDX file) and does not need the source.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import shutil
import tarfile
import urllib.error
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

# Digests of the payload files of the official releases, as "algorithm:hex".
# - fashion_mnist: SHA-256 of the four decompressed IDX files of Zalando's release, measured on
#   the files of Debian's `dataset-fashion-mnist` (Debian recompressed the .gz archives, so their
#   md5s are not torchvision's; the decompressed bytes are the original release: 60,000 + 10,000
#   images, 6,000 per class in training).
# - cifar10: the md5 of each decompressed batch, as torchvision's CIFAR10 class publishes and
#   checks them (content digests already: they do not depend on how the archive was compressed);
#   taken from the class at run time, see :func:`expected_digests`.
# - mnist: no content digest could be measured here (no machine of this project reaches the
#   MNIST files); a URL or local source must then hold torchvision's original archives, checked
#   by their md5 (:data:`ARCHIVE_MD5_FALLBACK`), or ``data.digests.mnist`` gives the digests.
CONTENT_DIGESTS: dict[str, dict[str, str]] = {
    "fashion_mnist": {
        "train-images-idx3-ubyte":
            "sha256:c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte":
            "sha256:bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte":
            "sha256:5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte":
            "sha256:0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
STAGING_PREFIX = ".staging-"


class ChecksumError(RuntimeError):
    """A raw file does not match its expected digest; the message names it and both digests."""


class DownloadError(RuntimeError):
    """A raw file could not be fetched; the message names ``data.sources.{dataset}``."""


@dataclass(frozen=True)
class Source:
    """Where one dataset's files come from: ``kind`` is "default", "url" or "local"."""

    kind: str
    location: str  # base URL ending in "/", or a directory path; "" for the default

    def describe(self) -> str:
        return {"default": "torchvision's mirrors", "url": self.location,
                "local": f"local directory {self.location}"}[self.kind]


def parse_source(dataset: str, value: str | None) -> Source:
    """Interpret ``data.sources.{dataset}``: null, an http(s) base URL, or a local directory
    (plain path or ``file://`` URL). A local directory must exist."""
    if value is None or value == "":
        return Source("default", "")
    if value.startswith(("http://", "https://")):
        return Source("url", value.rstrip("/") + "/")
    if value.startswith("file://"):
        parsed = urllib.parse.urlparse(value)
        if parsed.netloc not in ("", "localhost"):
            raise ValueError(f"config key 'data.sources.{dataset}': {value!r}: file:// URLs "
                             "must name a local path (file:///path)")
        path = Path(urllib.parse.unquote(parsed.path))
    elif "://" in value:
        raise ValueError(f"config key 'data.sources.{dataset}': {value!r}: unsupported scheme; "
                         "allowed: an http(s):// base URL, a local directory or a file:// URL")
    else:
        path = Path(value).expanduser()
    if not path.is_dir():
        raise ValueError(f"config key 'data.sources.{dataset}': {value!r} is not a directory "
                         f"(looked for {path})")
    return Source("local", str(path.resolve()))


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def expected_digests(dataset: str, cls, overrides: Mapping[str, str] | None) -> dict[str, str]:
    """Content digests of ``dataset``'s payload files: the recorded ones (for CIFAR-10 the batch
    md5s of torchvision's class ``cls``), with ``data.digests`` (SHA-256) replacing them."""
    digests = dict(CONTENT_DIGESTS.get(dataset, {}))
    if hasattr(cls, "train_list"):  # CIFAR-10: torchvision's md5 of each decompressed batch
        entries = cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]]
        digests.update({name: f"md5:{md5}" for name, md5 in entries})
        known = [name for name, _ in entries]
    else:  # MNIST-like: the decompressed IDX files
        known = [Path(url).name.removesuffix(".gz") for url, _ in cls.resources]
    unknown = sorted(set(overrides or {}) - set(known))
    if unknown:  # e.g. the name of the .gz archive: it would be ignored silently
        raise ValueError(f"config key 'data.digests.{dataset}': unknown file name(s) {unknown}; "
                         f"allowed: {', '.join(known)} (the decompressed payload files)")
    for name, value in (overrides or {}).items():
        digests[name] = value if ":" in value else f"sha256:{value}"
    return digests


def check_digest(path: Path, expected: str, label: str) -> str | None:
    """None when ``path`` has digest ``expected`` ("algorithm:hex"); else a message naming
    ``label`` and both digests."""
    algorithm, want = expected.split(":", 1)
    got = file_digest(path, algorithm)
    if got == want:
        return None
    return (f"{label}: content {algorithm} mismatch: got {got}, expected {want} "
            f"({path.stat().st_size} bytes; truncated or not the official release?)")


def _fetch(source: Source, name: str, target: Path, dataset: str) -> Path | None:
    """Copy or download ``name`` from the source to ``target``; None when a local directory
    does not have it. A download failure becomes a DownloadError naming the config key."""
    from torchvision.datasets.utils import download_url

    if source.kind == "local":
        path = Path(source.location) / name
        if not path.is_file():
            return None
        shutil.copyfile(path, target)
        return target
    try:
        download_url(source.location + name, root=str(target.parent), filename=target.name,
                     md5=None, max_redirect_hops=3)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        raise DownloadError(
            f"could not download {dataset} file {name} from {source.location}: "
            f"{str(error).strip()}\nCheck the config key 'data.sources.{dataset}' (an http(s) "
            "base URL or a local directory), or run the offline quick profile: "
            "snakemake --cores all --configfile configs/quick.yaml") from error
    return target


def _origin(source: Source, name: str) -> str:
    return (str(Path(source.location) / name) if source.kind == "local"
            else source.location + name)


@contextlib.contextmanager
def _staging(raw_dir: Path, dataset: str):
    folder = raw_dir / f"{STAGING_PREFIX}{dataset}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _verified_in_place(files: Mapping[str, Path], digests: Mapping[str, str]) -> bool:
    """True when every payload file is already in place with its expected digest."""
    for name, path in files.items():
        if name not in digests or not path.is_file():
            return False
        if check_digest(path, digests[name], str(path)) is not None:
            return False
    return True


def _mnist_like_in_place(folder: Path, payloads: list[str], digests: Mapping[str, str],
                         archive_md5: Mapping[str, str]) -> bool:
    """True when every IDX file is in place and verified: by its content digest, or, without
    one, by its archive ``{name}.gz`` kept beside it (torchvision's md5), from which the IDX file
    is then decompressed again (so a damaged one is rebuilt, not trusted)."""
    by_content = {name: folder / name for name in payloads if name in digests}
    if not _verified_in_place(by_content, digests):
        return False
    by_archive = [name for name in payloads if name not in digests]
    for name in by_archive:
        archive = folder / (name + ".gz")
        if not archive.is_file() or file_digest(archive, "md5") != archive_md5[name + ".gz"]:
            return False
    for name in by_archive:
        partial = folder / f"{STAGING_PREFIX}{name}"
        try:
            with gzip.open(folder / (name + ".gz"), "rb") as src, open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (OSError, EOFError):
            partial.unlink(missing_ok=True)
            return False
        partial.replace(folder / name)
    return True


def install_mnist_like(dataset: str, cls, source: Source, raw_dir: Path,
                       digests: Mapping[str, str], archive_md5: Mapping[str, str]) -> None:
    """Put the four verified IDX files of an MNIST-like set into ``raw_dir/{class}/raw/``.

    Each file is taken from the source as ``{name}.gz`` or, in a local directory, also as the
    plain ``{name}``; decompressed in staging; checked against its content digest (or, without
    one, its archive against torchvision's md5 ``archive_md5``); then renamed into place.
    """
    folder = raw_dir / cls.__name__ / "raw"
    payloads = [Path(url).name.removesuffix(".gz") for url, _ in cls.resources]
    in_place = {name: folder / name for name in payloads}
    if _mnist_like_in_place(folder, payloads, digests, archive_md5):
        return
    with _staging(raw_dir, dataset) as staging:
        problems, ready, archives = [], {}, {}
        for name in payloads:
            archive = _fetch(source, name + ".gz", staging / (name + ".gz"), dataset)
            plain = staging / name
            if archive is not None:
                origin = _origin(source, name + ".gz")
                try:
                    with gzip.open(archive, "rb") as src, open(plain, "wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                except (OSError, EOFError) as error:  # truncated or not gzip
                    problems.append(f"{origin}: cannot be decompressed ({error})")
                    continue
            elif _fetch(source, name, plain, dataset) is not None:
                origin = _origin(source, name)
            else:
                problems.append(f"{_origin(source, name + '.gz')}: missing (nor is the "
                                f"uncompressed {name} there)")
                continue
            if name in digests:
                problem = check_digest(plain, digests[name], origin)
            elif archive is not None:
                want = archive_md5[name + ".gz"]
                got = file_digest(archive, "md5")
                problem = None if got == want else (
                    f"{origin}: archive md5 mismatch: got {got}, expected {want} (torchvision's); "
                    f"no content digest is recorded for {dataset}: give one in "
                    f"'data.digests.{dataset}.{name}'")
            else:
                problem = (f"{origin}: no content digest is recorded for {dataset} and there is "
                           f"no archive to check; give one in 'data.digests.{dataset}.{name}'")
            if problem:
                problems.append(problem)
            else:
                ready[name] = plain
                if name not in digests:  # verified by its archive: kept, to verify it in place
                    archives[name + ".gz"] = archive
        if problems:
            raise ChecksumError(f"{dataset} from {source.describe()}:\n  " + "\n  ".join(problems)
                                + "\nNothing was written under " + str(folder))
        folder.mkdir(parents=True, exist_ok=True)
        for name, path in archives.items():
            path.replace(folder / name)
        for name, path in ready.items():
            path.replace(in_place[name])


def install_cifar(dataset: str, cls, source: Source, raw_dir: Path,
                  digests: Mapping[str, str]) -> None:
    """Put the verified CIFAR-10 batches into ``raw_dir/cifar-10-batches-py/``.

    Taken from the source's ``cifar-10-python.tar.gz`` or, in a local directory, from an
    already extracted ``cifar-10-batches-py/`` folder; each batch is checked against its content
    digest before anything is moved into place (the batches are pickles torchvision unpickles).
    """
    members = [name for name, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    folder = raw_dir / cls.base_folder
    in_place = {name: folder / name for name in members}
    if _verified_in_place(in_place, digests):
        return
    with _staging(raw_dir, dataset) as staging:
        extracted = staging / cls.base_folder
        origin = _origin(source, cls.filename)
        archive = _fetch(source, cls.filename, staging / cls.filename, dataset)
        if archive is not None:
            try:
                with tarfile.open(archive, "r:gz") as tar:
                    tar.extractall(staging, filter="data")
            except (OSError, EOFError, tarfile.TarError) as error:
                raise ChecksumError(f"{origin}: cannot be extracted ({error}); nothing was "
                                    f"written under {folder}") from error
        elif source.kind == "local" and (Path(source.location) / cls.base_folder).is_dir():
            origin = str(Path(source.location) / cls.base_folder)
            shutil.copytree(Path(source.location) / cls.base_folder, extracted)
        else:
            raise ChecksumError(f"{origin}: missing (nor is an extracted {cls.base_folder}/ "
                                "there)")
        problems = []
        for name in members:
            path = extracted / name
            if not path.is_file():
                problems.append(f"{origin}: {name} missing")
            elif name not in digests:
                problems.append(f"{origin}: {name}: no content digest recorded; give one in "
                                f"'data.digests.{dataset}.{name}'")
            elif (problem := check_digest(path, digests[name], f"{origin}: {name}")):
                problems.append(problem)
        if problems:
            raise ChecksumError(f"{dataset} from {source.describe()}:\n  " + "\n  ".join(problems)
                                + "\nNothing was written under " + str(folder))
        folder.mkdir(parents=True, exist_ok=True)
        for name in members:
            (extracted / name).replace(in_place[name])


def check_installed_content(dataset: str, files: Mapping[str, Path],
                            digests: Mapping[str, str]) -> None:
    """After torchvision's own download (default source), check the payload files whose
    content digest is known; a mismatch removes the file and raises a ChecksumError."""
    problems = []
    for name, path in files.items():
        if name in digests and path.is_file():
            problem = check_digest(path, digests[name], str(path))
            if problem:
                path.unlink()
                problems.append(problem + "; removed")
    if problems:
        raise ChecksumError(f"{dataset}:\n  " + "\n  ".join(problems))
