"""raw/: the whole IMDS tree, exactly as served (SPEC.md, "The raw tree").

The expected tree is an independent crawl of the mock IMDS over HTTP (a token
from PUT /latest/api/token, then GETs), following SPEC.md's listing rules: a
line ending in '/' is a directory, a line "N=name" names the directory N,
anything else is a file; names that cannot be file names are skipped. It
shares no code with the daemon, nor with reference.py.

Hostile listings are served with the mock's PUT /_mock/listings/<dir> (any
bytes) and PUT /_mock/files/<path>. Every case asserts the log line the
daemon owes (SPEC.md, "Errors": a bad listing line is skipped and logged)
and that the daemon is alive and answering afterwards.

Everything that can block has a limit: HTTP calls have timeouts, subprocesses
too, and a watchdog kills a test's daemons after WATCHDOG_S seconds so that a
hung FUSE request turns into ENOTCONN and a failure instead of a hung run.
"""

import errno
import os
import re
import stat
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request

import pytest

WATCHDOG_S = 40
HTTP_TIMEOUT_S = 5
REFUSED = (errno.EROFS, errno.EPERM, errno.EACCES)

BODY_MAX = 1024 * 1024          # SPEC.md: a body over 1 MiB is EIO
DEPTH_MAX = 32                  # directories followed below raw/
NAME_MAX = 255

DOC = "dynamic/instance-identity/document"

# SPEC.md, "Caching": volatile subtrees of IMDS (fresh on every open).
VOLATILE_ROOTS = ("meta-data/instance-action", "meta-data/spot", "meta-data/events",
                  "meta-data/autoscaling", "meta-data/iam/security-credentials")
# SPEC.md, "Permissions": raw/ twins of the sensitive files (0400).
SENSITIVE_ROOTS = ("meta-data/iam/security-credentials", "meta-data/identity-credentials")

INDEXED = re.compile(rb"^([0-9]+)=")


def under(path, root):
    return path == root or path.startswith(root + "/")


def is_volatile(imds_path):
    return any(under(imds_path, r) for r in VOLATILE_ROOTS)


def is_sensitive(imds_path):
    return imds_path == "user-data" or any(imds_path.startswith(r + "/")
                                           for r in SENSITIVE_ROOTS)


# --- an independent IMDSv2 client and crawl ------------------------------------

class Imds:
    """One token, then GETs; get() returns the body, or None on 404."""

    def __init__(self, url):
        self.base = url.rstrip("/") + "/latest/"
        req = urllib.request.Request(self.base + "api/token", method="PUT", headers={
            "X-aws-ec2-metadata-token-ttl-seconds": "21600"})
        with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as r:
            self.token = r.read().decode()

    def get(self, path):
        req = urllib.request.Request(self.base + urllib.parse.quote(path, safe="/"),
                                     headers={"X-aws-ec2-metadata-token": self.token})
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise


def valid_name(name):
    return 0 < len(name) <= NAME_MAX and name not in (b".", b"..") \
        and b"/" not in name and b"\0" not in name


def parse_listing(body):
    """SPEC.md's reading of a raw/ listing: [(name bytes, is_dir)], invalid
    names and later duplicates dropped."""
    out, seen = [], set()
    for line in body.split(b"\n"):
        is_dir = False
        if line.endswith(b"/"):
            line, is_dir = line[:-1], True
        else:
            m = INDEXED.match(line)
            if m:
                line, is_dir = m.group(1), True
        if not valid_name(line) or line in seen:
            continue
        seen.add(line)
        out.append((line, is_dir))
    return out


def crawl(url):
    """(files, dirs) that raw/ must show: files maps "raw/<path>" (str, as
    os.walk names it) to (imds path, bytes); dirs is a set of "raw/..." paths."""
    imds = Imds(url)
    files, dirs = {}, {"raw"}

    def walk_dir(prefix):          # prefix: IMDS path ending in "/"
        body = imds.get(prefix)
        if body is None:
            return
        dirs.add("raw/" + prefix[:-1])
        for name, is_dir in parse_listing(body):
            path = prefix + os.fsdecode(name)
            if is_dir:
                walk_dir(path + "/")
            else:
                value = imds.get(path)
                if value is not None:
                    files["raw/" + path] = (path, value)

    walk_dir("meta-data/")
    walk_dir("dynamic/")
    user_data = imds.get("user-data")
    if user_data is not None:
        files["raw/user-data"] = ("user-data", user_data)
    return files, dirs


# --- helpers -------------------------------------------------------------------

def _control(mock, method, sub, path, body=None):
    """The mock's control API with the path quoted here, whatever conftest's
    Mock does (the mock unquotes it once)."""
    if isinstance(body, str):
        body = body.encode()
    url = mock.url + "/_mock/" + sub + urllib.parse.quote(path, safe="/")
    req = urllib.request.Request(url, data=body, method=method)
    with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as r:
        return r.read()


def put_file(mock, path, value):
    _control(mock, "PUT", "files/", path, value)


def delete_file(mock, path):
    _control(mock, "DELETE", "files/", path)


def put_listing(mock, path, body):
    _control(mock, "PUT", "listings/", path, body)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def errno_of(fn, *args):
    """The errno `fn(*args)` fails with, or None if it succeeds."""
    try:
        fn(*args)
        return None
    except OSError as e:
        return e.errno


def rm_r(path):
    r = subprocess.run(["rm", "-r", path], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, "rm -r %s: %s" % (path, r.stderr)


def assert_logged(m, pattern, at_least=1):
    """The daemon logged `pattern` (which is then not a test failure)."""
    m.expect_log(pattern)
    hits = [line for line in m.output().splitlines() if re.search(pattern, line)]
    assert len(hits) >= at_least, "expected a log line matching %r, daemon said:\n%s" % (
        pattern, m.output()[-3000:])
    return hits


def assert_answering(m):
    """The daemon is alive and serves a plain file."""
    assert m.alive(), "imdsfs died:\n" + m.output()[-3000:]
    assert read(m.p("raw/meta-data/ami-id")).startswith(b"ami-")
    assert os.path.isdir(m.p("raw/meta-data"))


def walk_raw(m):
    """(files, dirs) under raw/, as "raw/..." paths."""
    files, dirs = set(), set()

    def onerror(e):
        raise e

    for root, dnames, fnames in os.walk(m.p("raw"), onerror=onerror):
        rel = os.path.relpath(root, m.path)
        dirs.add(rel)
        files.update(os.path.join(rel, f) for f in fnames)
    return files, dirs


def gets_by_path(mock):
    return {k[len("GET /latest/"):]: v for k, v in mock.counts().items()
            if k.startswith("GET /latest/")}


# --- 1. the whole tree, against an independent crawl ---------------------------

def test_raw_mirrors_imds(start_mock, mnt, instance):
    mock = start_mock(instance)
    m = mnt(mock)
    want_files, want_dirs = crawl(mock.url)
    got_files, got_dirs = walk_raw(m)

    problems = []
    for d in sorted(want_dirs ^ got_dirs):
        problems.append("%s directory %r" % ("missing" if d in want_dirs else "unexpected", d))
    for f in sorted(set(want_files) ^ got_files):
        problems.append("%s file %r" % ("missing" if f in want_files else "unexpected", f))

    uid, gid = os.getuid(), os.getgid()
    for d in sorted(want_dirs & got_dirs):
        st = os.lstat(m.p(d))
        if not stat.S_ISDIR(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o755:
            problems.append("%r: mode %o, want a directory 0755" % (d, st.st_mode))
        if (st.st_uid, st.st_gid) != (uid, gid):
            problems.append("%r: owned by %d:%d, want %d:%d" % (d, st.st_uid, st.st_gid, uid, gid))
    for f in sorted(set(want_files) & got_files):
        imds_path, want = want_files[f]
        st = os.lstat(m.p(f))
        mode = 0o400 if is_sensitive(imds_path) else 0o444
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != mode:
            problems.append("%r: mode %o, want a regular file %o" % (f, st.st_mode, mode))
        if (st.st_uid, st.st_gid) != (uid, gid):
            problems.append("%r: owned by %d:%d" % (f, st.st_uid, st.st_gid))
        if is_volatile(imds_path):
            if st.st_size not in (0, len(want)):
                problems.append("%r (volatile): st_size %d, want 0 or %d"
                                % (f, st.st_size, len(want)))
        elif st.st_size != len(want):
            problems.append("%r: st_size %d, want %d" % (f, st.st_size, len(want)))
        try:
            got = read(m.p(f))
        except OSError as e:
            problems.append("%r: read fails: %s" % (f, e))
            continue
        if got != want:
            problems.append("%r: reads %r, IMDS serves %r" % (f, got[:200], want[:200]))
    assert not problems, "\n".join(problems)


# --- 2. categories of the rich instance ------------------------------------------

RICH_FILES = [
    "meta-data/block-device-mapping/ami", "meta-data/block-device-mapping/ebs1",
    "meta-data/block-device-mapping/root", "meta-data/events/maintenance/scheduled",
    "meta-data/placement/group-name", "meta-data/placement/partition-number",
    "meta-data/placement/host-id", "meta-data/product-codes",
    "meta-data/identity-credentials/ec2/info",
    "meta-data/identity-credentials/ec2/security-credentials/ec2-instance",
    "meta-data/elastic-inference/associations/eia-0a1b2c3d4e5f60718293a4b5c6d7e8f9",
    "dynamic/instance-identity/pkcs7", "dynamic/instance-identity/signature",
    "dynamic/instance-identity/rsa2048", "dynamic/fws/instance-monitoring",
    "meta-data/services/domain", "meta-data/public-keys/0/openssh-key",
    "meta-data/public-keys/1/openssh-key", "user-data",
]


def test_rich_categories(start_mock, mnt):
    mock = start_mock("rich")
    m = mnt(mock)
    imds = Imds(mock.url)
    for path in RICH_FILES:
        st = os.lstat(m.p("raw", path))
        assert stat.S_ISREG(st.st_mode), path
        assert read(m.p("raw", path)) == imds.get(path), path

    # Shapes come from IMDS's listings, never from a guess.
    assert stat.S_ISREG(os.lstat(m.p("raw/meta-data/services/domain")).st_mode)
    assert read(m.p("raw/meta-data/services/domain")) == b"amazonaws.com"
    for d in ["events", "events/maintenance", "public-keys", "public-keys/0",
              "identity-credentials/ec2/security-credentials", "placement"]:
        assert stat.S_ISDIR(os.lstat(m.p("raw/meta-data", d)).st_mode), d
    assert m.listdir("raw/meta-data/public-keys") == ["0", "1"]   # not "0=alice"
    assert errno_of(os.stat, m.p("raw/meta-data/public-keys/0=alice")) == errno.ENOENT
    assert m.listdir("raw/meta-data/public-keys/0") == ["openssh-key"]
    assert m.listdir("raw/meta-data/events/maintenance") == ["history", "scheduled"]
    assert m.listdir("raw") == ["dynamic", "meta-data", "user-data"]

    # Binary user data: NUL and invalid UTF-8, byte for byte, nothing added.
    ud = read(m.p("raw/user-data"))
    assert b"\0" in ud and b"\xff" in ud and ud == imds.get("user-data")
    assert os.stat(m.p("raw/user-data")).st_size == len(ud)

    # Sensitive twins are 0400, volatile or not.
    for path in ["user-data", "meta-data/iam/security-credentials/web-app-role",
                 "meta-data/identity-credentials/ec2/info",
                 "meta-data/identity-credentials/ec2/security-credentials/ec2-instance"]:
        assert stat.S_IMODE(os.stat(m.p("raw", path)).st_mode) == 0o400, path
    assert stat.S_IMODE(os.stat(m.p("raw/meta-data/iam/info")).st_mode) == 0o444


def test_minimal_has_no_user_data(start_mock, mnt):
    mock = start_mock("minimal")
    m = mnt(mock)
    assert m.listdir("raw") == ["dynamic", "meta-data"]
    assert errno_of(os.stat, m.p("raw/user-data")) == errno.ENOENT
    assert errno_of(os.stat, m.p("raw/meta-data/iam")) == errno.ENOENT


def test_hide_sensitive_raw(start_mock, mnt):
    mock = start_mock("rich")
    m = mnt(mock, options=["hide_sensitive"])
    want_files, want_dirs = crawl(mock.url)
    shown = {f for f, (p, _) in want_files.items() if not is_sensitive(p)}
    # A directory that holds only sensitive files goes too.
    dirs = {d for d in want_dirs
            if any(f.startswith(d + "/") for f in shown)
            or not any(f.startswith(d + "/") for f in want_files)}
    got_files, got_dirs = walk_raw(m)
    assert got_files == shown
    assert got_dirs == dirs
    for gone in ["raw/user-data", "raw/meta-data/iam/security-credentials",
                 "raw/meta-data/iam/security-credentials/web-app-role",
                 "raw/meta-data/identity-credentials"]:
        assert errno_of(os.stat, m.p(gone)) == errno.ENOENT, gone
    assert read(m.p("raw/meta-data/iam/info")) == Imds(mock.url).get("meta-data/iam/info")


def test_raw_is_read_only(start_mock, mnt):
    mock = start_mock("rich")
    m = mnt(mock)
    f = m.p("raw/meta-data/ami-id")
    before = read(f)
    assert errno_of(open, f, "wb") in REFUSED
    # Root may open for appending (the kernel opens files itself); the write
    # is what must fail.
    def append(path):
        with open(path, "ab") as out:
            out.write(b"x")
    assert errno_of(append, f) in REFUSED
    assert errno_of(open, m.p("raw/meta-data/new-file"), "wb") in REFUSED
    assert errno_of(os.mkdir, m.p("raw/meta-data/new-dir")) in REFUSED
    assert errno_of(os.rename, f, m.p("raw/meta-data/moved")) in REFUSED
    assert errno_of(os.chmod, f, 0o644) in REFUSED
    assert errno_of(os.truncate, f, 0) in REFUSED
    assert errno_of(os.unlink, m.p("raw/meta-data/placement")) in (errno.EISDIR, errno.EPERM)
    assert errno_of(os.rmdir, f) == errno.ENOTDIR
    assert read(f) == before


def test_presence_comes_from_listings(start_mock, mnt):
    """A value IMDS would serve but its listing does not name is no file."""
    mock = start_mock("rich")
    put_listing(mock, "meta-data/placement/", b"availability-zone\nregion")
    m = mnt(mock)
    assert m.listdir("raw/meta-data/placement") == ["availability-zone", "region"]
    assert errno_of(os.stat, m.p("raw/meta-data/placement/group-name")) == errno.ENOENT
    assert mock.count("meta-data/placement/group-name") == 0


def test_odd_but_valid_names(start_mock, mnt):
    """Names URL syntax cares about reach IMDS as themselves (escaped once)."""
    mock = start_mock("aemm")
    names = ["with space", "caf\u00e9 \u2615", "a%2Fb", "q?x", "h#x", "star*", "-dash",
             "semi;colon", "plus+", "100%", "tab\tname", "back\\slash", "x=y"]
    for n in names:
        put_file(mock, "meta-data/odd/" + n, "value of " + n)
    # Decoys that a wrongly escaped request would hit instead.
    put_file(mock, "meta-data/odd/a/b", "WRONG a/b")
    put_file(mock, "meta-data/odd/q", "WRONG q")
    put_file(mock, "meta-data/odd/h", "WRONG h")
    m = mnt(mock)
    assert m.listdir("raw/meta-data/odd") == sorted(names + ["a", "h", "q"])
    for n in names:
        assert read(m.p("raw/meta-data/odd", n)) == ("value of " + n).encode(), n
    assert_answering(m)


def test_non_utf8_name(start_mock, mnt):
    """A name that is not UTF-8 is a valid file name: listed as its bytes.
    (The mock decodes request paths as UTF-8 with replacement, so the value
    is stored under U+FFFD, which is what a GET of %FF%FE finds.)"""
    mock = start_mock("aemm")
    put_listing(mock, "meta-data/bin/", b"\xff\xfe\nplain")
    put_file(mock, "meta-data/bin/plain", "p")
    put_file(mock, "meta-data/bin/\ufffd\ufffd", "binary-named")
    m = mnt(mock)
    d = os.fsencode(m.p("raw/meta-data/bin"))
    assert sorted(os.listdir(d)) == [b"plain", b"\xff\xfe"]
    assert read(os.path.join(d, b"\xff\xfe")) == b"binary-named"
    assert_answering(m)


def test_rm_r_raw_clears_everything(start_mock, mnt):
    mock = start_mock("rich")
    m = mnt(mock)
    assert read(m.p("raw/meta-data/ami-id")) == b"ami-0123456789abcdef0"
    assert read(m.p("region")) == b"eu-west-1\n"
    assert m.listdir("raw/meta-data/block-device-mapping")[0] == "ami"
    put_file(mock, "meta-data/ami-id", "ami-00000000000000new")
    put_file(mock, "meta-data/block-device-mapping/aaa", "/dev/new")
    doc = Imds(mock.url).get(DOC).replace(b"eu-west-1", b"eu-north-1")
    put_file(mock, DOC, doc)
    rm_r(m.p("raw"))
    assert read(m.p("raw/meta-data/ami-id")) == b"ami-00000000000000new"
    assert m.listdir("raw/meta-data/block-device-mapping")[0] == "aaa"
    assert read(m.p("raw", DOC)) == doc
    assert read(m.p("region")) == b"eu-north-1\n"


# --- 3. one cache for both views -------------------------------------------------

@pytest.mark.parametrize("first", ["region", "raw"])
def test_shared_cache(start_mock, mnt, first):
    mock = start_mock("rich")
    m = mnt(mock)
    raw_doc = m.p("raw", DOC)
    served = Imds(mock.url).get(DOC)
    mock.reset_counts()
    if first == "region":
        assert read(m.p("region")) == b"eu-west-1\n"
        assert read(raw_doc) == served
    else:
        assert read(raw_doc) == served
        assert read(m.p("region")) == b"eu-west-1\n"
    counts = gets_by_path(mock)
    assert counts.get(DOC) == 1, "GETs of %s: %s, want 1" % (DOC, counts.get(DOC))
    # Listings on the way are shared too: nothing was asked twice.
    twice = {p: n for p, n in counts.items() if p != DOC and n > 1}
    assert not twice, "fetched more than once: %r" % twice
    # instance_identity_document is the same body, plus a final newline if it had none.
    assert read(m.p("instance_identity_document")) == (
        served if served.endswith(b"\n") else served + b"\n")
    assert gets_by_path(mock).get(DOC) == 1


# --- 4. caching ---------------------------------------------------------------------

def test_second_read_costs_nothing(start_mock, mnt):
    mock = start_mock("rich")
    m = mnt(mock)
    paths = ["raw/meta-data/placement/group-name", "raw/dynamic/instance-identity/pkcs7",
             "raw/meta-data/public-keys/0/openssh-key", "raw/user-data"]
    first = {p: read(m.p(p)) for p in paths}
    m.listdir("raw/meta-data/placement")
    mock.reset_counts()
    for p in paths:
        assert read(m.p(p)) == first[p]
        assert os.stat(m.p(p)).st_size == len(first[p])
    m.listdir("raw/meta-data/placement")
    m.listdir("raw/meta-data")
    assert mock.gets() == 0, mock.counts()


def test_rm_raw_file_fetches_fresh(start_mock, mnt):
    mock = start_mock("rich")
    m = mnt(mock)
    f = m.p("raw/meta-data/placement/group-name")
    az_raw = m.p("raw/meta-data/placement/availability-zone")
    assert read(f) == b"web-cluster"
    assert read(az_raw) == b"eu-west-1b"
    assert read(m.p("availability_zone")) == b"eu-west-1b\n"

    put_file(mock, "meta-data/placement/group-name", "a-much-longer-group-name")
    put_file(mock, "meta-data/placement/availability-zone", "eu-west-1c-longer")
    assert read(f) == b"web-cluster", "a cached value must not be fetched again"

    mock.reset_counts()
    os.unlink(f)
    assert os.path.isfile(f), "rm clears the cache; the file stays"
    assert os.stat(f).st_size == len(b"a-much-longer-group-name"), "stale size after rm"
    assert read(f) == b"a-much-longer-group-name"
    assert mock.count("meta-data/placement/group-name") == 1

    # One cache: rm of the raw file refreshes its cleaned-up twin too
    # (another inode: the daemon must invalidate the kernel's copy).
    os.unlink(az_raw)
    assert read(az_raw) == b"eu-west-1c-longer"
    assert os.stat(m.p("availability_zone")).st_size == len(b"eu-west-1c-longer\n")
    assert read(m.p("availability_zone")) == b"eu-west-1c-longer\n"


def test_rm_r_raw_dir_clears_subtree(start_mock, mnt):
    mock = start_mock("rich")
    m = mnt(mock)
    d = m.p("raw/meta-data/placement")
    before = {n: read(os.path.join(d, n)) for n in m.listdir("raw/meta-data/placement")}
    assert "new-file" not in before

    put_file(mock, "meta-data/placement/new-file", "brand new")
    put_file(mock, "meta-data/placement/group-name", "other-group")
    assert "new-file" not in m.listdir("raw/meta-data/placement"), "listing must be cached"
    assert not os.path.exists(os.path.join(d, "new-file"))
    assert read(os.path.join(d, "group-name")) == b"web-cluster"

    assert read(m.p("raw/meta-data/ami-id")).startswith(b"ami-")
    mock.reset_counts()
    rm_r(d)
    assert os.path.isdir(d), "rm -r clears the cache; the directory stays"
    assert "new-file" in m.listdir("raw/meta-data/placement")
    assert mock.count("meta-data/placement/") >= 1, "the listing was not fetched again"
    assert read(os.path.join(d, "new-file")) == b"brand new"
    assert read(os.path.join(d, "group-name")) == b"other-group"
    assert read(os.path.join(d, "host-id")) == before["host-id"]
    # Outside the subtree nothing was cleared.
    read(m.p("raw/meta-data/ami-id"))
    assert mock.count("meta-data/ami-id") == 0


VOLATILE_RAW = [
    "meta-data/instance-action",
    "meta-data/spot/instance-action",
    "meta-data/events/maintenance/scheduled",
    "meta-data/autoscaling/target-lifecycle-state",
    "meta-data/iam/security-credentials/web-app-role",
]


def test_volatile_raw_files_are_fresh(start_mock, mnt):
    mock = start_mock("rich")
    m = mnt(mock)
    imds = Imds(mock.url)
    problems = []
    for path in VOLATILE_RAW:
        f = m.p("raw", path)
        old = imds.get(path)
        if read(f) != old:
            problems.append("%s: first read differs from IMDS" % path)
        new = old + b" -- changed, and longer than before"
        put_file(mock, path, new)
        got = read(f)                       # no rm: volatile comes fresh
        if got != new:
            problems.append("%s: after a change in IMDS reads %r, want %r" % (path, got, new))
        mock.reset_counts()
        for _ in range(3):
            with open(f, "rb") as fh:
                fh.read()
        n = mock.count(path)
        if n != 3:
            problems.append("%s: 3 opens cost %d GETs of the value, want 3" % (path, n))
    assert not problems, "\n".join(problems)


def test_volatile_directories_are_fresh(start_mock, mnt):
    """A spot interruption or a maintenance event appears while mounted: its
    raw/ path is volatile and must be there on the next open, without rm."""
    mock = start_mock("minimal")
    m = mnt(mock)
    names = m.listdir("raw/meta-data")
    assert "spot" not in names and "events" not in names
    assert errno_of(os.stat, m.p("raw/meta-data/spot/instance-action")) == errno.ENOENT

    action = b'{"action":"stop","time":"2026-11-22T09:00:00Z"}'
    put_file(mock, "meta-data/spot/instance-action", action)
    put_file(mock, "meta-data/events/maintenance/scheduled", "[]")
    problems = []
    try:
        if read(m.p("raw/meta-data/spot/instance-action")) != action:
            problems.append("raw/meta-data/spot/instance-action: wrong bytes")
    except OSError as e:
        problems.append("raw/meta-data/spot/instance-action after it appeared: %s" % e)
    try:
        if read(m.p("raw/meta-data/events/maintenance/scheduled")) != b"[]":
            problems.append("raw/meta-data/events/maintenance/scheduled: wrong bytes")
    except OSError as e:
        problems.append("raw/meta-data/events/maintenance/scheduled after it appeared: %s" % e)
    # The cleaned-up view sees the spot action at once.
    assert read(m.p("spot_instance_action/action")) == b"stop\n"
    assert not problems, "\n".join(problems)


def test_volatile_listing_changes_without_rm(start_mock, mnt):
    mock = start_mock("rich")
    m = mnt(mock)
    assert m.listdir("raw/meta-data/spot") == ["instance-action", "termination-time"]
    put_file(mock, "meta-data/spot/rebalance", "now")
    delete_file(mock, "meta-data/spot/termination-time")
    assert m.listdir("raw/meta-data/spot") == ["instance-action", "rebalance"]
    assert errno_of(os.stat, m.p("raw/meta-data/spot/termination-time")) == errno.ENOENT
    assert read(m.p("raw/meta-data/spot/rebalance")) == b"now"
    delete_file(mock, "meta-data/spot/instance-action")
    assert errno_of(open, m.p("raw/meta-data/spot/instance-action"), "rb") == errno.ENOENT


# --- 5. hostile listings ---------------------------------------------------------

def test_listing_junk_on_meta_data_itself(start_mock, mnt):
    """Empty lines, '.', '..', names with '/' or NUL in meta-data/'s own
    listing: skipped, logged, never followed; the good lines are listed."""
    mock = start_mock("aemm")
    good = Imds(mock.url).get("meta-data/")
    # Five bad lines: each is logged on its own (more become a summary).
    put_listing(mock, "meta-data/", b"\n".join(
        [b"", b"."] + good.split(b"\n")[:3] + [b"..", b"a/b"] + good.split(b"\n")[3:]
        + [b"nul\0name"]))
    m = mnt(mock)
    want = sorted(os.fsdecode(n) for n, _ in parse_listing(good))
    assert m.listdir("raw/meta-data") == want
    assert_logged(m, r"warning: listing meta-data/: skipped line .*: empty line")
    assert_logged(m, r'warning: listing meta-data/: skipped line "\.\.?": not a valid file name')
    assert_logged(m, r'warning: listing meta-data/: skipped line "a/b": not a valid file name')
    m.expect_log(r"warning: listing meta-data/: skipped line ")
    for name in ["a", "nul"]:
        assert errno_of(os.stat, m.p("raw/meta-data", name)) == errno.ENOENT, name
    # Never followed: nothing was asked outside what the good lines name.
    asked = gets_by_path(mock)
    for p in asked:
        assert not re.search(r"(^|/)\.\.?(/|$)|a/b|nul", p), "followed: %r" % p
    # The cleaned-up view, which reads the same listing, still works.
    assert read(m.p("ami_id")) == b"ami-0a887e401f7654935\n"
    assert_answering(m)
    # The NUL line's log line must say so (the line itself cannot be printed).
    assert_logged(m, r'warning: listing meta-data/: skipped line "nul\\x00name": not a valid file name')


def test_listing_junk_in_sub_directory(start_mock, mnt):
    mock = start_mock("aemm")
    put_file(mock, "meta-data/hostile/good", "fine")
    put_file(mock, "meta-data/hostile/sub/inner", "deep")
    put_listing(mock, "meta-data/hostile/",
                b"\n\ngood\n.\n..\n../\n./\nx/y\n/\nbad\0nul\nsub/\n\n")
    m = mnt(mock)
    assert m.listdir("raw/meta-data/hostile") == ["good", "sub"]
    assert read(m.p("raw/meta-data/hostile/good")) == b"fine"
    assert read(m.p("raw/meta-data/hostile/sub/inner")) == b"deep"
    assert_logged(m, r"listing meta-data/hostile/: skipped line")
    assert_logged(m, r"listing meta-data/hostile/: skipped 10 lines in all")
    for p in gets_by_path(mock):
        assert not re.search(r"(^|/)\.\.?(/|$)|x/y|bad", p), "followed: %r" % p
    assert_answering(m)


def test_duplicate_names(start_mock, mnt):
    mock = start_mock("aemm")
    put_file(mock, "meta-data/dups/a", "file a")
    put_file(mock, "meta-data/dups/b", "file b")
    put_file(mock, "meta-data/dups/0/openssh-key", "key")
    put_listing(mock, "meta-data/dups/", b"a\nb\na\na/\n0=alice\n0=bob\n0/\nb")
    m = mnt(mock)
    assert m.listdir("raw/meta-data/dups") == ["0", "a", "b"]
    # The first line wins: "a" is the file, "0" the directory.
    assert read(m.p("raw/meta-data/dups/a")) == b"file a"
    assert os.path.isdir(m.p("raw/meta-data/dups/0"))
    assert read(m.p("raw/meta-data/dups/0/openssh-key")) == b"key"
    hits = assert_logged(m, r"listing meta-data/dups/: skipped line .*duplicate")
    assert any(re.search(r'skipped line "a": ', h) for h in hits), hits
    assert_answering(m)


def test_name_length_limit(start_mock, mnt):
    mock = start_mock("aemm")
    ok, long = "a" * NAME_MAX, "b" * (NAME_MAX + 1)
    okd, longd = "c" * NAME_MAX, "d" * (NAME_MAX + 1)
    put_file(mock, "meta-data/names/" + ok, "255")
    put_file(mock, "meta-data/names/" + long, "256")
    put_file(mock, "meta-data/names/%s/x" % okd, "in 255")
    put_file(mock, "meta-data/names/%s/x" % longd, "in 256")
    m = mnt(mock)
    assert m.listdir("raw/meta-data/names") == sorted([ok, okd])
    assert read(m.p("raw/meta-data/names", ok)) == b"255"
    assert read(m.p("raw/meta-data/names", okd, "x")) == b"in 255"
    assert errno_of(os.stat, m.p("raw/meta-data/names", long)) in (errno.ENOENT, errno.ENAMETOOLONG)
    assert_logged(m, r'listing meta-data/names/: skipped line "b{20,}.*": not a valid file name')
    assert_logged(m, r'listing meta-data/names/: skipped line "d{20,}.*": not a valid file name')
    assert not any(long in p or longd in p for p in gets_by_path(mock)), "a 256-byte name was followed"
    assert_answering(m)


def test_listed_file_that_404s(start_mock, mnt):
    mock = start_mock("aemm")
    put_file(mock, "meta-data/ghosts/real", "here")
    put_listing(mock, "meta-data/ghosts/", b"real\nghost\nghostdir/")
    m = mnt(mock)
    # A directory listing asks for listings only; the names are IMDS's.
    assert m.listdir("raw/meta-data/ghosts") == ["ghost", "ghostdir", "real"]
    assert errno_of(os.stat, m.p("raw/meta-data/ghosts/ghost")) == errno.ENOENT
    assert errno_of(open, m.p("raw/meta-data/ghosts/ghost"), "rb") == errno.ENOENT
    assert errno_of(os.listdir, m.p("raw/meta-data/ghosts/ghostdir")) == errno.ENOENT
    assert read(m.p("raw/meta-data/ghosts/real")) == b"here"
    # A 404 is not cached: once IMDS serves it, it is there.
    put_file(mock, "meta-data/ghosts/ghost", "boo")
    assert read(m.p("raw/meta-data/ghosts/ghost")) == b"boo"
    assert_answering(m)


@pytest.mark.parametrize("how", ["rm -r", "rmdir"])
def test_file_becomes_directory_after_rm_r(start_mock, mnt, how):
    """SPEC: rmdir DIR (and so rm -r DIR) clears everything cached under it.
    A bare rmdir leaves the kernel's entries below DIR to the daemon to
    invalidate; rm -r removes them one by one first."""
    clear = rm_r if how == "rm -r" else os.rmdir
    mock = start_mock("aemm")
    put_file(mock, "meta-data/shape/thing", "v1")
    put_file(mock, "meta-data/shape/other", "o")
    m = mnt(mock)
    thing = m.p("raw/meta-data/shape/thing")
    assert read(thing) == b"v1"

    delete_file(mock, "meta-data/shape/thing")
    put_file(mock, "meta-data/shape/thing/inner", "v2")
    assert os.path.isfile(thing), "the cached listing still says file"
    clear(m.p("raw/meta-data/shape"))
    assert os.path.isdir(thing)
    assert m.listdir("raw/meta-data/shape/thing") == ["inner"]
    assert read(os.path.join(thing, "inner")) == b"v2"

    # And back: a directory that becomes a file.
    delete_file(mock, "meta-data/shape/thing/")
    put_file(mock, "meta-data/shape/thing", "v3")
    clear(m.p("raw/meta-data/shape"))
    assert os.path.isfile(thing)
    assert read(thing) == b"v3"
    assert_answering(m)


def test_very_long_line(start_mock, mnt):
    """One line of 900,000 bytes: skipped, and logged short."""
    mock = start_mock("aemm")
    put_file(mock, "meta-data/long/ok", "1")
    put_file(mock, "meta-data/long/also-ok", "2")
    put_listing(mock, "meta-data/long/", b"ok\n" + b"L" * 900000 + b"\nalso-ok")
    m = mnt(mock)
    assert m.listdir("raw/meta-data/long") == ["also-ok", "ok"]
    hits = assert_logged(m, r'listing meta-data/long/: skipped line "L+.*": not a valid file name')
    assert all(len(h) < 400 for h in hits), "a log line of %d bytes" % max(map(len, hits))
    assert_answering(m)


def test_huge_listing(start_mock, mnt):
    """100,000 lines (under 1 MiB): 80,000 names, 10,000 duplicates and 10,000
    bad lines. Every name is listed once; the skipped lines are logged a few
    at a time, never 20,000 log lines."""
    mock = start_mock("aemm")
    names = [b"n%06d" % i for i in range(80000)]
    bad = [b"", b".", b"..", b"x/y", b"z\0"] * 2000
    lines = []
    for i in range(10000):
        lines += names[8 * i:8 * i + 8]
        lines.append(bad[i])
        lines.append(names[i])            # a duplicate of an earlier line
    assert len(lines) == 100000
    body = b"\n".join(lines)
    assert len(body) < BODY_MAX
    put_listing(mock, "meta-data/huge/", body)
    put_file(mock, "meta-data/huge/n012345", "twelve thousand")
    m = mnt(mock)
    got = os.listdir(m.p("raw/meta-data/huge"))
    assert len(got) == 80000
    assert set(got) == {n.decode() for n in names}
    assert read(m.p("raw/meta-data/huge/n012345")) == b"twelve thousand"
    assert errno_of(os.stat, m.p("raw/meta-data/huge/n054321")) == errno.ENOENT  # listed, 404

    out = m.output()
    summaries = assert_logged(m, r"listing meta-data/huge/: skipped 20000 lines in all")
    singles = assert_logged(m, r"listing meta-data/huge/: skipped line ")
    assert len(singles) <= 5 * len(summaries), "more than 5 skipped lines logged per parse"
    assert len(out) < 200000, "the log grew by %d bytes" % len(out)
    assert_answering(m)


def test_listing_body_cap(start_mock, mnt):
    """A listing of exactly 1 MiB is read; one byte more is EIO (logged, not
    cached: the next access tries again)."""
    mock = start_mock("aemm")
    exact = b"\n".join(b"m%06d" % i for i in range(BODY_MAX // 8)) + b"\n"
    assert len(exact) == BODY_MAX
    put_listing(mock, "meta-data/big/", exact)
    put_listing(mock, "meta-data/bigger/", exact + b"x")
    m = mnt(mock)
    assert len(os.listdir(m.p("raw/meta-data/big"))) == BODY_MAX // 8
    assert errno_of(os.listdir, m.p("raw/meta-data/bigger")) == errno.EIO
    assert_logged(m, r"meta-data/bigger/")
    put_listing(mock, "meta-data/bigger/", b"small")
    assert m.listdir("raw/meta-data/bigger") == ["small"]
    assert_answering(m)


def test_deep_nesting(start_mock, mnt):
    """A path 64 directories deep: followed DEPTH_MAX directories below raw/
    (raw/meta-data is the first), the rest refused with a log line."""
    mock = start_mock("aemm")
    parts = ["deep"] + ["d%02d" % i for i in range(2, 65)]       # 64 directories
    put_file(mock, "meta-data/" + "/".join(parts) + "/leaf", "bottom")
    m = mnt(mock)
    assert "deep" in m.listdir("raw/meta-data")
    path, depth = m.p("raw/meta-data/deep"), 2
    while True:
        names = os.listdir(path)
        if not names:
            break
        assert len(names) == 1 and names[0] == parts[depth - 1], (depth, names)
        path = os.path.join(path, names[0])
        depth += 1
        assert depth <= 64
    assert depth == DEPTH_MAX, "deepest directory followed: %d below raw/, want %d" % (
        depth, DEPTH_MAX)
    assert errno_of(os.stat, os.path.join(path, parts[depth - 1])) == errno.ENOENT
    assert errno_of(os.stat, m.p("raw/meta-data", *parts, "leaf")) == errno.ENOENT
    assert_logged(m, r"deeper than %d directories, not followed" % DEPTH_MAX)
    # Nothing beyond the limit was asked of IMDS.
    beyond = "meta-data/" + "/".join(parts[:DEPTH_MAX]) + "/"
    assert not any(p.startswith(beyond) for p in gets_by_path(mock)), \
        "a directory beyond the limit was fetched"
    assert_answering(m)
