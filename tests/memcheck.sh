#!/bin/bash
# Valgrind memcheck of the daemon: mount it (-f) against scripts/imds-mock,
# read every file of the tree (find -type f -exec cat), exercise rm, rm -r,
# failing fetches (503, 400, garbage JSON, oversize and broken bodies, a
# hanging request) and SIGHUP, then unmount. Fails on any memcheck error and
# on any byte definitely or indirectly lost.
#
# The caller provides a private network namespace, as for the pytest suite:
#   unshare --net -- bash -c 'ip link set lo up && tests/memcheck.sh [BINARY]'
# BINARY defaults to $IMDSFS_BINARY, then build/imdsfs. It must not be a
# sanitizer build (valgrind and ASan/TSan do not mix).
set -euo pipefail
cd "$(dirname "$0")/.."

binary=${1:-${IMDSFS_BINARY:-build/imdsfs}}
data=${MEMCHECK_DATA:-tests/data/rich.json}

die() {
	echo "memcheck: $*" >&2
	exit 2
}

# Only loopback: nothing the daemon does can leave the machine.
nets=$(awk 'NR > 2 { sub(":.*", "", $1); print $1 }' /proc/net/dev | sort | xargs)
[ "$nets" = lo ] || die "run inside 'unshare --net' (interfaces here: $nets)"
[ -x "$binary" ] || die "no binary at $binary (build first)"
command -v valgrind >/dev/null || die "valgrind is not installed (apt-get install valgrind)"
if grep -qaE '__asan_init|__tsan_init' "$binary" || ldd "$binary" | grep -qE 'lib[at]san'; then
	die "$binary is a sanitizer build; valgrind needs a plain one"
fi

tmp=$(mktemp -d /tmp/imdsfs-memcheck.XXXXXX)
mnt=$tmp/mnt
mkdir "$mnt"
mock_pid=
vg_pid=

cleanup() {
	# /proc/mounts, not mountpoint(1): a dead daemon's mount fails stat
	# with ENOTCONN and would be left behind.
	if grep -q " $mnt fuse" /proc/mounts; then
		fusermount3 -u -z "$mnt" 2>/dev/null || true
	fi
	[ -n "$vg_pid" ] && kill "$vg_pid" 2>/dev/null && wait "$vg_pid" 2>/dev/null
	[ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null && wait "$mock_pid" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT

/usr/bin/python3 scripts/imds-mock --data "$data" --host 127.0.0.1 --port 0 \
	--port-file "$tmp/port" >"$tmp/mock.log" 2>&1 &
mock_pid=$!
for _ in $(seq 200); do
	[ -s "$tmp/port" ] && break
	kill -0 "$mock_pid" 2>/dev/null || die "the mock did not start: $(cat "$tmp/mock.log")"
	sleep 0.05
done
[ -s "$tmp/port" ] || die "the mock did not start"
mock=http://127.0.0.1:$(cat "$tmp/port")

# Generous timeouts: valgrind makes the daemon 20-50 times slower.
valgrind --tool=memcheck --leak-check=full --show-leak-kinds=definite,indirect \
	--errors-for-leak-kinds=definite,indirect --error-exitcode=99 \
	--track-origins=yes --num-callers=40 --log-file="$tmp/valgrind.log" \
	"$binary" -f -o "endpoint=$mock,timeout=5000,retries=1" "$mnt" >"$tmp/imdsfs.log" 2>&1 &
vg_pid=$!
for _ in $(seq 600); do
	mountpoint -q "$mnt" && break
	kill -0 "$vg_pid" 2>/dev/null || break
	sleep 0.1
done
mountpoint -q "$mnt" || die "imdsfs did not mount under valgrind: $(cat "$tmp/imdsfs.log" "$tmp/valgrind.log")"

fault() { curl -sf --max-time 5 -X POST --data "$1" "$mock/_mock/faults" >/dev/null; }
clear_faults() { curl -sf --max-time 5 -X DELETE "$mock/_mock/faults" >/dev/null; }
status=0
step() {
	echo "== memcheck: $1"
}
run() { # a step that must succeed
	if ! "$@"; then
		echo "memcheck: failed: $*" >&2
		status=1
	fi
}
fails() { # path: reading it must fail (and must not take the daemon down)
	if timeout 60 cat "$mnt/$1" >/dev/null 2>&1; then
		echo "memcheck: reading $1 succeeded during a fault" >&2
		status=1
	fi
}
walk() {
	run timeout 900 find "$mnt" -type f -exec cat {} + >/dev/null
}

step "walk the whole tree"
walk
run timeout 300 ls -lR "$mnt" >/dev/null

step "rm, rm -r, and read again"
run rm "$mnt/region" "$mnt/instance_id"
run rm -r "$mnt/network/interfaces" "$mnt/tags" "$mnt/raw/meta-data/placement"
walk
run rm -rf "${mnt:?}"/*
walk

step "failing fetches"
# rm first: its lookup reads the file, which must happen before the fault.
run rm -f "$mnt/ami_id" "$mnt/instance_type" "$mnt/instance_identity_document" \
	"$mnt/mac" "$mnt/domain" "$mnt/iam_info" "$mnt/reservation_id"
run fault '{"path":"meta-data/ami-id","status":503}'
run fault '{"path":"meta-data/instance-type","status":400}'
run fault '{"path":"dynamic/instance-identity/document","action":"garbage"}'
run fault '{"path":"meta-data/mac","action":"oversize"}'
run fault '{"path":"meta-data/services/domain","action":"close_mid"}'
run fault '{"path":"meta-data/iam/info","action":"truncate"}'
run fault '{"path":"meta-data/reservation-id","action":"hang"}'
for f in ami_id instance_type instance_identity_document region mac domain iam_info reservation_id; do
	fails "$f"
done
run clear_faults
walk

step "no token"
run rm -f "$mnt/ami_id"
run fault '{"path":"api/token","status":503}'
run curl -sf --max-time 5 -X POST "$mock/_mock/tokens/expire" -o /dev/null
fails ami_id
run clear_faults
walk

step "SIGHUP"
run kill -HUP "$vg_pid"
sleep 2
walk

step "unmount"
fusermount3 -u "$mnt" || status=1
rc=0
wait "$vg_pid" || rc=$?
vg_pid=

echo "== memcheck: valgrind says:"
sed -n '/HEAP SUMMARY/,$p' "$tmp/valgrind.log" | sed 's/^==[0-9]*== //'
if [ $rc -ne 0 ]; then
	echo "memcheck: imdsfs exited $rc under valgrind (99: memcheck errors or leaks)" >&2
	grep -E -B2 -A25 "Invalid|uninitialised|definitely lost in|indirectly lost in|Mismatched|overlap" \
		"$tmp/valgrind.log" | sed 's/^==[0-9]*== //' | head -150 >&2 || true
	status=1
fi
if ! grep -qE "ERROR SUMMARY: 0 errors" "$tmp/valgrind.log"; then
	status=1
fi
for kind in definitely indirectly; do
	if grep -E "$kind lost: [1-9]" "$tmp/valgrind.log" >/dev/null; then
		echo "memcheck: $kind lost bytes" >&2
		status=1
	fi
done
if grep -E "AddressSanitizer|runtime error" "$tmp/imdsfs.log" >/dev/null; then
	status=1
fi

if [ $status -ne 0 ]; then
	echo "== memcheck: FAILED (daemon output follows)"
	grep -vE ": debug: " "$tmp/imdsfs.log" | tail -40
else
	echo "== memcheck: no error, no leak"
fi
exit $status
