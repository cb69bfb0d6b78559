#!/usr/bin/env bash
# Runs every cargo-fuzz target of the devices crate for SECONDS each (default 60) and fails
# if any of them finds a crash, a hang (> 10 s for one input) or an out-of-memory.
#
#   bash devices/fuzz/run-all.sh [SECONDS]
#
# Stable toolchain, no sanitizer (`-s none`) by default; FUZZ_ASAN=1 builds with
# AddressSanitizer instead (needs RUSTC_BOOTSTRAP, set here). Each target's libFuzzer log
# goes to target/fuzz-logs/<target>.log; its last lines are printed when it fails.
set -euo pipefail
secs=${1:-60}
cd "$(dirname "$0")"
export PATH="$HOME/.cargo/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

sanitizer=(-s none)
if [[ ${FUZZ_ASAN:-0} == 1 ]]; then
    export RUSTC_BOOTSTRAP=1
    sanitizer=(-s address)
fi

# The harness and its seeds: the committed corpus must still encode what it claims.
cargo fmt --check
cargo test --quiet --lib

cargo fuzz build "${sanitizer[@]}"
mkdir -p target/fuzz-logs
failed=()
passed=0
for t in $(cargo fuzz list); do
    log=target/fuzz-logs/$t.log
    echo "fuzzing $t for ${secs}s" >&2
    # The committed seeds live in corpus/$t; libFuzzer adds what it finds there too
    # (ignored by git).
    if cargo fuzz run "${sanitizer[@]}" "$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
        -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | sed "s/^/$t: /" >&2 || true
        grep -E '^stat::(number_of_executed_units|average_exec_per_sec)' "$log" |
            sed "s/^/$t: /" >&2 || true
        passed=$((passed + 1))
    else
        echo "FAILED: $t (log: devices/fuzz/$log)" >&2
        tail -n 60 "$log" >&2
        failed+=("$t")
    fi
done

# One line per target run, in the plain "N passed, N failed" form CI logs understand.
echo "fuzz: $passed passed, ${#failed[@]} failed"
if ((${#failed[@]})); then
    echo "fuzz targets with findings: ${failed[*]} (inputs under devices/fuzz/artifacts/)" >&2
    exit 1
fi
