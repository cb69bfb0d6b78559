#!/usr/bin/env bash
# capsa's main job in one command: run a busybox container in its own VM, as podman or
# containerd would have capsa run it, then delete it.
#
#   bash tools/run-container.sh [COMMAND [ARG...]]
#
# As root (capsa makes cgroups and mounts). Installs busybox-static if it is missing,
# builds capsa (release) and the guest kernel (guest-kernel/build.sh: once, ~8 min on 2
# cores, then cached in ~/.cache/capsa), builds an OCI bundle from Debian's busybox-static
# (tools/busybox-bundle.sh, no registry; COMMAND defaults to a greeting), runs it with
# `capsa run` in the foreground and exits with the container's status.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "run-container: $*" >&2; exit 1; }

((EUID == 0)) || die "run me as root: capsa creates cgroups and mounts"
if [[ $(dpkg-query -W -f='${Status}' busybox-static 2>/dev/null) != "install ok installed" ]]; then
	echo "run-container: installing busybox-static" >&2
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >&2
fi

cargo build --release >&2
capsa=$PWD/target/x86_64-unknown-linux-gnu/release/capsa
kernel=$(bash guest-kernel/build.sh | tail -1)
[[ -f $kernel ]] || die "guest-kernel/build.sh gave no kernel"

work=$(mktemp -d)
id=capsa-demo-$$
# A private state root, so nothing else's containers are touched; delete --force also
# cleans up after an interrupted run.
cleanup() {
	"$capsa" --root "$work/state" delete --force "$id" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
bash tools/busybox-bundle.sh "$work/bundle" "$@" >/dev/null

status=0
"$capsa" --root "$work/state" run --bundle "$work/bundle" --kernel "$kernel" "$id" || status=$?
exit "$status"
