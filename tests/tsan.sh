#!/bin/bash
# ThreadSanitizer: build imdsfs with -fsanitize=thread (clang by default) in
# build-tsan/, then run the concurrency tests against it: single flight,
# the token stampede, hanging requests next to cached readers, SIGHUP and
# rm during reads, and a short stress run. Any data race, lock-order
# inversion or other TSan report stops the daemon (halt_on_error=1) and
# fails the run; the pytest fixtures also fail a test whose daemon output
# mentions ThreadSanitizer.
#
#   tests/tsan.sh [pytest args]
#
# Environment: CC (first setup only, default clang), TSAN_BUILD (default
# build-tsan), IMDSFS_STRESS_SECONDS (default 10 here).
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${TSAN_BUILD:-build-tsan}
if [ -f "$dir/build.ninja" ]; then
	meson configure "$dir" -Db_sanitize=thread -Db_lundef=false >/dev/null
else
	CC=${CC:-clang} meson setup "$dir" -Db_sanitize=thread -Db_lundef=false \
		-Dbuildtype=debug --werror >/dev/null
fi
meson compile -C "$dir"

tests=(
	tests/integration/test_cache.py::test_single_flight_one_file
	tests/integration/test_cache.py::test_single_flight_shared_document
	tests/integration/test_cache.py::test_expired_token_many_readers_one_put
	tests/integration/test_cache.py::test_sighup_clears_everything
	tests/integration/test_cache.py::test_sighup_with_open_file
	tests/integration/test_cache.py::test_rm_rf_everything
	tests/integration/test_faults.py::test_hang_never_blocks_cached_readers
	tests/integration/test_faults.py::test_many_hanging_readers_never_block_cached_readers
	tests/integration/test_faults.py::test_rm_during_reads_keeps_memory_flat
	tests/integration/test_faults.py::test_stress_readers_rm_and_changes
)

export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1:exitcode=66}
export IMDSFS_STRESS_SECONDS=${IMDSFS_STRESS_SECONDS:-10}
echo "== TSan: ${#tests[@]} concurrency tests (stress ${IMDSFS_STRESS_SECONDS}s)"
IMDSFS_BINARY="$PWD/$dir/imdsfs" timeout 1800 unshare --net -- bash -c \
	'ip link set lo up && exec /usr/bin/python3 -m pytest -q -p no:cacheprovider "$@"' \
	pytest "${tests[@]}" "$@"
