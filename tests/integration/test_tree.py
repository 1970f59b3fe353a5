"""The mounted cleaned-up tree matches SPEC.md, "The cleaned-up tree".

The expected tree comes from reference.py, an independent model of SPEC.md
fed with what the mock IMDS serves over HTTP (token, then GET), not from the
data files: these tests check the contract, not our datasets. Hand-made
values set through the mock's control API pin the formats down further.

Everything that can block has a limit: HTTP calls have timeouts, and a
watchdog kills a test's daemons after WATCHDOG_S seconds so that a hung FUSE
request turns into ENOTCONN and a failure instead of a hung run.
"""

import errno
import json
import os
import stat
import threading
import urllib.error
import urllib.parse

import pytest

from conftest import read_errno
from reference import EIO, SENSITIVE, VOLATILE, Errno, Imds, expected_tree

WATCHDOG_S = 30
REFUSED = (errno.EROFS, errno.EPERM, errno.EACCES)

DOC = "dynamic/instance-identity/document"

# Values SPEC.md allows to be absent, by cleaned-up name.
OPTIONAL = [
    "public_ipv4", "public_hostname", "kernel_id", "availability_zone_id",
    "iam_info", "iam_security_credentials", "instance_profile_arn",
    "instance_profile_id", "instance_profile_name", "user_data",
    "spot_instance_action", "autoscaling_target_lifecycle_state", "tags",
]


# --- helpers -----------------------------------------------------------------

def mock_set(mock, path, value):
    """mock.set for any path (conftest's Mock quotes it; the mock unquotes)."""
    mock.set(path, value)


def is_mock_file(mock, path):
    """Whether the mock holds `path` as a file (not a listing)."""
    try:
        mock._call("GET", "files/" + path)
        return True
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return False
        raise


def model(mock):
    """SPEC's expected (files, dirs) for what `mock` serves right now."""
    return expected_tree(Imds(mock.url))


def first_line(mock, listing):
    """The first line of an IMDS listing, as the mock serves it."""
    return Imds(mock.url).get(listing).decode().split("\n")[0]


def _raise(e):
    raise e


def walk(m):
    """(files, dirs) of the mounted tree, relative paths; raw/ is listed as a
    directory but not descended into."""
    files, dirs = set(), {""}
    for root, dnames, fnames in os.walk(m.path, onerror=_raise):
        rel = os.path.relpath(root, m.path)
        rel = "" if rel == "." else rel
        dirs.update(os.path.join(rel, d) for d in dnames)
        files.update(os.path.join(rel, f) for f in fnames)
        if rel == "":
            dnames[:] = [d for d in dnames if d != "raw"]
    return files, dirs


def read_result(path):
    """The bytes of `path`, or Errno(code) if opening or reading fails."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        return Errno(e.errno)


def tree_problems(m, files, dirs):
    """Every way the mounted tree differs from the expected one, as text."""
    problems = []
    got_files, got_dirs = walk(m)
    for d in sorted(dirs - got_dirs):
        problems.append("missing directory %r" % d)
    for d in sorted(got_dirs - dirs):
        problems.append("unexpected directory %r" % d)
    for f in sorted(set(files) - got_files):
        problems.append("missing file %r (expected %r)" % (f, files[f]))
    for f in sorted(got_files - set(files)):
        problems.append("unexpected file %r (reads %r)" % (f, read_result(m.p(f))))
    for d in sorted(dirs & got_dirs):
        st = os.lstat(m.p(d))
        if not stat.S_ISDIR(st.st_mode):
            problems.append("%r: listed as a directory, lstat mode %o" % (d, st.st_mode))
    for f in sorted(set(files) & got_files):
        want = files[f]
        try:
            before = os.stat(m.p(f))
        except OSError as e:
            problems.append("%r: listed but stat fails: %s" % (f, e))
            continue
        if not stat.S_ISREG(before.st_mode):
            problems.append("%r: not a regular file (mode %o)" % (f, before.st_mode))
        got = read_result(m.p(f))
        if got != want:
            problems.append("%r: expected %r, got %r" % (f, want, got))
            continue
        if isinstance(want, Errno):
            continue
        after = os.stat(m.p(f))
        for when, st in (("before reading", before), ("after reading", after)):
            if f in VOLATILE:
                if st.st_size not in (0, len(want)):
                    problems.append("%r (volatile): st_size %d %s, expected 0 or %d"
                                    % (f, st.st_size, when, len(want)))
            elif st.st_size != len(want):
                problems.append("%r: st_size %d %s, expected %d (%r)"
                                % (f, st.st_size, when, len(want), want))
    return problems


def assert_tree(m, mock):
    files, dirs = model(mock)
    problems = tree_problems(m, files, dirs)
    assert not problems, "mounted tree differs from SPEC:\n  " + "\n  ".join(problems)
    return files, dirs


def assert_absent(m, rel):
    """SPEC's "no file": lookup gives ENOENT and the parent does not list it."""
    with pytest.raises(FileNotFoundError):
        os.stat(m.p(rel))
    assert read_errno(m.p(rel)) == errno.ENOENT, rel
    parent, name = os.path.split(rel)
    assert name not in os.listdir(m.p(parent)), "%r is listed but absent" % rel


def interface_dirs(m):
    return [m.p("network", "interfaces", mac) for mac in m.listdir("network", "interfaces")]


# --- 1, 2: the whole tree of every test instance -----------------------------

def test_tree_matches_spec(instance, start_mock, mnt):
    mock = start_mock(instance)
    m = mnt(mock)
    files, dirs = assert_tree(m, mock)
    assert os.path.isdir(m.p("raw"))
    # The model is not trivially empty: the instances cover the common files.
    for name in ("region", "account_id", "instance_id", "instance_identity_document",
                 "ami_launch_index", "security_groups", "mac"):
        assert name in files
    assert any(d.startswith("network/interfaces/") for d in dirs)


def test_tree_is_stable_on_second_walk(instance, start_mock, mnt):
    """A second walk (served from the cache) still matches exactly."""
    mock = start_mock(instance)
    m = mnt(mock)
    files, dirs = assert_tree(m, mock)
    problems = tree_problems(m, files, dirs)
    assert not problems, "second walk differs:\n  " + "\n  ".join(problems)


def test_stat_before_any_listing_is_exact(instance, start_mock, mnt):
    """st_size is exact on the first lookup, with no readdir or read before."""
    mock = start_mock(instance)
    m = mnt(mock)
    files, dirs = model(mock)
    problems = []
    for rel, want in sorted(files.items()):
        st = os.stat(m.p(rel))
        if not stat.S_ISREG(st.st_mode):
            problems.append("%s: mode %o" % (rel, st.st_mode))
        elif rel not in VOLATILE and st.st_size != len(want):
            problems.append("%s: st_size %d, expected %d" % (rel, st.st_size, len(want)))
    for rel in dirs:
        if not stat.S_ISDIR(os.stat(m.p(rel)).st_mode):
            problems.append("%s: not a directory" % rel)
    assert not problems, "\n".join(problems)


def test_unknown_names_are_enoent(instance, start_mock, mnt):
    mock = start_mock(instance)
    m = mnt(mock)
    for rel in ("nonexistent", "Region", "ami-id", "meta-data", "tags/No-Such-Tag",
                "network/nonexistent", "network/interfaces/00:00:00:00:00:00",
                "public_keys/no-such-key", "spot_instance_action/nonexistent"):
        with pytest.raises(FileNotFoundError):
            os.stat(m.p(rel))
    for mac in interface_dirs(m):
        with pytest.raises(FileNotFoundError):
            os.stat(os.path.join(mac, "vpc-id"))  # the IMDS spelling is not a name
        with pytest.raises(FileNotFoundError):
            os.stat(os.path.join(mac, "ipv4_associations", "198.51.100.254"))


# --- 3: absent values ----------------------------------------------------------

def test_minimal_absent_values(start_mock, mnt):
    mock = start_mock("minimal")
    m = mnt(mock)
    for name in OPTIONAL:
        assert_absent(m, name)
    macs = interface_dirs(m)
    assert macs
    for mac in macs:
        rel = os.path.relpath(mac, m.path)
        for name in ("public_hostname", "subnet_ipv4_cidr_block", "vpc_ipv4_cidr_block"):
            assert_absent(m, os.path.join(rel, name))
        for name in ("ipv6s", "ipv6_prefix", "public_ipv4s", "subnet_ipv6_cidr_blocks",
                     "vpc_ipv6_cidr_blocks"):  # empty on 404
            assert m.read(rel, name) == b""
            assert os.stat(m.p(rel, name)).st_size == 0
        assert m.listdir(rel, "ipv4_associations") == []
    assert m.listdir("public_keys") == []
    assert_tree(m, mock)


def test_interface_lists_empty_on_404(start_mock, mnt):
    """The three lists the ec2-metadata library returns as [] when IMDS has
    none (a subnet or VPC without IPv6, a VPC with one IPv4 block listed
    nowhere) are empty files, listed, never absent (SPEC, interfaces)."""
    mock = start_mock("rich")
    m = mnt(mock)
    mac = os.path.relpath(interface_dirs(m)[0], m.path)
    src = "meta-data/network/interfaces/macs/%s/" % os.path.basename(mac)
    for name, remote in (("subnet_ipv6_cidr_blocks", "subnet-ipv6-cidr-blocks"),
                         ("vpc_ipv4_cidr_blocks", "vpc-ipv4-cidr-blocks"),
                         ("vpc_ipv6_cidr_blocks", "vpc-ipv6-cidr-blocks")):
        try:
            mock.delete(src + remote)
        except Exception:
            pass  # the instance has none already
        assert name in m.listdir(mac), name
        assert m.read(mac, name) == b"", name
        assert os.stat(m.p(mac, name)).st_size == 0, name
    assert_tree(m, mock)


# cleaned-up names -> what to delete from the `rich` instance (a trailing "/"
# deletes a whole IMDS directory)
DELETIONS = {
    "public_ipv4": ["meta-data/public-ipv4"],
    "public_hostname": ["meta-data/public-hostname"],
    "kernel_id": ["meta-data/kernel-id"],
    "availability_zone_id": ["meta-data/placement/availability-zone-id"],
    "iam": ["meta-data/iam/"],
    "iam_security_credentials": ["meta-data/iam/security-credentials/"],
    "user_data": ["user-data"],
    "spot_instance_action": ["meta-data/spot/"],
    "autoscaling_target_lifecycle_state": ["meta-data/autoscaling/"],
    "tags": ["meta-data/tags/"],
}
GONE = {
    "iam": ["iam_info", "iam_security_credentials", "instance_profile_arn",
            "instance_profile_id", "instance_profile_name"],
}


@pytest.mark.parametrize("case", sorted(DELETIONS))
def test_deleted_before_first_access_is_absent(case, start_mock, mnt):
    mock = start_mock("rich")
    m = mnt(mock)
    for path in DELETIONS[case]:
        mock.delete(path)
    for name in GONE.get(case, [case]):
        assert_absent(m, name)
    assert_tree(m, mock)


# name -> ({IMDS path: value to set on `minimal`}, {cleaned-up path: expected bytes})
CREATIONS = {
    "public_ipv4": ({"meta-data/public-ipv4": "198.51.100.7"},
                    {"public_ipv4": b"198.51.100.7\n"}),
    "public_hostname": ({"meta-data/public-hostname": "ec2-198-51-100-7.example"},
                        {"public_hostname": b"ec2-198-51-100-7.example\n"}),
    "kernel_id": ({"meta-data/kernel-id": "aki-12345678"}, {"kernel_id": b"aki-12345678\n"}),
    "availability_zone_id": ({"meta-data/placement/availability-zone-id": "use2-az1"},
                             {"availability_zone_id": b"use2-az1\n"}),
    "iam": ({"meta-data/iam/info": '{"Code":"Success","InstanceProfileArn":'
                                   '"arn:aws:iam::111122223333:instance-profile/a/b/prof-1",'
                                   '"InstanceProfileId":"AIPAEXAMPLE"}',
             "meta-data/iam/security-credentials/role-1": '{"Code":"Success","Token":"t"}'},
            {"iam_info": b'{"Code":"Success","InstanceProfileArn":'
                         b'"arn:aws:iam::111122223333:instance-profile/a/b/prof-1",'
                         b'"InstanceProfileId":"AIPAEXAMPLE"}\n',
             "instance_profile_arn": b"arn:aws:iam::111122223333:instance-profile/a/b/prof-1\n",
             "instance_profile_id": b"AIPAEXAMPLE\n",
             "instance_profile_name": b"prof-1\n",
             "iam_security_credentials": b'{"Code":"Success","Token":"t"}\n'}),
    "user_data": ({"user-data": b"\x00\xff\xfe no newline"},
                  {"user_data": b"\x00\xff\xfe no newline"}),
    "spot_instance_action": ({"meta-data/spot/instance-action":
                              '{"action": "stop", "time": "2027-01-02T03:04:05Z"}'},
                             {"spot_instance_action/action": b"stop\n",
                              "spot_instance_action/time": b"2027-01-02T03:04:05Z\n"}),
    "autoscaling_target_lifecycle_state": (
        {"meta-data/autoscaling/target-lifecycle-state": "Warmed:Stopped"},
        {"autoscaling_target_lifecycle_state": b"Warmed:Stopped\n"}),
    "tags": ({"meta-data/tags/instance/Name": "box"}, {"tags/Name": b"box\n"}),
    "tags_enabled_but_none": ({"meta-data/tags/instance/": ""}, {"tags": None}),
    "user_data_empty": ({"user-data": b""}, {"user_data": b""}),
}


@pytest.mark.parametrize("case", sorted(CREATIONS))
def test_created_before_first_access_is_present(case, start_mock, mnt):
    mock = start_mock("minimal")
    m = mnt(mock)
    values, want = CREATIONS[case]
    for path, value in values.items():
        if path.endswith("/"):
            mock.set_listing(path, value)
        else:
            mock.set(path, value)
    for rel, data in want.items():  # None: an empty directory
        parent, name = os.path.split(rel)
        assert name in os.listdir(m.p(parent)), rel
        if data is None:
            assert m.listdir(rel) == []
        else:
            assert m.read(rel) == data, rel
    files, dirs = assert_tree(m, mock)
    for rel, data in want.items():
        if data is None:
            assert rel in dirs, "reference model disagrees on %s" % rel
        else:
            assert files[rel] == data, "reference model disagrees on %s" % rel


def test_volatile_presence_follows_imds(start_mock, mnt):
    """spot_instance_action and autoscaling_target_lifecycle_state are present
    exactly while IMDS answers for them, also after they were looked up."""
    mock = start_mock("minimal")
    m = mnt(mock)
    spot = "meta-data/spot/instance-action"
    asg = "meta-data/autoscaling/target-lifecycle-state"
    assert_absent(m, "spot_instance_action")
    assert_absent(m, "autoscaling_target_lifecycle_state")
    mock.set(spot, '{"action":"hibernate","time":"2027-05-06T07:08:09Z"}')
    mock.set(asg, "Terminated")
    assert "spot_instance_action" in os.listdir(m.path)
    assert "autoscaling_target_lifecycle_state" in os.listdir(m.path)
    assert m.read("spot_instance_action", "action") == b"hibernate\n"
    assert m.read("spot_instance_action", "time") == b"2027-05-06T07:08:09Z\n"
    assert m.read("autoscaling_target_lifecycle_state") == b"Terminated\n"
    assert_tree(m, mock)
    # volatile content is fresh on every open
    mock.set(spot, '{"action":"stop","time":"2027-05-06T07:10:00Z"}')
    mock.set(asg, "Terminating:Wait")
    assert m.read("spot_instance_action", "action") == b"stop\n"
    assert m.read("spot_instance_action", "time") == b"2027-05-06T07:10:00Z\n"
    assert m.read("autoscaling_target_lifecycle_state") == b"Terminating:Wait\n"
    mock.delete("meta-data/spot/")
    mock.delete("meta-data/autoscaling/")
    assert_absent(m, "spot_instance_action")
    assert_absent(m, "autoscaling_target_lifecycle_state")


# --- 4: modes and ownership -------------------------------------------------------

def raw_sensitive(rel):
    return rel == "raw/user-data" or any(
        rel.startswith(p) for p in ("raw/meta-data/iam/security-credentials/",
                                    "raw/meta-data/identity-credentials/"))


def test_modes_and_owner(instance, start_mock, mnt):
    mock = start_mock(instance)
    m = mnt(mock)
    uid = os.getuid()
    problems = []
    seen_sensitive = set()
    for root, dnames, fnames in os.walk(m.path, onerror=_raise):
        for name in [""] + dnames if root == m.path else dnames:
            st = os.lstat(os.path.join(root, name))
            rel = os.path.relpath(os.path.join(root, name), m.path)
            if stat.S_IMODE(st.st_mode) != 0o755 or not stat.S_ISDIR(st.st_mode):
                problems.append("dir %s: mode %o, expected 40755" % (rel, st.st_mode))
            if st.st_uid != uid:
                problems.append("dir %s: uid %d, expected %d" % (rel, st.st_uid, uid))
        for name in fnames:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, m.path)
            st = os.lstat(path)
            sensitive = rel in SENSITIVE or raw_sensitive(rel)
            if sensitive:
                seen_sensitive.add(rel)
            want = 0o400 if sensitive else 0o444
            if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != want:
                problems.append("file %s: mode %o, expected %o" % (rel, st.st_mode,
                                                                   0o100000 | want))
            if st.st_uid != uid:
                problems.append("file %s: uid %d, expected %d" % (rel, st.st_uid, uid))
    assert not problems, "\n".join(problems)
    files, _ = model(mock)
    for rel in SENSITIVE:
        assert (rel in seen_sensitive) == (rel in files), rel
    if "iam_security_credentials" in files:
        assert any(r.startswith("raw/meta-data/iam/security-credentials/")
                   for r in seen_sensitive)
    if "user_data" in files:
        assert "raw/user-data" in seen_sensitive


# --- 5: formats of hand-made values ---------------------------------------------------

def test_formats(start_mock, mnt):
    mock = start_mock("minimal")
    m = mnt(mock)
    mac = first_line(mock, "meta-data/network/interfaces/macs/").rstrip("/")
    ifc = "meta-data/network/interfaces/macs/%s/" % mac
    doc = json.dumps({"accountId": "000011112222", "region": "xx-t\u00ebst-1",
                      "instanceId": "i-1"}, separators=(",", ":"))
    values = {
        "meta-data/tags/instance/Empty": b"",
        "meta-data/tags/instance/Trailing": b"ends\n",
        "meta-data/tags/instance/Multi": b"line1\nline2",
        "meta-data/tags/instance/Unicode": "caf\u00e9 \u2615 \u65e5\u672c".encode(),
        "meta-data/tags/instance/\u041a\u043b\u044e\u0447": "\u0437\u043d\u0430\u0447".encode(),
        "meta-data/tags/instance/Blank lines": b"a\n\nb\n\n",
        "meta-data/tags/instance/a+b=c@d,e:f_g-h.i": b"punctuation",
        "meta-data/tags/instance/Big": b"x" * 70000,
        "meta-data/security-groups": b"sg-a\nsg-b\nsg-c",
        ifc + "security-group-ids": b"sg-1\nsg-2\n",
        ifc + "ipv6s": b"",
        ifc + "public-ipv4s": b"198.51.100.1\n198.51.100.2",
        ifc + "ipv4-associations/198.51.100.1": b"10.0.1.23",
        ifc + "ipv4-associations/198.51.100.2": b"10.0.1.24\n10.0.1.25",
        "meta-data/ami-launch-index": b"0",
        DOC: doc.encode(),
        "meta-data/iam/info": b'{"InstanceProfileArn": "arn:aws:iam::1:instance-profile/p",'
                              b' "InstanceProfileId": "ID"}\n',
        "meta-data/iam/security-credentials/r": b'{"Token": "x"}\n',
        "user-data": b"#!/bin/sh\n\x00tail",
    }
    for path, value in values.items():
        mock_set(mock, path, value)
    want = {
        "tags/Empty": b"",
        "tags/Trailing": b"ends\n",
        "tags/Multi": b"line1\nline2\n",
        "tags/Unicode": "caf\u00e9 \u2615 \u65e5\u672c\n".encode(),
        "tags/\u041a\u043b\u044e\u0447": "\u0437\u043d\u0430\u0447\n".encode(),
        "tags/Blank lines": b"a\n\nb\n\n",
        "tags/a+b=c@d,e:f_g-h.i": b"punctuation\n",
        "tags/Big": b"x" * 70000 + b"\n",
        "security_groups": b"sg-a\nsg-b\nsg-c\n",
        "network/interfaces/%s/security_group_ids" % mac: b"sg-1\nsg-2\n",
        "network/interfaces/%s/ipv6s" % mac: b"",
        "network/interfaces/%s/public_ipv4s" % mac: b"198.51.100.1\n198.51.100.2\n",
        "network/interfaces/%s/ipv4_associations/198.51.100.1" % mac: b"10.0.1.23\n",
        "network/interfaces/%s/ipv4_associations/198.51.100.2" % mac: b"10.0.1.24\n10.0.1.25\n",
        "ami_launch_index": b"0\n",
        "instance_identity_document": doc.encode() + b"\n",
        "region": "xx-t\u00ebst-1\n".encode(),
        "account_id": b"000011112222\n",
        "iam_info": values["meta-data/iam/info"],
        "instance_profile_name": b"p\n",
        "iam_security_credentials": b'{"Token": "x"}\n',
        "user_data": b"#!/bin/sh\n\x00tail",
    }
    problems = []
    for rel, data in want.items():
        got = read_result(m.p(rel))
        if got != data:
            problems.append("%s: expected %r, got %r" % (rel, data, got))
        elif rel not in VOLATILE and os.stat(m.p(rel)).st_size != len(data):
            problems.append("%s: st_size %d, expected %d"
                            % (rel, os.stat(m.p(rel)).st_size, len(data)))
    assert not problems, "\n".join(problems)
    assert sorted(os.listdir(m.p("tags"))) == sorted(
        p.split("/", 1)[1] for p in want if p.startswith("tags/"))
    assert sorted(os.listdir(m.p("network", "interfaces", mac, "ipv4_associations"))) == [
        "198.51.100.1", "198.51.100.2"]
    files, _ = assert_tree(m, mock)
    for rel, data in want.items():
        assert files[rel] == data, "reference model disagrees on %s" % rel


def test_credentials_come_from_the_first_listed_role(start_mock, mnt):
    """The role is the first name IMDS lists, in IMDS's order."""
    mock = start_mock("minimal")
    m = mnt(mock)
    creds = "meta-data/iam/security-credentials/"
    mock.set(creds + "alpha", '{"Role": "alpha"}')
    mock.set(creds + "zeta", '{"Role": "zeta"}')
    mock.set_listing(creds, "zeta\nalpha")
    assert m.read("iam_security_credentials") == b'{"Role": "zeta"}\n'
    assert_tree(m, mock)


def test_bad_listing_lines_are_skipped(start_mock, mnt):
    """Listing lines that cannot be names are skipped, the rest listed."""
    mock = start_mock("minimal")
    m = mnt(mock)
    m.expect_log(r"tags/instance|listing|name")
    mock.set("meta-data/tags/instance/Good", "yes")
    mock.set("meta-data/tags/instance/Also", "too")
    mock.set_listing("meta-data/tags/instance/", "Good\n.\n..\n\nAlso")
    assert m.listdir("tags") == ["Also", "Good"]
    assert m.read("tags", "Good") == b"yes\n"
    assert m.read("tags", "Also") == b"too\n"
    assert_tree(m, mock)


def test_large_and_partial_reads(start_mock, mnt):
    """Byte-exact content through many FUSE reads and at odd offsets, for a
    cached file and for a volatile (direct I/O) one."""
    mock = start_mock("minimal")
    m = mnt(mock)
    big = bytes((i * 7 + i // 251) % 256 for i in range(300 * 1024))
    creds = b'{"Token": "' + b"t" * 20000 + b'"}'
    mock.set("user-data", big)
    mock.set("meta-data/iam/security-credentials/role", creds)
    assert os.stat(m.p("user_data")).st_size == len(big)
    assert m.read("user_data") == big
    for rel, want in (("user_data", big), ("iam_security_credentials", creds + b"\n")):
        fd = os.open(m.p(rel), os.O_RDONLY)
        try:
            for off, n in ((0, 1), (1, 7), (4095, 3), (4096, 5000), (len(want) - 2, 100),
                           (len(want), 10), (len(want) + 5000, 10)):
                assert os.pread(fd, n, off) == want[off:off + n], (rel, off, n)
            chunks = []
            while True:
                chunk = os.read(fd, 4093)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(fd)
        # the fd's position was not moved by pread
        assert b"".join(chunks) == want, rel


def test_listing_asks_for_listings_only(instance, start_mock, mnt):
    """`ls` of the top and of network/interfaces/<mac> fetches no value
    except the volatile entries whose presence is their value."""
    mock = start_mock(instance)
    m = mnt(mock)
    presence_is_value = {"meta-data/spot/instance-action",
                         "meta-data/autoscaling/target-lifecycle-state"}
    mock.reset_counts()
    os.listdir(m.path)
    for mac in m.listdir("network", "interfaces"):
        os.listdir(m.p("network", "interfaces", mac))
    if instance != "minimal":
        os.listdir(m.p("tags"))
    os.listdir(m.p("public_keys"))
    values = []
    for key in mock.counts():
        method, _, path = key.partition(" ")
        rel = urllib.parse.unquote(path[len("/latest/"):])
        if method != "GET" or rel in presence_is_value or rel.endswith("/"):
            continue
        if is_mock_file(mock, rel):  # else a listing asked without its "/"
            values.append(rel)
    assert not values, "listing fetched values: %s" % values


@pytest.mark.parametrize("source", ["rich", "aemm"])
def test_hide_sensitive_leaves_sensitive_files_out(source, start_mock, mnt):
    mock = start_mock(source)
    m = mnt(mock, options=("hide_sensitive",))
    files, dirs = model(mock)
    for rel in SENSITIVE:
        assert rel in files, "the instance should have %s" % rel
        del files[rel]
        assert_absent(m, rel)
    assert_absent(m, "raw/user-data")
    assert_absent(m, "raw/meta-data/iam/security-credentials")
    problems = tree_problems(m, files, dirs)
    assert not problems, "tree with hide_sensitive:\n  " + "\n  ".join(problems)


# IMDS path -> (a body that does not parse, a valid one, {derived file: expected bytes})
MALFORMED = {
    "document": (DOC, b'{"region": "eu-north-1", "accountId": ',
                 b'{"region": "eu-north-1", "accountId": "999988887777"}',
                 {"instance_identity_document":
                  b'{"region": "eu-north-1", "accountId": "999988887777"}\n',
                  "region": b"eu-north-1\n", "account_id": b"999988887777\n"}),
    "iam_info": ("meta-data/iam/info", b"<html>not json</html>",
                 b'{"InstanceProfileArn": "arn:aws:iam::1:instance-profile/x/y",'
                 b' "InstanceProfileId": "AIPA1"}',
                 {"iam_info": b'{"InstanceProfileArn": "arn:aws:iam::1:instance-profile/x/y",'
                              b' "InstanceProfileId": "AIPA1"}\n',
                  "instance_profile_arn": b"arn:aws:iam::1:instance-profile/x/y\n",
                  "instance_profile_id": b"AIPA1\n",
                  "instance_profile_name": b"y\n"}),
    "iam_security_credentials": ("meta-data/iam/security-credentials/{role}",
                                 b'{"Code": "Success", "Token": "t"',
                                 b'{"Code": "Success", "Token": "t"}',
                                 {"iam_security_credentials":
                                  b'{"Code": "Success", "Token": "t"}\n'}),
    "spot": ("meta-data/spot/instance-action", b'{"action": "stop", "time": }',
             b'{"action": "stop", "time": "2027-01-01T00:00:00Z"}',
             {"spot_instance_action/action": b"stop\n",
              "spot_instance_action/time": b"2027-01-01T00:00:00Z\n"}),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_json_is_eio_and_not_cached(case, start_mock, mnt):
    mock = start_mock("aemm")
    m = mnt(mock)
    m.expect_log(r"json|pars|malformed|invalid")
    path, bad, good, derived = MALFORMED[case]
    path = path.format(role=first_line(mock, "meta-data/iam/security-credentials/"))
    mock.set(path, bad)
    files, _ = model(mock)
    for rel in derived:
        assert files[rel] == EIO, "reference model: %s should be EIO" % rel
    for rel in derived:
        assert read_errno(m.p(rel)) == errno.EIO, rel
    assert m.alive()
    assert any(path in line for line in m.output().splitlines()), \
        "no log line names %s:\n%s" % (path, m.output())
    mock.set(path, good)  # no rm: a failure is never cached
    for rel, data in derived.items():
        assert m.read(rel) == data, rel
    assert_tree(m, mock)


# --- 6: writes are refused ------------------------------------------------------------

def _open_close(path, flags, mode=0o644):
    fd = os.open(path, flags, mode)
    os.close(fd)


def _open_write(path, flags):
    """SPEC refuses the write. Root may be able to open for writing (the
    kernel opens files itself, without asking the daemon), but the write
    itself must fail, and nothing may change."""
    fd = os.open(path, flags)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)


WRITES = [
    ("write via open O_WRONLY", lambda p: _open_write(p("region"), os.O_WRONLY)),
    ("write via open O_RDWR", lambda p: _open_write(p("region"), os.O_RDWR)),
    ("write via open O_WRONLY|O_APPEND", lambda p: _open_write(p("region"), os.O_WRONLY | os.O_APPEND)),
    ("open O_WRONLY|O_TRUNC", lambda p: _open_close(p("region"), os.O_WRONLY | os.O_TRUNC)),
    ("open O_RDONLY|O_TRUNC", lambda p: _open_close(p("region"), os.O_RDONLY | os.O_TRUNC)),
    ("write via open existing O_CREAT|O_WRONLY", lambda p: _open_write(p("region"),
                                                                       os.O_CREAT | os.O_WRONLY)),
    ("create new file", lambda p: _open_close(p("new-file"), os.O_CREAT | os.O_WRONLY | os.O_EXCL)),
    ("create new file in tags/", lambda p: _open_close(p("tags", "NewTag"),
                                                       os.O_CREAT | os.O_WRONLY | os.O_EXCL)),
    ("create new file in network/", lambda p: _open_close(p("network", "new-file"),
                                                          os.O_CREAT | os.O_RDONLY)),
    ("mkfifo", lambda p: os.mkfifo(p("new-fifo"))),
    ("mkdir", lambda p: os.mkdir(p("new-dir"))),
    ("mkdir in tags/", lambda p: os.mkdir(p("tags", "new-dir"))),
    ("rename file", lambda p: os.rename(p("region"), p("region2"))),
    ("rename file over file", lambda p: os.rename(p("region"), p("ami_id"))),
    ("rename directory", lambda p: os.rename(p("network"), p("net2"))),
    ("chmod file", lambda p: os.chmod(p("region"), 0o666)),
    ("chmod directory", lambda p: os.chmod(p("network"), 0o777)),
    ("chown file", lambda p: os.chown(p("region"), 4321, 4321)),
    ("truncate to 0", lambda p: os.truncate(p("region"), 0)),
    ("truncate longer", lambda p: os.truncate(p("region"), 4096)),
    ("setxattr file", lambda p: os.setxattr(p("region"), "user.imdsfs", b"x")),
    ("setxattr directory", lambda p: os.setxattr(p("network"), "user.imdsfs", b"x")),
    ("symlink", lambda p: os.symlink("region", p("new-link"))),
    ("link", lambda p: os.link(p("region"), p("new-hardlink"))),
]


def test_writes_are_refused(start_mock, mnt):
    mock = start_mock("aemm")
    m = mnt(mock)
    files, dirs = assert_tree(m, mock)
    region = m.read("region")
    problems = []
    for what, op in WRITES:
        try:
            op(m.p)
            problems.append("%s: succeeded" % what)
        except OSError as e:
            if e.errno not in REFUSED:
                problems.append("%s: %s, expected EROFS or EPERM" % (what, e))
        if m.read("region") != region:
            problems.append("%s: region changed" % what)
        if not m.alive():
            problems.append("%s: the daemon died" % what)
            break
    assert not problems, "writes not refused:\n  " + "\n  ".join(problems)
    problems = tree_problems(m, files, dirs)
    assert not problems, "the tree changed:\n  " + "\n  ".join(problems)
    for rel in ("region", "network"):
        with pytest.raises(OSError) as e:
            os.getxattr(m.p(rel), "user.imdsfs")
        assert e.value.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP), rel
        st = os.stat(m.p(rel))
        assert stat.S_IMODE(st.st_mode) == (0o755 if rel == "network" else 0o444)
        assert st.st_uid == os.getuid()


# --- 7: SOURCE is accepted and ignored -------------------------------------------------

@pytest.mark.parametrize("source", ["imdsfs", "/run/ec2"])
def test_source_argument_is_ignored(source, start_mock, mnt):
    mock = start_mock("aemm")
    m = mnt(mock, extra_args=(source,))
    assert os.path.ismount(m.path)
    assert_tree(m, mock)
