#!/usr/bin/env bash
# capsa's whole test suite: formatting, lints, unit and integration tests on the real
# /dev/kvm. This is the README's test command and what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "environment"
uname -r >&2
ls -l /dev/kvm >&2 || { echo "capsa tests need /dev/kvm" >&2; exit 1; }
cargo --version >&2

step "packages the tests use (Debian)"
need=()
# podman, conmon, containerd, fuse-overlayfs: the OCI client tests (tests/oci_clients.rs).
for p in busybox-static podman conmon containerd fuse-overlayfs; do
	[[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || need+=("$p")
done
if ((${#need[@]})); then
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi

step "guest kernel (guest-kernel/build.sh, cached in ~/.cache/capsa)"
bash guest-kernel/build.sh >&2

step "cargo fmt --check"
cargo fmt --all -- --check
(cd tools/probe-guest && cargo fmt -- --check)

step "cargo clippy"
cargo clippy --all-targets -- -D warnings
(cd tools/probe-guest && cargo clippy --release -- -D warnings)

step "cargo test"
cargo test --workspace -- --test-threads=2

step "the README's main job (tools/run-container.sh)"
out=$(bash tools/run-container.sh)
[[ $out == "hello from a capsa container: Linux "*" on capsa" ]] || {
	echo "tools/run-container.sh printed: $out" >&2
	exit 1
}

step "fuzz targets, 20 s each (devices/fuzz/README.md)"
bash devices/fuzz/run-all.sh 20
