"""An independent reference model of SPEC.md's "The cleaned-up tree".

Given an IMDS (in the tests: scripts/imds-mock, asked over HTTP with an
IMDSv2 token exactly as a client would, never by reading its data file),
``expected_tree(imds)`` computes what the mounted cleaned-up tree must hold:
every file with its expected bytes, and every directory. It follows SPEC.md
only; it shares no code or table with the daemon.

Files whose read must fail (a JSON document that does not parse, and what is
derived from it) are given as ``Errno(errno.EIO)`` instead of bytes.

raw/ is not modelled beyond its existence (it mirrors IMDS; see its own tests).
"""

import errno
import json
import urllib.error
import urllib.parse
import urllib.request

TOKEN_TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"

# Files SPEC.md marks volatile: they may report st_size 0.
VOLATILE = frozenset({
    "iam_security_credentials",
    "instance_action",
    "spot_instance_action/action",
    "spot_instance_action/time",
    "autoscaling_target_lifecycle_state",
})

# Sensitive files of the cleaned-up tree (0400); raw/ twins are listed by the tests.
SENSITIVE = frozenset({"iam_security_credentials", "user_data"})

# Top-level text values and lists: name -> source under /latest/.
# Every one of them is "no file" when IMDS says 404 (SPEC: "IMDS says 404
# (for any file) -> ENOENT" and "presence comes from IMDS's own listings").
TOP_TEXT = {
    "ami_id": "meta-data/ami-id",
    "ami_launch_index": "meta-data/ami-launch-index",
    "ami_manifest_path": "meta-data/ami-manifest-path",
    "autoscaling_target_lifecycle_state": "meta-data/autoscaling/target-lifecycle-state",
    "availability_zone": "meta-data/placement/availability-zone",
    "availability_zone_id": "meta-data/placement/availability-zone-id",
    "domain": "meta-data/services/domain",
    "instance_action": "meta-data/instance-action",
    "instance_id": "meta-data/instance-id",
    "instance_life_cycle": "meta-data/instance-life-cycle",
    "instance_type": "meta-data/instance-type",
    "kernel_id": "meta-data/kernel-id",
    "mac": "meta-data/mac",
    "partition": "meta-data/services/partition",
    "private_hostname": "meta-data/local-hostname",
    "private_ipv4": "meta-data/local-ipv4",
    "public_hostname": "meta-data/public-hostname",
    "public_ipv4": "meta-data/public-ipv4",
    "reservation_id": "meta-data/reservation-id",
    "security_groups": "meta-data/security-groups",
}

DOC = "dynamic/instance-identity/document"
IAM_INFO = "meta-data/iam/info"
IAM_CREDS = "meta-data/iam/security-credentials/"
SPOT = "meta-data/spot/instance-action"
TAGS = "meta-data/tags/instance/"
KEYS = "meta-data/public-keys/"
MACS = "meta-data/network/interfaces/macs/"

# network/interfaces/<mac>/<name> -> (source below macs/<mac>/, empty on 404)
INTERFACE = {
    "device_number": ("device-number", False),
    "interface_id": ("interface-id", False),
    "ipv6s": ("ipv6s", True),
    "ipv6_prefix": ("ipv6-prefix", True),
    "mac": ("mac", False),
    "owner_id": ("owner-id", False),
    "private_hostname": ("local-hostname", False),
    "private_ipv4s": ("local-ipv4s", False),
    "public_hostname": ("public-hostname", False),
    "public_ipv4s": ("public-ipv4s", True),
    "security_groups": ("security-groups", False),
    "security_group_ids": ("security-group-ids", False),
    "subnet_id": ("subnet-id", False),
    "subnet_ipv4_cidr_block": ("subnet-ipv4-cidr-block", False),
    "subnet_ipv6_cidr_blocks": ("subnet-ipv6-cidr-blocks", True),
    "vpc_id": ("vpc-id", False),
    "vpc_ipv4_cidr_block": ("vpc-ipv4-cidr-block", False),
    "vpc_ipv4_cidr_blocks": ("vpc-ipv4-cidr-blocks", True),
    "vpc_ipv6_cidr_blocks": ("vpc-ipv6-cidr-blocks", True),
}


class Errno:
    """An expected read failure."""

    def __init__(self, code):
        self.errno = code

    def __eq__(self, other):
        return isinstance(other, Errno) and other.errno == self.errno

    def __hash__(self):
        return hash(self.errno)

    def __repr__(self):
        return "Errno(%s)" % errno.errorcode.get(self.errno, self.errno)


EIO = Errno(errno.EIO)


class Imds:
    """A minimal IMDSv2 client: one token, GET returns bytes or None on 404."""

    def __init__(self, base_url, timeout=5):
        self.base = base_url.rstrip("/") + "/latest/"
        self.timeout = timeout
        req = urllib.request.Request(self.base + "api/token", method="PUT",
                                     headers={TOKEN_TTL_HEADER: "21600"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            self.token = r.read().decode()

    def get(self, path):
        url = self.base + urllib.parse.quote(path, safe="/")
        req = urllib.request.Request(url, headers={TOKEN_HEADER: self.token})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise


# --- SPEC.md's content rules ------------------------------------------------

def text(body):
    """A text value or a list: the body plus a final newline unless it is
    empty or already ends in one."""
    if body == b"" or body.endswith(b"\n"):
        return body
    return body + b"\n"


_BAD = object()


def parse_json(body):
    """The parsed document, or _BAD when it does not parse."""
    try:
        return json.loads(body)
    except ValueError:  # includes UnicodeDecodeError
        return _BAD


def json_doc(body):
    """A JSON document: as served plus a final newline if it had none; EIO
    when it does not parse."""
    if parse_json(body) is _BAD:
        return EIO
    return body if body.endswith(b"\n") else body + b"\n"


def json_field(body, field, last_part=False):
    """A value taken from a JSON document: the string's UTF-8 plus "\\n";
    EIO when the document does not parse."""
    doc = parse_json(body)
    if not isinstance(doc, dict):
        return EIO
    value = doc.get(field)
    if not isinstance(value, str):
        return EIO
    if last_part:
        value = value.rsplit("/", 1)[-1]
    return value.encode("utf-8") + b"\n"


def valid_name(name):
    """A listing line that can be a file name (SPEC: others are skipped)."""
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


def lines(body):
    """IMDS's listing/list lines, as str (surrogateescape, as os.listdir)."""
    if body is None:
        return []
    return [line.decode("utf-8", "surrogateescape") for line in body.split(b"\n") if line]


# --- the tree ------------------------------------------------------------------

def expected_tree(imds):
    """(files, dirs): files maps each relative path to its expected bytes (or
    Errno); dirs is the set of relative directory paths ("" is the root).
    raw/ is included as a directory, its content is not."""
    files = {}
    dirs = {"", "raw", "network", "network/interfaces", "public_keys"}

    for name, src in TOP_TEXT.items():
        body = imds.get(src)
        if body is not None:
            files[name] = text(body)

    doc = imds.get(DOC)
    if doc is not None:
        files["instance_identity_document"] = json_doc(doc)
        files["region"] = json_field(doc, "region")
        files["account_id"] = json_field(doc, "accountId")

    info = imds.get(IAM_INFO)
    if info is not None:
        files["iam_info"] = json_doc(info)
        files["instance_profile_arn"] = json_field(info, "InstanceProfileArn")
        files["instance_profile_id"] = json_field(info, "InstanceProfileId")
        files["instance_profile_name"] = json_field(info, "InstanceProfileArn",
                                                    last_part=True)

    roles = [r for r in lines(imds.get(IAM_CREDS)) if valid_name(r)]
    if roles:
        creds = imds.get(IAM_CREDS + roles[0])
        if creds is not None:
            files["iam_security_credentials"] = json_doc(creds)

    spot = imds.get(SPOT)
    if spot is not None:
        dirs.add("spot_instance_action")
        files["spot_instance_action/action"] = json_field(spot, "action")
        files["spot_instance_action/time"] = json_field(spot, "time")

    user_data = imds.get("user-data")
    if user_data is not None:
        files["user_data"] = user_data

    tag_listing = imds.get(TAGS)
    if tag_listing is not None:
        dirs.add("tags")
        for key in lines(tag_listing):
            if not valid_name(key):
                continue
            value = imds.get(TAGS + key)
            if value is not None:
                files["tags/" + key] = text(value)

    for line in lines(imds.get(KEYS)):
        index, eq, name = line.partition("=")
        if not eq or not valid_name(name) or not valid_name(index):
            continue
        dirs.add("public_keys/" + name)
        key = imds.get(KEYS + index + "/openssh-key")
        if key is not None:
            files["public_keys/%s/openssh_key" % name] = text(key)

    for line in lines(imds.get(MACS)):
        mac = line[:-1] if line.endswith("/") else line
        if not valid_name(mac):
            continue
        base = "network/interfaces/" + mac
        src = MACS + mac + "/"
        dirs.add(base)
        dirs.add(base + "/ipv4_associations")
        for name, (sub, empty_on_404) in INTERFACE.items():
            body = imds.get(src + sub)
            if body is None and empty_on_404:
                body = b""
            if body is not None:
                files[base + "/" + name] = text(body)
        for ip in lines(imds.get(src + "public-ipv4s")):
            if not valid_name(ip):
                continue
            assoc = imds.get(src + "ipv4-associations/" + ip)
            if assoc is not None:
                files[base + "/ipv4_associations/" + ip] = text(assoc)

    return files, dirs
