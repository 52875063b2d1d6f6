"""Wake-ups for file changes: inotify on the directories that hold a file (the path's and, through a
symlink, its target's), so a watcher sleeps until the file changes instead of polling it (the
master's config file, the SQLite store written by another process). Directories, not the file:
editors and Kubernetes ConfigMaps replace a file by renaming."""

from __future__ import annotations

import ctypes
import os

_IN_ATTRIB, _IN_CLOSE_WRITE, _IN_MOVED_FROM, _IN_MOVED_TO = 0x4, 0x8, 0x40, 0x80
_IN_CREATE, _IN_DELETE, _IN_DELETE_SELF, _IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
# Not IN_MODIFY: a file being written is looked at once it is closed (or renamed into place).
_MASK = (_IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
         | _IN_DELETE_SELF | _IN_MOVE_SELF)  # fmt: skip
_IN_MODIFY = 0x2  # for files written in place and kept open (SQLite's WAL)
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC


class DirWatch:
    """`fd` turns readable when an entry of a watched directory changes."""

    def __init__(self, libc: ctypes.CDLL, fd: int, path: str, mask: int) -> None:
        self._libc, self.fd, self.path, self._mask = libc, fd, path, mask

    @classmethod
    def open(cls, path: str, modify: bool = False) -> DirWatch | None:
        """None where inotify is unavailable (the caller polls instead). `modify`: also every write
        into a file of the directories, not only closes and renames."""
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        w = cls(libc, fd, path, _MASK | (_IN_MODIFY if modify else 0))
        if not w.rewatch():
            w.close()
            return None
        return w

    def rewatch(self) -> bool:
        """(Re-)add the watches: a symlink may now point into a new directory. True if any is set."""
        dirs = {os.path.dirname(os.path.abspath(self.path)), os.path.dirname(os.path.realpath(self.path))}
        return sum(self._libc.inotify_add_watch(self.fd, os.fsencode(d), self._mask) >= 0 for d in dirs) > 0

    def drain(self) -> None:
        """Consume the pending events (only the fact that something changed matters)."""
        try:
            while os.read(self.fd, 65536):
                pass
        except BlockingIOError:
            pass
        self.rewatch()

    def close(self) -> None:
        os.close(self.fd)
