"""tar.gz archives for the file routes: packing a local directory or one file, and unpacking a
download without ever writing outside the target directory."""

from __future__ import annotations

import io
import os
import posixpath
import tarfile
from pathlib import Path
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


def pack_dir(local_dir: PathLike) -> bytes:
    """The contents of ``local_dir`` (not the directory itself) as a tar.gz."""
    root = Path(local_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(root.rglob("*")):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                continue  # only files and directories travel
            tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
    return buf.getvalue()


def pack_file(name: str, data: bytes, mode: int = 0o644) -> bytes:
    """A tar.gz holding one file ``name`` with ``data``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _safe_members(tar: tarfile.TarFile):
    for member in tar.getmembers():
        name = posixpath.normpath(member.name.lstrip("/"))
        if name == "." or name.startswith("../") or name == "..":
            continue
        if not (member.isfile() or member.isdir()):
            continue  # links and devices never land on the caller's disk
        member.name = name
        member.mode &= 0o777
        yield member


def unpack_into(archive: bytes, local_dir: PathLike) -> Path:
    """Unpacks a download into ``local_dir`` (created if missing): files and directories only,
    nothing outside it."""
    root = Path(local_dir)
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in _safe_members(tar):
            target = root / member.name
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            with open(target, "wb") as out:
                out.write(source.read() if source else b"")
            os.chmod(target, member.mode or 0o644)
    return root


def single_file(archive: bytes) -> bytes:
    """The one regular file a download of a file path holds."""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        files = [m for m in tar.getmembers() if m.isfile()]
        if len(files) != 1:
            raise IsADirectoryError(f"expected one file in the download, found {len(files)}")
        source = tar.extractfile(files[0])
        return source.read() if source else b""
