"""SPEC.md, "Caching": what is fetched when, counted at the mock.

Counts are the mock's, per "METHOD /latest/path". Every rule of the section
has a test here: values are cached until `rm` (of the file, its directory or
everything) or SIGHUP, through the kernel's caches too; volatile files are
fetched on every open; failures are never cached; concurrent readers share
one request; one token per TTL, refreshed early, renewed on a 401.
"""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

from conftest import load_instance, read_errno, read_fd, run_threads

AEMM_MAC = "0e:49:61:0f:c3:11"
RICH_ROLE = "web-app-role"
DOC = "dynamic/instance-identity/document"
TAGS = "meta-data/tags/instance/"
MACS = "meta-data/network/interfaces/macs/"
VOLATILE_ROOTS = ("meta-data/instance-action", "meta-data/spot", "meta-data/events",
                  "meta-data/autoscaling", "meta-data/iam/security-credentials")

# Sixteen aemm files in sixteen different directories, with distinct IMDS
# paths: (path in the mount, IMDS path, is a raw/ file). The kernel runs the
# lookups of one directory one at a time, so readers that must reach the
# daemon together have to come through different directories.
AEMM_SPREAD = [
    ("instance_id", "meta-data/instance-id", False),
    ("tags/Test", TAGS + "Test", False),
    ("network/interfaces/%s/vpc_id" % AEMM_MAC, MACS + AEMM_MAC + "/vpc-id", False),
    ("network/interfaces/%s/ipv4_associations/192.0.2.54" % AEMM_MAC,
     MACS + AEMM_MAC + "/ipv4-associations/192.0.2.54", False),
    ("public_keys/my-public-key/openssh_key", "meta-data/public-keys/0/openssh-key", False),
    ("raw/dynamic/fws/instance-monitoring", "dynamic/fws/instance-monitoring", True),
    ("raw/" + DOC, DOC, True),
    ("raw/meta-data/ami-id", "meta-data/ami-id", True),
    ("raw/meta-data/block-device-mapping/ami", "meta-data/block-device-mapping/ami", True),
    ("raw/meta-data/elastic-inference/associations/eia-bfa21c7904f64a82a21b9f4540169ce1",
     "meta-data/elastic-inference/associations/eia-bfa21c7904f64a82a21b9f4540169ce1", True),
    ("raw/meta-data/iam/info", "meta-data/iam/info", True),
    ("raw/" + MACS + AEMM_MAC + "/device-number", MACS + AEMM_MAC + "/device-number", True),
    ("raw/meta-data/placement/availability-zone", "meta-data/placement/availability-zone", True),
    ("raw/meta-data/services/domain", "meta-data/services/domain", True),
    ("raw/" + TAGS + "Name", TAGS + "Name", True),
    ("raw/user-data", "user-data", True),
]

_, AEMM = load_instance("aemm")
_, RICH = load_instance("rich")


# --- helpers ---------------------------------------------------------------

def slurp(path):
    """The whole file, through a fresh open."""
    with open(path, "rb") as f:
        return f.read()


def text_file(body):
    """What a text value's file holds (SPEC.md: a final newline added)."""
    return body if body == b"" or body.endswith(b"\n") else body + b"\n"


def doc_with(instance, **changes):
    """The instance identity document of `instance` with fields changed."""
    doc = json.loads(load_instance(instance)[1][DOC])
    doc.update(changes)
    return json.dumps(doc, indent=2).encode()


def mock_value(mock, path):
    """The bytes the mock holds for a file (control API, not counted)."""
    return mock._call("GET", "files/" + path)


def is_volatile(key):
    path = key.split(" ", 1)[1][len("/latest/"):]
    return any(path == r or path.startswith(r + "/") for r in VOLATILE_ROOTS)


def cached_gets(mock):
    """GET requests for non-volatile paths since the last reset."""
    return {k: v for k, v in mock.counts().items()
            if k.startswith("GET ") and not is_volatile(k)}


def walk_read(root):
    """{relative path: bytes} for every file of the tree; any error raises."""
    def fail(e):
        raise e
    out = {}
    for d, _, files in os.walk(root, onerror=fail):
        for name in files:
            p = os.path.join(d, name)
            out[os.path.relpath(p, root)] = slurp(p)
    return out


def walk_names(root):
    """Every path of the tree (directories end in /), without reading files."""
    def fail(e):
        raise e
    out = set()
    for d, dirs, files in os.walk(root, onerror=fail):
        rel = os.path.relpath(d, root)
        for name in dirs:
            out.add(os.path.normpath(os.path.join(rel, name)) + "/")
        for name in files:
            out.add(os.path.normpath(os.path.join(rel, name)))
    return out


def run(args, timeout=30):
    r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def together(n, fn, timeout=20):
    """Run fn(i) in n threads released at once; the results in order.
    Fails (never hangs) when a thread errs or is still blocked at timeout."""
    results = run_threads(n, fn, timeout, at_once=True)
    errors = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert not errors, "threads failed: %r" % errors[:5]
    return results


def sighup(mnt):
    """SIGHUP the daemon and wait until it has acted on it: cleared, and
    told the kernel (its "SIGHUP: done" line)."""
    before = len(re.findall(r"SIGHUP: done", mnt.output()))
    mnt.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while len(re.findall(r"SIGHUP: done", mnt.output())) <= before:
        assert time.monotonic() < deadline, "no SIGHUP log line:\n" + mnt.output()
        time.sleep(0.01)


def assert_refreshed(mnt, mock, rel, imds_path, body, previous):
    """`body` was just set at imds_path while `previous` is cached for rel:
    still cached until rm, then the new bytes, through the kernel too."""
    p = mnt.p(rel)
    want = text_file(body)
    assert slurp(p) == previous, "%s changed before rm (not cached)" % rel
    assert os.stat(p).st_size == len(previous)
    mock.reset_counts()
    os.unlink(p)
    parent, name = os.path.split(p)
    assert name in os.listdir(parent), "%s left the tree after rm" % rel
    assert os.path.exists(p)
    assert os.stat(p).st_size == len(want), "stale size after rm of %s" % rel
    got = slurp(p)
    assert got == want, "after rm %s: want %r, got %r" % (rel, want, got)
    assert os.stat(p).st_size == len(want)
    assert mock.count(imds_path) == 1, "after rm, %s cost %d GETs of %s" % (
        rel, mock.count(imds_path), imds_path)
    return want


@pytest.fixture
def patient(start_mock, mount_fs):
    """(mock, mount) on aemm with a 5 s request timeout, for tests where many
    daemon threads connect to the mock at once: the mock listens with
    http.server's default backlog of 5, so the kernel drops some of a burst
    of SYNs and those connects take 1 s (a SYN retransmit), which the default
    1 s timeout turns into a failed attempt and a warning."""
    mock = start_mock("aemm")
    return mock, mount_fs(mock, ["timeout=5000"])


# --- no request without a reader ------------------------------------------

def test_mount_alone_contacts_nothing(start_mock, mount_fs):
    mock = start_mock("aemm")
    mnt = mount_fs(mock)
    os.stat(mnt.path)
    time.sleep(0.3)
    assert mock.counts() == {}
    assert mock.accepts() == 0
    mnt.umount()
    assert mock.counts() == {}, "unmounting contacted IMDS"
    assert mock.accepts() == 0


# --- cached values --------------------------------------------------------

def test_second_read_costs_nothing(mocked):
    mock, mnt = mocked
    want = text_file(AEMM["meta-data/instance-id"])
    assert mnt.read("instance_id") == want
    assert mock.count("meta-data/instance-id") == 1
    assert mock.puts() == 1
    mock.reset_counts()
    for _ in range(3):
        assert mnt.read("instance_id") == want
    assert mock.counts() == {}


def test_second_stat_costs_nothing(mocked):
    mock, mnt = mocked
    want = text_file(AEMM["meta-data/ami-id"])
    assert os.stat(mnt.p("ami_id")).st_size == len(want)
    assert mock.count("meta-data/ami-id") == 1
    mock.reset_counts()
    assert os.stat(mnt.p("ami_id")).st_size == len(want)
    assert os.lstat(mnt.p("ami_id")).st_size == len(want)
    # The lookup that gave the size fetched the value: reading is free too.
    assert mnt.read("ami_id") == want
    assert mock.counts() == {}


def test_second_listing_costs_nothing(mocked):
    mock, mnt = mocked
    assert mnt.listdir("tags") == ["Name", "Test"]
    mock.reset_counts()
    assert mnt.listdir("tags") == ["Name", "Test"]
    assert mnt.listdir("network", "interfaces") == [AEMM_MAC]
    mock.reset_counts()
    assert mnt.listdir("tags") == ["Name", "Test"]
    assert mnt.listdir("network", "interfaces") == [AEMM_MAC]
    assert mock.counts() == {}
    # The top level asks for the volatile entries whose presence is their
    # value; nothing else is asked twice.
    mnt.listdir()
    mock.reset_counts()
    mnt.listdir()
    assert cached_gets(mock) == {}
    assert mock.puts() == 0


def daemon_requests(mnt, since):
    """The FUSE requests the daemon answered (its -d log) after output
    offset `since`."""
    return re.findall(r"debug: request (\w+)", mnt.output()[since:])


WARM_FILES = ["region", "tags/Name", "raw/meta-data/instance-id",
              "network/interfaces/%s/vpc_id" % AEMM_MAC, "user_data", "iam_info"]


def test_warm_reads_never_reach_the_daemon(mocked):
    """Issue 5: once a value is cached, opening, stat-ing and reading its
    file is the kernel's work alone, as with a file in RAM: no LOOKUP, no
    OPEN, no READ, no GETATTR, no FLUSH, no RELEASE. Values of one page and
    of several, in both views, sensitive ones too."""
    mock, mnt = mocked
    big = b"n" * 10000 + b"\xff\x00end"
    mock.set(TAGS + "Name", big)
    want = {rel: slurp(mnt.p(rel)) for rel in WARM_FILES}
    assert want["tags/Name"] == big + b"\n"
    for rel in WARM_FILES:
        os.stat(mnt.p(rel))
    mock.reset_counts()
    since = len(mnt.output())
    for _ in range(20):
        for rel in WARM_FILES:
            p = mnt.p(rel)
            fd = os.open(p, os.O_RDONLY)
            try:
                assert os.fstat(fd).st_size == len(want[rel])
                got = read_fd(fd, 4096)
            finally:
                os.close(fd)
            assert got == want[rel], rel
            assert os.stat(p).st_size == len(want[rel])
            assert os.access(p, os.R_OK)
    asked = daemon_requests(mnt, since)
    assert asked == [], "warm reads asked the daemon: %s" % sorted(set(asked))
    assert mock.counts() == {}


# --- rm FILE --------------------------------------------------------------

REFRESH_CASES = [
    pytest.param("instance_id", "meta-data/instance-id",
                 [b"i-0123456789abcdef0123456789abcdef0", b"i-fedcba9876543210fedcba9876543210f",
                  b"i-1"], id="plain"),
    pytest.param("tags/Name", TAGS + "Name",
                 [b"a much longer Name tag for the test instance",
                  b"A MUCH LONGER NAME TAG FOR THE TEST INSTANCE", b"n"], id="tag"),
    pytest.param("network/interfaces/%s/vpc_id" % AEMM_MAC, MACS + AEMM_MAC + "/vpc-id",
                 [b"vpc-0123456789abcdef00000", b"vpc-fedcba9876543210fffff", b"vpc-1"],
                 id="interface"),
]


@pytest.mark.parametrize("rel,imds_path,bodies", REFRESH_CASES)
def test_rm_file_refreshes(mocked, rel, imds_path, bodies):
    """Longer, same length, shorter: a stale kernel size would cut or pad,
    a stale page would show the old bytes."""
    mock, mnt = mocked
    previous = text_file(AEMM[imds_path])
    assert mnt.read(rel) == previous
    for body in bodies:
        mock.set(imds_path, body)
        previous = assert_refreshed(mnt, mock, rel, imds_path, body, previous)
    # And cached again afterwards.
    mock.reset_counts()
    assert mnt.read(rel) == previous
    assert mock.count(imds_path) == 0


def test_rm_unchanged_file_goes_to_imds(mocked):
    mock, mnt = mocked
    want = mnt.read("instance_type")
    mock.reset_counts()
    os.unlink(mnt.p("instance_type"))
    assert mnt.read("instance_type") == want
    assert mock.count("meta-data/instance-type") == 1


# Regions and account ids of assorted lengths, some equal to the one before.
DOC_ROUNDS = [("ap-southeast-2", "000011112222333344445555"), ("ap-northeast-1", "999988887777666655554444"),
              ("me-south-1", "1"), ("eu-west-3", "22"), ("eu-west-1", "33"),
              ("us-gov-west-1", "123456789012"), ("il-central-1", "4"), ("sa-east-1", "5"),
              ("ca-central-1", "0123456789"), ("us-east-1", "0123456789")]


def test_rm_derived_value_refreshes_its_document(mocked):
    """rm region refreshes the document it is derived from, and so every
    other file showing that document, at once (several rounds: the kernel's
    copies of the other files must be gone when unlink returns)."""
    mock, mnt = mocked
    region, doc_file, account = (mnt.p(n) for n in
                                 ("region", "instance_identity_document", "account_id"))
    assert slurp(region) == b"us-east-1\n"
    assert slurp(doc_file) == text_file(AEMM[DOC])
    assert slurp(account) == b"0123456789\n"
    prev = (b"us-east-1\n", text_file(AEMM[DOC]), b"0123456789\n")
    for i, (new_region, new_account) in enumerate(DOC_ROUNDS):
        body = doc_with("aemm", region=new_region, accountId=new_account)
        want = (new_region.encode() + b"\n", text_file(body), new_account.encode() + b"\n")
        mock.set(DOC, body)
        assert (slurp(region), slurp(doc_file), slurp(account)) == prev, \
            "round %d: changed before rm" % i
        mock.reset_counts()
        os.unlink(region)
        # The other files first: their kernel copies must be gone already.
        sizes = tuple(os.stat(p).st_size for p in (doc_file, account, region))
        assert sizes[:2] == (len(want[1]), len(want[2])), \
            "round %d: stale size after rm region: instance_identity_document %d (want %d), " \
            "account_id %d (want %d)" % (i, sizes[0], len(want[1]), sizes[1], len(want[2]))
        assert sizes[2] == len(want[0]), "round %d: region: stale size after rm" % i
        got = (slurp(region), slurp(doc_file), slurp(account))
        assert got == want, "round %d: after rm region" % i
        assert "region" in mnt.listdir()
        assert slurp(mnt.p("raw", DOC)) == body
        assert mock.count(DOC) == 1
        prev = want


def test_rm_iam_field_refreshes_iam_info(start_mock, mount_fs):
    mock = start_mock("rich")
    mnt = mount_fs(mock)
    iam = json.loads(RICH["meta-data/iam/info"])
    assert mnt.read("instance_profile_name") == b"web-role\n"
    info_before = mnt.read("iam_info")
    iam["InstanceProfileArn"] = "arn:aws:iam::123456789012:instance-profile/longer/path/api-role"
    body = json.dumps(iam, indent=2).encode()
    mock.set("meta-data/iam/info", body)
    assert mnt.read("iam_info") == info_before
    os.unlink(mnt.p("instance_profile_arn"))
    assert mnt.read("instance_profile_arn") == iam["InstanceProfileArn"].encode() + b"\n"
    assert mnt.read("iam_info") == text_file(body)
    assert mnt.read("instance_profile_name") == b"api-role\n"


# --- raw/ twins share the cache -------------------------------------------

def test_raw_twin_shares_the_document(mocked):
    mock, mnt = mocked
    assert mnt.read("region") == b"us-east-1\n"
    assert mock.count(DOC) == 1
    assert mnt.read("raw", "dynamic", "instance-identity", "document") == AEMM[DOC]
    assert mnt.read("instance_identity_document") == text_file(AEMM[DOC])
    assert mnt.read("account_id") == b"0123456789\n"
    assert mock.count(DOC) == 1, "the raw/ twin fetched the document again"


# Lengths of successive values: longer, equal, shorter, ...
TWIN_LENGTHS = [40, 40, 5, 18, 18, 33, 3, 3, 25, 12, 30, 30, 8, 21, 21, 2, 35, 9, 9, 19] * 2


def test_rm_file_read_only_via_raw_twin(mocked):
    """rm of a cleaned-up name clears what its raw/ twin showed, and the
    kernel's copy of the twin is gone when unlink returns."""
    mock, mnt = mocked
    path = "meta-data/instance-id"
    raw = mnt.p("raw", "meta-data", "instance-id")
    prev = AEMM[path]
    assert slurp(raw) == prev
    assert mock.count(path) == 1
    for i, n in enumerate(TWIN_LENGTHS):
        new = (b"i-%02d" % i + b"abcdefghijklmnopqrstuvwxyz0123456789" * 2)[:n]
        mock.set(path, new)
        assert slurp(raw) == prev
        mock.reset_counts()
        os.unlink(mnt.p("instance_id"))  # never read in the cleaned-up view
        size = os.stat(raw).st_size
        got = slurp(raw)
        assert (size, got) == (len(new), new), \
            "round %d: raw twin after rm instance_id: want size %d %r, got size %d %r" % (
                i, len(new), new, size, got)
        assert mock.count(path) == 1
        prev = new
    assert mnt.read("instance_id") == prev + b"\n"


def test_rm_raw_twin_refreshes_cleaned_name(mocked):
    mock, mnt = mocked
    path = "meta-data/instance-type"
    assert mnt.read("instance_type") == text_file(AEMM[path])
    for i, n in enumerate(TWIN_LENGTHS):
        new = (b"t%02d." % i + b"abcdefghijklmnopqrstuvwxyz0123456789" * 2)[:n]
        mock.set(path, new)
        os.unlink(mnt.p("raw", "meta-data", "instance-type"))
        size = os.stat(mnt.p("instance_type")).st_size
        got = mnt.read("instance_type")
        assert (size, got) == (len(new) + 1, new + b"\n"), \
            "round %d: instance_type after rm of its raw/ twin: want size %d %r, got size %d %r" % (
                i, len(new) + 1, new + b"\n", size, got)
        assert mnt.read("raw", "meta-data", "instance-type") == new


# --- rm -r DIR and rm -rf everything --------------------------------------

def change_tags(mock):
    mock.set(TAGS + "NewTag", "added after mount")
    mock.set(TAGS + "Name", "renamed-instance-with-a-longer-name")
    mock.delete(TAGS + "Test")


def assert_new_tags(mnt):
    assert os.path.isdir(mnt.p("tags"))
    assert "tags" in mnt.listdir()
    assert mnt.listdir("tags") == ["Name", "NewTag"]
    assert mnt.read("tags", "Name") == b"renamed-instance-with-a-longer-name\n"
    assert mnt.read("tags", "NewTag") == b"added after mount\n"
    assert not os.path.exists(mnt.p("tags", "Test"))


@pytest.mark.parametrize("how", ["rm", "rmtree"])
def test_rm_r_tags_clears_listing_and_values(mocked, how):
    mock, mnt = mocked
    assert mnt.listdir("tags") == ["Name", "Test"]
    assert mnt.read("tags", "Name") == b"test-instance\n"
    assert mnt.read("tags", "Test") == b"test-tag\n"
    change_tags(mock)
    assert mnt.listdir("tags") == ["Name", "Test"], "tags listing not cached"
    assert mnt.read("tags", "Name") == b"test-instance\n"
    if how == "rm":
        rc, out, err = run(["rm", "-r", mnt.p("tags")])
        assert rc == 0, "rm -r tags: rc %d: %s" % (rc, err)
    else:
        shutil.rmtree(mnt.p("tags"))
    assert_new_tags(mnt)


def test_rm_r_tags_after_ls_only(mocked):
    """`ls tags`, IMDS drops a tag, `rm -r tags`. The dropped tag is no file
    any more (SPEC: a value that does not exist is ENOENT on lookup), so the
    first `rm -r` may fail on that one name -- and only on it. Finding it gone
    drops the stale listing, so `ls` stops listing it and a second `rm -r`
    refreshes the directory."""
    mock, mnt = mocked
    assert mnt.listdir("tags") == ["Name", "Test"]
    change_tags(mock)
    rc, out, err = run(["rm", "-r", mnt.p("tags")])
    if rc != 0:
        complaints = [line for line in err.splitlines() if line.strip()]
        assert complaints and all("tags/Test" in line and "No such file" in line
                                  for line in complaints), "rm -r tags: rc %d: %s" % (rc, err)
        assert "Test" not in mnt.listdir("tags"), "a name that is gone is still listed"
        rc, out, err = run(["rm", "-r", mnt.p("tags")])
        assert rc == 0, "second rm -r tags: rc %d: %s" % (rc, err)
    assert_new_tags(mnt)


def test_rm_rf_tags_after_ls_only(mocked):
    mock, mnt = mocked
    assert mnt.listdir("tags") == ["Name", "Test"]
    change_tags(mock)
    rc, out, err = run(["rm", "-rf", mnt.p("tags")])
    assert rc == 0, "rm -rf tags: rc %d: %s" % (rc, err)
    assert_new_tags(mnt)


@pytest.mark.parametrize("how", ["rm", "rmtree"])
def test_rm_r_interface_clears_listing_and_values(mocked, how):
    mock, mnt = mocked
    base = MACS + AEMM_MAC + "/"
    d = mnt.p("network", "interfaces", AEMM_MAC)
    before = walk_read(d)
    assert "public_hostname" in before
    assert before["vpc_id"] == text_file(AEMM[base + "vpc-id"])
    mock.set(base + "vpc-id", "vpc-00000000000000000000000001")
    mock.set(base + "security-groups", "web\ndefault\nextra-group")
    mock.delete(base + "public-hostname")
    assert walk_read(d) == before, "interface values not cached"
    if how == "rm":
        rc, out, err = run(["rm", "-r", d])
        assert rc == 0, "rm -r %s: rc %d: %s" % (d, rc, err)
    else:
        shutil.rmtree(d)
    assert mnt.listdir("network", "interfaces") == [AEMM_MAC]
    after = walk_read(d)
    assert "public_hostname" not in after
    assert not os.path.exists(os.path.join(d, "public_hostname"))
    assert after["vpc_id"] == b"vpc-00000000000000000000000001\n"
    assert os.stat(os.path.join(d, "vpc_id")).st_size == len(after["vpc_id"])
    assert after["security_groups"] == b"web\ndefault\nextra-group\n"
    del before["public_hostname"], before["vpc_id"], before["security_groups"]
    del after["vpc_id"], after["security_groups"]
    assert after == before


def test_rmdir_clears_subtree(mocked):
    """rmdir alone (no unlink of the files first) clears everything below."""
    mock, mnt = mocked
    base = MACS + AEMM_MAC + "/"
    d = mnt.p("network", "interfaces", AEMM_MAC)
    assert mnt.read("tags", "Name") == b"test-instance\n"
    assert mnt.listdir("tags") == ["Name", "Test"]
    before = walk_read(d)
    change_tags(mock)
    mock.set(base + "vpc-id", "vpc-1")
    mock.delete(base + "public-hostname")
    os.rmdir(mnt.p("tags"))
    assert_new_tags(mnt)
    os.rmdir(d)
    after = walk_read(d)
    assert after.pop("vpc_id") == b"vpc-1\n"
    assert "public_hostname" not in after
    del before["vpc_id"], before["public_hostname"]
    assert after == before
    # A fixed directory: its mapping's listing goes too.
    second = "0e:49:61:0f:c3:22"
    mock.set(MACS + second + "/mac", second)
    mock.set(MACS + second + "/device-number", "1")
    assert mnt.listdir("network", "interfaces") == [AEMM_MAC]
    os.rmdir(mnt.p("network"))
    assert mnt.listdir("network", "interfaces") == sorted([AEMM_MAC, second])
    assert mnt.read("network", "interfaces", second, "mac") == second.encode() + b"\n"


def test_rm_rf_everything(mocked):
    mock, mnt = mocked
    names = walk_names(mnt.path)
    before = walk_read(mnt.path)
    first = {k for k in cached_gets(mock)}
    assert "GET /latest/meta-data/instance-id" in first
    changed = {
        "instance_id": ("meta-data/instance-id", b"i-0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
        "tags/Name": (TAGS + "Name", b"everything-was-cleared"),
        "network/interfaces/%s/subnet_id" % AEMM_MAC: (MACS + AEMM_MAC + "/subnet-id", b"s-1"),
        "raw/meta-data/ami-launch-index": ("meta-data/ami-launch-index", b"12345"),
    }
    for rel, (path, body) in changed.items():
        mock.set(path, body)
    assert walk_read(mnt.path) == before, "values changed before rm -rf"
    mock.reset_counts()
    rc, out, err = run(["bash", "-c", 'rm -rf -- "$1"/*', "rm-all", mnt.path])
    assert rc == 0, "rm -rf MOUNT/*: rc %d: %s" % (rc, err)
    assert walk_names(mnt.path) == names, "the tree changed shape after rm -rf"
    after = walk_read(mnt.path)
    refetched = set(cached_gets(mock))
    missing = sorted(first - refetched)
    assert not missing, "not fetched again after rm -rf MOUNT/*: %s" % missing
    for rel, (path, body) in changed.items():
        want = body if rel.startswith("raw/") else text_file(body)
        assert after[rel] == want, rel
        assert os.stat(mnt.p(rel)).st_size == len(want)
    assert after["instance_identity_document"] == before["instance_identity_document"]


# --- volatile files -------------------------------------------------------

def spot(action, when):
    return json.dumps({"action": action, "time": when}).encode()


def creds(key, token):
    c = json.loads(RICH["meta-data/iam/security-credentials/" + RICH_ROLE])
    c["AccessKeyId"], c["Token"] = key, token
    return json.dumps(c, indent=2).encode()


VOLATILE_CASES = [
    pytest.param("instance_action", "meta-data/instance-action",
                 [(b"reboot-" * 700, b"reboot-" * 700 + b"\n"), (b"stop", b"stop\n")],
                 id="instance_action"),
    pytest.param("spot_instance_action/action", "meta-data/spot/instance-action",
                 [(spot("hibernate", "2026-11-22T09:00:00Z"), b"hibernate\n"),
                  (spot("stop", "2026-11-22T09:30:00Z"), b"stop\n")],
                 id="spot_action"),
    pytest.param("iam_security_credentials",
                 "meta-data/iam/security-credentials/" + RICH_ROLE,
                 [(creds("ASIANEWKEY0000000001", "T" * 900),
                   creds("ASIANEWKEY0000000001", "T" * 900) + b"\n"),
                  (creds("ASIANEWKEY0000000002", "t"), creds("ASIANEWKEY0000000002", "t") + b"\n")],
                 id="iam_security_credentials"),
    pytest.param("autoscaling_target_lifecycle_state",
                 "meta-data/autoscaling/target-lifecycle-state",
                 [(b"Terminating:Proceed", b"Terminating:Proceed\n"), (b"Standby", b"Standby\n")],
                 id="autoscaling"),
]


@pytest.mark.parametrize("rel,imds_path,changes", VOLATILE_CASES)
def test_volatile_fresh_on_every_open(start_mock, mount_fs, rel, imds_path, changes):
    mock = start_mock("rich")
    mnt = mount_fs(mock)
    p = mnt.p(rel)
    first = slurp(p)
    if imds_path.startswith("meta-data/spot/"):
        assert first == b"terminate\n"
    else:
        assert first == text_file(RICH[imds_path])
    mock.reset_counts()
    for _ in range(3):
        assert slurp(p) == first
    assert mock.count(imds_path) >= 3, "3 opens of %s cost %d GETs of %s" % (
        rel, mock.count(imds_path), imds_path)
    for body, want in changes:
        mock.set(imds_path, body)
        got = slurp(p)
        assert got == want, "%s: want %r..., got %r..." % (rel, want[:60], got[:60])
        assert slurp(p) == want
    if rel == "spot_instance_action/action":
        assert mnt.read("spot_instance_action", "time") == b"2026-11-22T09:30:00Z\n"


def test_volatile_open_file_keeps_its_value(start_mock, mount_fs):
    """A volatile file changes under a reader that has it open: the reader
    gets the whole value it opened (its size from fstat too), while a new
    open gets the new one, each one whole."""
    mock = start_mock("rich")
    mnt = mount_fs(mock)
    p = mnt.p("instance_action")
    a, b = b"a" * 6000, b"b" * 9000
    mock.set("meta-data/instance-action", a)
    fd = os.open(p, os.O_RDONLY)
    try:
        # No readahead: the rest is read from the daemon after the change.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        first = os.read(fd, 4096)
        mock.set("meta-data/instance-action", b)
        assert slurp(p) == b + b"\n"
        assert os.stat(p).st_size == len(b) + 1
        assert os.fstat(fd).st_size == len(a) + 1
        since = len(mnt.output())
        rest = read_fd(fd, 1000)
        assert "READ" in daemon_requests(mnt, since), "the rest came from the page cache"
    finally:
        os.close(fd)
    assert first + rest == a + b"\n", "the open file read %d 'a' and %d 'b'" % (
        (first + rest).count(b"a"), (first + rest).count(b"b"))
    mock.set("meta-data/instance-action", "stop")
    assert slurp(p) == b"stop\n"


def test_volatile_open_asks_only_for_its_name(start_mock, mount_fs):
    """Opening a volatile file asks the daemon to look its name up once
    (which fetches the value), and otherwise only for what the kernel
    dropped with the name (kernel.c, K3): the directory's attributes and
    the file's bytes. No OPEN, no RELEASE, no second LOOKUP, no GETATTR of
    the file itself."""
    mock = start_mock("rich")
    mnt = mount_fs(mock)
    p = mnt.p("instance_action")
    want = slurp(p)
    mock.reset_counts()
    since = len(mnt.output())
    for _ in range(5):
        assert slurp(p) == want
    out = mnt.output()[since:]
    asked = daemon_requests(mnt, since)
    assert set(asked) <= {"LOOKUP", "GETATTR", "READ"}, asked
    assert asked.count("LOOKUP") == 5, asked
    assert not re.search(r"request GETATTR instance_action", out), out
    assert mock.count("meta-data/instance-action") == 5


def test_volatile_twins_in_raw(start_mock, mount_fs):
    mock = start_mock("rich")
    mnt = mount_fs(mock)
    raw = ("raw", "meta-data", "events", "maintenance", "scheduled")
    assert mnt.read(*raw) == RICH["meta-data/events/maintenance/scheduled"]
    mock.set("meta-data/events/maintenance/scheduled", "[]")
    assert mnt.read(*raw) == b"[]"
    mock.set("meta-data/spot/instance-action", spot("stop", "2026-11-22T10:00:00Z"))
    assert mnt.read("raw", "meta-data", "spot", "instance-action") == \
        spot("stop", "2026-11-22T10:00:00Z")


# --- failures are never cached --------------------------------------------

def warm(mnt):
    """Token and listings in the cache, so that only values are cold."""
    mnt.listdir()


@pytest.mark.parametrize("kind", ["fault404", "fault500", "deleted"])
def test_failed_fetch_not_cached(mocked, kind):
    mock, mnt = mocked
    warm(mnt)
    path = "meta-data/ami-id"
    want = text_file(AEMM[path])
    if kind == "fault404":
        mock.fault(path=path, status=404)
        expected = errno.ENOENT
    elif kind == "fault500":
        mock.fault(path=path, status=500)
        mnt.expect_log(r"GET /latest/meta-data/ami-id failed: HTTP 500")
        expected = errno.EIO
    else:
        mock.delete(path)
        expected = errno.ENOENT
    assert read_errno(mnt.p("ami_id")) == expected
    assert read_errno(mnt.p("ami_id")) == expected, "second try differs"
    failed = mock.count(path)
    assert failed >= 2, "the second read did not try IMDS again"
    if kind == "deleted":
        mock.set(path, AEMM[path])
    else:
        mock.clear_faults()
    mock.reset_counts()
    assert mnt.read("ami_id") == want, "the failure was cached"
    assert os.stat(mnt.p("ami_id")).st_size == len(want)
    assert mock.count(path) == 1
    if kind == "fault500":
        assert re.search(r"ami-id failed: HTTP 500", mnt.output())


def test_malformed_document_not_cached(mocked):
    mock, mnt = mocked
    warm(mnt)
    mnt.expect_log(r"not valid JSON")
    mock.fault(path=DOC, action="garbage")
    assert read_errno(mnt.p("region")) == errno.EIO
    assert read_errno(mnt.p("instance_identity_document")) == errno.EIO
    mock.clear_faults()
    assert mnt.read("region") == b"us-east-1\n"
    assert mnt.read("instance_identity_document") == text_file(AEMM[DOC])
    assert mnt.read("raw", "dynamic", "instance-identity", "document") == AEMM[DOC]


def test_failed_listing_not_cached(mocked):
    mock, mnt = mocked
    warm(mnt)
    mnt.expect_log(r"meta-data/network/interfaces/macs/ failed: HTTP 503")
    mock.fault(path=MACS, status=503)
    try:
        os.listdir(mnt.p("network", "interfaces"))
        raise AssertionError("listing succeeded although IMDS said 503")
    except OSError as e:
        assert e.errno == errno.EIO
    mock.clear_faults()
    assert mnt.listdir("network", "interfaces") == [AEMM_MAC]


# --- single flight --------------------------------------------------------

def test_single_flight_one_file(mocked):
    mock, mnt = mocked
    warm(mnt)
    path = "meta-data/ami-id"
    want = text_file(AEMM[path])
    mock.fault(path=path, delay_ms=300)
    mock.reset_counts()
    got = together(32, lambda i: slurp(mnt.p("ami_id")))
    assert got == [want] * 32
    assert mock.count(path) == 1, "32 readers cost %d GETs" % mock.count(path)
    assert mock.puts() == 0


def test_single_flight_shared_document(mocked):
    """Different names, one IMDS document: still one request."""
    mock, mnt = mocked
    warm(mnt)
    mnt.listdir("raw", "dynamic", "instance-identity")
    assert mock.count(DOC) == 0, "a listing fetched the document"
    mock.fault(path=DOC, delay_ms=300)
    mock.reset_counts()
    names = [("region",), ("account_id",), ("instance_identity_document",),
             ("raw", "dynamic", "instance-identity", "document")]
    wants = [b"us-east-1\n", b"0123456789\n", text_file(AEMM[DOC]), AEMM[DOC]]
    got = together(32, lambda i: slurp(mnt.p(*names[i % 4])))
    assert got == [wants[i % 4] for i in range(32)]
    assert mock.count(DOC) == 1, "32 readers of one document cost %d GETs" % mock.count(DOC)


def test_single_flight_listing(mocked):
    """32 readers of one cold listing, all in the daemon at once (opening a
    directory is not serialized by the kernel): one request."""
    mock, mnt = mocked
    d = mnt.p("network", "interfaces")
    assert os.path.isdir(d)
    assert mock.count(MACS) == 0
    mock.fault(path=MACS, delay_ms=300)
    got = together(32, lambda i: sorted(os.listdir(d)))
    assert got == [[AEMM_MAC]] * 32
    assert mock.count(MACS) == 1, "32 listings cost %d GETs" % mock.count(MACS)


# --- the token ------------------------------------------------------------

def test_one_token_for_the_whole_tree(mocked):
    mock, mnt = mocked
    files = walk_read(mnt.path)
    assert len(files) > 80
    assert mock.gets() > 80
    assert mock.puts() == 1
    assert mock.tokens()["issued"] == 1
    assert mock.tokens()["last_ttl"] == 21600


def test_expired_token_renewed_once(mocked):
    mock, mnt = mocked
    warm(mnt)
    assert mock.puts() == 1
    mock.expire_tokens()
    mock.reset_counts()
    assert mnt.read("ami_id") == text_file(AEMM["meta-data/ami-id"])
    assert mock.puts() == 1
    # One 401, then the retry with the new token.
    assert mock.count("meta-data/ami-id") == 2
    mock.reset_counts()
    assert mnt.read("instance_id") == text_file(AEMM["meta-data/instance-id"])
    assert mock.puts() == 0
    assert mock.count("meta-data/instance-id") == 1


def test_expired_token_many_readers_one_put(patient):
    mock, mnt = patient
    # Directories looked up and listed, values cold.
    for rel, _, _ in AEMM_SPREAD:
        os.listdir(os.path.dirname(mnt.p(rel)))
    for _, path, _ in AEMM_SPREAD:
        assert mock.count(path) == 0, "a listing fetched " + path
    assert mock.puts() == 1
    # A slow token service, so that the readers' 401s overlap the new PUT.
    mock.fault(path="api/token", method="PUT", delay_ms=300)
    mock.expire_tokens()
    mock.reset_counts()
    got = together(16, lambda i: slurp(mnt.p(AEMM_SPREAD[i][0])))
    for (rel, path, raw), data in zip(AEMM_SPREAD, got):
        assert data == (AEMM[path] if raw else text_file(AEMM[path])), rel
    assert mock.puts() == 1, "16 readers after expiry caused %d PUTs" % mock.puts()
    for rel, path, _ in AEMM_SPREAD:
        assert 1 <= mock.count(path) <= 2, (rel, mock.counts())


def test_first_token_many_readers_one_put(patient):
    """Readers of a fresh mount, through different directories, wait for the
    one token request."""
    mock, mnt = patient
    mock.fault(path="api/token", method="PUT", delay_ms=300)
    got = together(16, lambda i: slurp(mnt.p(AEMM_SPREAD[i][0])))
    for (rel, path, raw), data in zip(AEMM_SPREAD, got):
        assert data == (AEMM[path] if raw else text_file(AEMM[path])), rel
    assert mock.puts() == 1, "16 first readers caused %d PUTs" % mock.puts()
    for rel, path, _ in AEMM_SPREAD:
        assert mock.count(path) == 1, (rel, mock.counts())


def test_token_ttl_refreshed_before_expiry(start_mock, mount_fs):
    mock = start_mock("aemm")
    mnt = mount_fs(mock, ["token_ttl=3"])
    assert mnt.read("instance_id") == text_file(AEMM["meta-data/instance-id"])
    assert mock.puts() == 1
    assert mock.tokens()["last_ttl"] == 3
    # Refresh when less than min(60, 3/2) = 1.5 s remains; the old token is
    # still good for about another second here, so a daemon that waits for
    # expiry (or for a 401) would not PUT.
    time.sleep(2.1)
    mock.reset_counts()
    assert mnt.read("ami_id") == text_file(AEMM["meta-data/ami-id"])
    assert mock.puts() == 1, "no refresh with less than TTL/2 left"
    assert mock.count("meta-data/ami-id") == 1, "the reader saw a 401"
    assert mock.tokens()["last_ttl"] == 3
    # The new token serves the next reads.
    mock.reset_counts()
    assert mnt.read("instance_type") == text_file(AEMM["meta-data/instance-type"])
    assert mock.puts() == 0


# --- SIGHUP ---------------------------------------------------------------

def test_sighup_clears_everything(mocked):
    mock, mnt = mocked
    assert mnt.read("instance_id") == text_file(AEMM["meta-data/instance-id"])
    assert mnt.read("region") == b"us-east-1\n"
    assert mnt.listdir("tags") == ["Name", "Test"]
    assert mnt.read("tags", "Name") == b"test-instance\n"
    assert mnt.read("raw", "meta-data", "instance-type") == AEMM["meta-data/instance-type"]
    assert mock.puts() == 1
    new_id = b"i-0bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
    mock.set("meta-data/instance-id", new_id)
    mock.set(DOC, doc_with("aemm", region="ap-northeast-3"))
    mock.set(TAGS + "Name", "n")
    mock.set(TAGS + "Added", "yes")
    mock.set("meta-data/instance-type", "x")
    assert mnt.read("instance_id") == text_file(AEMM["meta-data/instance-id"])
    mock.reset_counts()
    sighup(mnt)
    assert mock.counts() == {}, "SIGHUP itself contacted IMDS"
    assert os.stat(mnt.p("instance_id")).st_size == len(new_id) + 1
    assert mnt.read("instance_id") == new_id + b"\n"
    assert mock.puts() == 1, "no new token after SIGHUP"
    assert mock.count("meta-data/instance-id") == 1
    assert mnt.read("region") == b"ap-northeast-3\n"
    assert mnt.listdir("tags") == ["Added", "Name", "Test"]
    assert mnt.read("tags", "Name") == b"n\n"
    assert mnt.read("raw", "meta-data", "instance-type") == b"x"
    assert mnt.read("instance_type") == b"x\n"
    assert mock.puts() == 1


def test_sighup_with_open_file(mocked):
    """An open file keeps its value; the next open gets the new one."""
    mock, mnt = mocked
    with open(mnt.p("instance_id"), "rb") as f:
        assert f.read() == text_file(AEMM["meta-data/instance-id"])
        mock.set("meta-data/instance-id", "i-2")
        sighup(mnt)
        assert mnt.read("instance_id") == b"i-2\n"
    assert mnt.read("instance_id") == b"i-2\n"


# --- writes ---------------------------------------------------------------

def write_one_byte(path, flags):
    fd = os.open(path, flags)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)


def test_writes_refused_change_nothing(mocked):
    mock, mnt = mocked
    want = mnt.read("instance_id")
    p = mnt.p("instance_id")
    refused = (errno.EROFS, errno.EPERM)
    attempts = [
        ("open for write", lambda: open(p, "wb")),
        # Root may open for writing (the kernel opens files itself); the
        # write is what must fail.
        ("write via O_RDWR", lambda: write_one_byte(p, os.O_RDWR)),
        ("truncate", lambda: os.truncate(p, 0)),
        ("create", lambda: open(mnt.p("new_file"), "wb")),
        ("mkdir", lambda: os.mkdir(mnt.p("new_dir"))),
        ("rename", lambda: os.rename(p, mnt.p("renamed"))),
        ("chmod", lambda: os.chmod(p, 0o666)),
        ("setxattr", lambda: os.setxattr(p, "user.x", b"1")),
    ]
    for what, fn in attempts:
        try:
            r = fn()
            if hasattr(r, "close"):
                r.close()
            elif isinstance(r, int):
                os.close(r)
            raise AssertionError("%s succeeded" % what)
        except OSError as e:
            assert e.errno in refused, "%s: %s" % (what, e)
    assert mnt.read("instance_id") == want
    assert os.stat(p).st_size == len(want)
    assert "new_file" not in mnt.listdir() and "new_dir" not in mnt.listdir()
    assert "renamed" not in mnt.listdir()
    assert mock_value(mock, "meta-data/instance-id") == AEMM["meta-data/instance-id"]
