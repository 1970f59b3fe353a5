#!/usr/bin/python3
"""Convert amazon-ec2-metadata-mock's default values into imds-mock data.

Input: AEMM's pkg/config/defaults/aemm-metadata-default-values.json (sections
"metadata", "dynamic", "userdata", each with "paths" key -> IMDS path and
"values" key -> value). Output: an imds-mock data file (tests/data/README.md).

    tests/data/convert-aemm.py aemm-default-values.json > tests/data/aemm.json

Rules: a key with no value (or a null one) is skipped; a JSON object or list
value becomes {"json": ...}; "userdata" is base64 and becomes {"base64": ...}.
AEMM also gives some directories a value (iam/security-credentials holds the
role name): such a path is a directory here, and its value becomes a listing
override only if it differs from the listing the mock would generate.
Notes on what was skipped go to stderr. Standard library only.
"""

import json
import sys

PREFIX = "/latest/"
PUBLIC_KEYS_LISTING = "0=my-public-key"


def generated_listing(files, d):
    names = set()
    for p in files:
        if p.startswith(d) and len(p) > len(d):
            head, sep, _ = p[len(d):].partition("/")
            names.add(head + sep)
    return "\n".join(sorted(names))


def convert(aemm):
    files, listings, notes = {}, {}, []
    for section in ("metadata", "dynamic", "userdata"):
        paths = aemm[section]["paths"]
        values = aemm[section]["values"]
        for key, path in paths.items():
            if not path.startswith(PREFIX):
                raise SystemExit(f"{key}: path {path!r} is not under {PREFIX}")
            rel = path[len(PREFIX):]
            value = values.get(key)
            if value is None:
                notes.append(f"skipped {key} ({rel}): no value")
                continue
            if key == "userdata":
                value = {"base64": value}
            elif isinstance(value, (dict, list)):
                value = {"json": value}
            elif not isinstance(value, str):
                raise SystemExit(f"{key}: unexpected value type "
                                 f"{type(value).__name__}")
            files[rel] = value
        for key in sorted(set(values) - set(paths)):
            notes.append(f"skipped {key}: a value with no path")

    for rel in sorted(files):
        if not any(p.startswith(rel + "/") for p in files):
            continue
        value = files.pop(rel)
        d = rel + "/"
        if value != generated_listing(files, d):
            listings[d] = value
            notes.append(f"{rel}: a directory; its value is a listing override")
        else:
            notes.append(f"{rel}: a directory; its value equals the "
                         "generated listing, dropped")

    if any(p.startswith("meta-data/public-keys/") for p in files):
        listings["meta-data/public-keys/"] = PUBLIC_KEYS_LISTING

    doc = {
        "description": "AWS amazon-ec2-metadata-mock default instance "
                       "(aemm-metadata-default-values.json, Apache-2.0), "
                       "converted by tests/data/convert-aemm.py: IAM role, "
                       "one interface, two tags, no spot action.",
        "files": dict(sorted(files.items())),
        "listings": dict(sorted(listings.items())),
    }
    return doc, notes


def main(argv):
    if len(argv) != 1:
        print("usage: convert-aemm.py AEMM_DEFAULT_VALUES_JSON > aemm.json",
              file=sys.stderr)
        return 2
    with open(argv[0], "rb") as f:
        doc, notes = convert(json.load(f))
    for note in notes:
        print(f"convert-aemm: {note}", file=sys.stderr)
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
