"""inotify(7) for the tests, from the standard library (ctypes): what
inotifywait, systemd's path units, Python watchdog and Go fsnotify use."""

import ctypes
import os
import select
import struct
import time

_libc = ctypes.CDLL("libc.so.6", use_errno=True)

FLAGS = {
    "ACCESS": 0x1, "MODIFY": 0x2, "ATTRIB": 0x4, "CLOSE_WRITE": 0x8, "CLOSE_NOWRITE": 0x10,
    "OPEN": 0x20, "MOVED_FROM": 0x40, "MOVED_TO": 0x80, "CREATE": 0x100, "DELETE": 0x200,
    "DELETE_SELF": 0x400, "MOVE_SELF": 0x800, "UNMOUNT": 0x2000, "Q_OVERFLOW": 0x4000,
    "IGNORED": 0x8000, "ISDIR": 0x40000000,
}
ALL_EVENTS = 0xfff

# systemd's src/core/path.c: what a path unit watches on each parent
# directory of its path, and on the path itself for PathExists=.
SYSTEMD_PARENT = (FLAGS["DELETE_SELF"] | FLAGS["MOVE_SELF"] | FLAGS["ATTRIB"] |
                  FLAGS["CREATE"] | FLAGS["MOVED_TO"])
SYSTEMD_EXISTS = FLAGS["DELETE_SELF"] | FLAGS["MOVE_SELF"] | FLAGS["ATTRIB"]


class Event:
    def __init__(self, path, mask, name):
        self.path, self.mask, self.name = path, mask, name
        self.flags = {k for k, v in FLAGS.items() if mask & v}

    def __repr__(self):
        return "%s %s%s" % (self.path, "|".join(sorted(self.flags)),
                            " " + self.name if self.name else "")


class Inotify:
    """An inotify instance; watches are added by path, events read with a
    timeout (it never blocks longer)."""

    def __init__(self):
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.paths = {}
        self.events = []

    def watch(self, path, mask=ALL_EVENTS):
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, "inotify_add_watch %s: %s" % (path, os.strerror(e)))
        self.paths[wd] = path
        return wd

    def read(self, timeout):
        """Events that arrive within `timeout` seconds (all of them, also
        those kept from before)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            r, _, _ = select.select([self.fd], [], [], max(0.0, left))
            if r:
                buf = os.read(self.fd, 65536)
                i = 0
                while i < len(buf):
                    wd, mask, _, length = struct.unpack_from("iIII", buf, i)
                    name = buf[i + 16:i + 16 + length].rstrip(b"\0").decode(errors="replace")
                    self.events.append(Event(self.paths.get(wd), mask, name))
                    i += 16 + length
            if left <= 0:
                return list(self.events)

    def wait_for(self, timeout, path, flag, name=""):
        """The first event on `path` with `flag` (and `name`, for a watch of
        a directory) within `timeout` seconds, or None."""
        deadline = time.monotonic() + timeout
        while True:
            for e in self.events:
                if e.path == path and flag in e.flags and e.name == name:
                    return e
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.read(min(left, 0.05))

    def clear(self):
        self.read(0)
        self.events = []

    def close(self):
        os.close(self.fd)
