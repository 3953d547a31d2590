"""A user's workspace on the host: the files their sandbox keeps between turns, within a quota.

The server reads and writes workspaces as root while their contents are written by untrusted
code, so every path is walked one component at a time from the workspace's own directory
descriptor with O_NOFOLLOW: a symlink (or `..`) planted by the user can never lead the server
to a file outside the workspace, and a FIFO or device is never opened for reading. What the
server writes is owned by the tenant's uid, as if the sandbox had written it.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from switchboard.sandbox.base import SandboxError

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_PATH = 1024
MAX_DEPTH = 64  # deeper directories count as over the quota (usage)


class WorkspaceError(SandboxError):
    """A file operation that cannot be done (bad path, missing file, over quota); the message
    is meant for the user and the model."""


@dataclass(frozen=True, slots=True)
class Usage:
    bytes: int  # disk blocks in use
    files: int  # files and directories
    complete: bool = True  # False: the walk stopped at the file limit


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    kind: str  # "file" | "dir" | "link" | "other"
    size: int


def clean_path(path: str) -> PurePosixPath:
    """A relative path inside the workspace ("/workspace/a/b" and "a/b" alike); never `..`."""
    if not isinstance(path, str) or "\0" in path or len(path) > MAX_PATH:
        raise WorkspaceError("the path must be text of at most 1024 characters")
    text = path.strip()
    if text.startswith("/workspace"):
        text = text[len("/workspace"):]
    parts = [p for p in PurePosixPath(text.lstrip("/")).parts if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise WorkspaceError(f"{path!r}: paths may not contain '..'")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


class Workspace:
    """One user's workspace directory, owned by their uid (when the server can chown)."""

    def __init__(self, path: Path, uid: int | None, gid: int | None, quota_bytes: int, max_files: int) -> None:
        self.path = path
        self.uid, self.gid = uid, gid
        self.quota_bytes = quota_bytes
        self.max_files = max_files

    def ensure(self) -> None:
        """Create the directory (0700, the tenant's) if it is not there yet."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self.path.mkdir(mode=0o700)
        except FileExistsError:
            if self.path.is_symlink() or not self.path.is_dir():
                raise WorkspaceError(f"{self.path} is not a directory") from None
        if self.uid is not None and self.gid is not None:
            st = os.lstat(self.path)
            if (st.st_uid, st.st_gid) != (self.uid, self.gid):
                os.chown(self.path, self.uid, self.gid, follow_symlinks=False)
        os.chmod(self.path, 0o700)

    @contextmanager
    def _dir(self, rel: PurePosixPath, create: bool = False) -> Iterator[int]:
        """A descriptor of directory `rel`, walked without following any symlink."""
        fd = os.open(self.path, DIR_FLAGS)
        try:
            for part in rel.parts if str(rel) != "." else ():
                try:
                    nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise WorkspaceError(f"no directory {str(rel)!r} in the workspace") from None
                    os.mkdir(part, 0o755, dir_fd=fd)
                    self._own(part, fd)
                    nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
                except (NotADirectoryError, OSError) as exc:
                    raise WorkspaceError(f"{str(rel)!r} is not a directory of the workspace ({exc.strerror})") from None
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            os.close(fd)

    def _own(self, name: str, dir_fd: int) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(name, self.uid, self.gid, dir_fd=dir_fd, follow_symlinks=False)

    # -- reading ---------------------------------------------------------------------------
    def read(self, path: str, limit: int) -> tuple[bytes, int]:
        """Up to `limit` bytes of a regular file, and its whole size."""
        rel = clean_path(path)
        if str(rel) == ".":
            raise WorkspaceError("name a file to read")
        with self._dir(rel.parent) as dir_fd:
            try:
                fd = os.open(rel.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
            except FileNotFoundError:
                raise WorkspaceError(f"no file {str(rel)!r} in the workspace") from None
            except OSError as exc:
                raise WorkspaceError(f"cannot open {str(rel)!r} ({exc.strerror})") from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise WorkspaceError(f"{str(rel)!r} is not a regular file")
                return os.read(fd, limit), st.st_size
            finally:
                os.close(fd)

    def list(self, path: str = ".", limit: int = 500, depth: int = 4) -> tuple[list[Entry], bool]:
        """Entries under `path` (recursively, up to `depth` levels), and whether there were more."""
        rel = clean_path(path)
        entries: list[Entry] = []
        with self._dir(rel) as fd:
            more = self._walk(fd, "" if str(rel) == "." else str(rel), depth, entries, limit)
        return entries, more

    def _walk(self, fd: int, prefix: str, depth: int, entries: list[Entry], limit: int) -> bool:
        with os.scandir(fd) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            if len(entries) >= limit:
                return True
            st = child.stat(follow_symlinks=False)
            kind = ("dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode)
                    else "link" if stat.S_ISLNK(st.st_mode) else "other")
            name = f"{prefix}/{child.name}" if prefix else child.name
            entries.append(Entry(name, kind, st.st_size if kind == "file" else 0))
            if kind == "dir" and depth > 1:
                sub = os.open(child.name, DIR_FLAGS, dir_fd=fd)
                try:
                    if self._walk(sub, name, depth - 1, entries, limit):
                        return True
                finally:
                    os.close(sub)
        return False

    def usage(self) -> Usage:
        """Disk blocks and entries in use. Stops counting one past the file limit, or below
        MAX_DEPTH levels (descriptors are held along one path only): either way the workspace
        then counts as over its quota, so nothing can hide from it."""
        if not self.path.is_dir():
            return Usage(0, 0)
        totals = [0, 0]  # bytes, entries

        def visit(fd: int, depth: int) -> bool:
            with os.scandir(fd) as it:
                children = list(it)
            for child in children:
                totals[1] += 1
                if totals[1] > self.max_files:
                    return False
                st = child.stat(follow_symlinks=False)
                totals[0] += st.st_blocks * 512
                if stat.S_ISDIR(st.st_mode):
                    if depth >= MAX_DEPTH:
                        return False
                    try:
                        sub = os.open(child.name, DIR_FLAGS, dir_fd=fd)
                    except OSError:
                        continue
                    try:
                        if not visit(sub, depth + 1):
                            return False
                    finally:
                        os.close(sub)
            return True

        root = os.open(self.path, DIR_FLAGS)
        try:
            complete = visit(root, 1)
        finally:
            os.close(root)
        return Usage(totals[0], totals[1], complete)

    def over_quota(self, usage: Usage | None = None) -> bool:
        usage = usage or self.usage()
        return not usage.complete or usage.bytes > self.quota_bytes or usage.files > self.max_files

    # -- writing ---------------------------------------------------------------------------
    def write(self, path: str, data: bytes) -> int:
        """Create or replace a file (its directories made as needed); refused past the quota."""
        rel = clean_path(path)
        if str(rel) == ".":
            raise WorkspaceError("name a file to write")
        usage = self.usage()
        with self._dir(rel.parent, create=True) as dir_fd:
            old, existing = 0, None
            try:
                existing = os.stat(rel.name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISDIR(existing.st_mode):
                    raise WorkspaceError(f"{str(rel)!r} is a directory")
                old = existing.st_blocks * 512
            except FileNotFoundError:
                pass
            if (not usage.complete or usage.bytes - old + len(data) > self.quota_bytes
                    or (existing is None and usage.files + 1 > self.max_files)):
                raise WorkspaceError(
                    f"the workspace quota ({self.quota_bytes // (1024 * 1024)} MB, {self.max_files} files) "
                    f"would be exceeded: {usage.bytes // 1024} KB and {usage.files} files in use; delete files first"
                )
            if existing is not None and not stat.S_ISREG(existing.st_mode):
                os.unlink(rel.name, dir_fd=dir_fd)  # a symlink, FIFO...: replaced, never followed
            fd = os.open(rel.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         0o644,
                         dir_fd=dir_fd)
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise WorkspaceError(f"{str(rel)!r} is not a regular file")
                if self.uid is not None and self.gid is not None:
                    os.fchown(fd, self.uid, self.gid)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
        return len(data)

    def delete(self, path: str) -> str:
        """Remove a file, a link, or a directory with everything in it."""
        rel = clean_path(path)
        if str(rel) == ".":
            raise WorkspaceError("name a file to delete")
        with self._dir(rel.parent) as dir_fd:
            try:
                st = os.stat(rel.name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise WorkspaceError(f"no file {str(rel)!r} in the workspace") from None
            try:
                if stat.S_ISDIR(st.st_mode):
                    # fd-based on Linux: safe against links swapped in while it runs
                    shutil.rmtree(rel.name, dir_fd=dir_fd)
                else:
                    os.unlink(rel.name, dir_fd=dir_fd)
            except (OSError, RecursionError) as exc:
                raise WorkspaceError(f"cannot delete {str(rel)!r} ({getattr(exc, 'strerror', None) or exc})") from None
        return str(rel)
