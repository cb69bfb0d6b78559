#!/usr/bin/env bash
# Re-derives what capsa's threads call once their seccomp filter is installed, and compares
# it with the allow-lists in seccomp/src/rules.rs. See seccomp/README.md.
#
#   seccomp/derive.sh [--release] [--tests] [--test NAME]... [--oci] [--keep]
#
# Default: builds capsa and runs every probe-guest scenario (disks, shares and vsock
# included) under `strace -f` with `--seccomp-level 1` (log), so nothing is killed and
# every call shows.
# --tests: runs the integration tests under strace instead (filters at their default,
#          kill: a missing entry shows as a thread killed by SIGSYS, reported below).
#          Their host sides drive more device paths (vsock connections both ways).
# --test NAME: only that integration test target (implies --tests; repeatable).
# --oci: an OCI pod on the real guest (CAPSA_SECCOMP_LEVEL=1, as root): a sandbox
#        container owning the VM (create, start, state, a signal to its host process,
#        kill through the control socket) and a member with a terminal handed to a
#        console socket; covers the shim's worker, signal and VMM threads.
# --release: the release binary (glibc and std paths differ a little from debug).
# --keep: keep the strace files (their directory is printed).
#
# Needs strace and /dev/kvm. Honours CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=debug
tests=0
oci=0
keep=0
only=()
while [ $# -gt 0 ]; do
    case "$1" in
    --release) profile=release ;;
    --tests) tests=1 ;;
    --test)
        tests=1
        only+=(--test "$2")
        shift
        ;;
    --oci) oci=1 ;;
    --keep) keep=1 ;;
    *)
        echo "usage: $0 [--release] [--tests] [--test NAME]... [--oci] [--keep]" >&2
        exit 2
        ;;
    esac
    shift
done
[ ${#only[@]} -gt 0 ] || only=(--tests)
command -v strace >/dev/null || {
    echo "strace is needed (apt-get install strace)" >&2
    exit 1
}

target_dir=${CARGO_TARGET_DIR:-target}
flags=()
[ "$profile" = release ] && flags=(--release)
cargo build -q -p runtime "${flags[@]}"
capsa="$target_dir/x86_64-unknown-linux-gnu/$profile/capsa"
out=$(mktemp -d /tmp/capsa-seccomp.XXXXXX)
[ "$keep" = 1 ] || trap 'rm -rf "$out"' EXIT

# One traced run of `capsa vm run --seccomp-level 1 ARGS...`, named NAME.
run() {
    local name=$1
    shift
    strace -f -ff -qq -o "$out/$name" "$capsa" vm run --seccomp-level 1 "$@" || true
}

if [ "$oci" = 1 ]; then
    kernel=$(bash guest-kernel/build.sh | tail -1)
    root="$out/oci-root"
    pod="$out/pod-bundle"
    member="$out/member-bundle"
    bash tools/busybox-bundle.sh "$pod" sh -c 'trap "exit 3" USR1; echo pod-up; sleep 100000 & wait' >/dev/null
    bash tools/busybox-bundle.sh "$member" --tty sh -c 'tty; read line; echo got-$line' >/dev/null
    python3 - "$pod/config.json" sandbox "$member/config.json" container <<'PY'
import json, sys
for path, kind in zip(sys.argv[1::2], sys.argv[2::2]):
    c = json.load(open(path))
    c["annotations"] = {"io.kubernetes.cri.container-type": kind,
                        "io.kubernetes.cri.sandbox-id": "pod"}
    json.dump(c, open(path, "w"))
PY
    oci() { CAPSA_SECCOMP_LEVEL=1 strace -f -ff -qq -o "$out/oci" "$capsa" --root "$root" --kernel "$kernel" "$@"; }
    # created: waits for `create` to write the pid file (strace itself lasts as long as
    # the traced host process).
    created() {
        for _ in $(seq 900); do [ -s "$1" ] && return 0; sleep 1; done
        echo "(create: no pid file $1)" >&2
    }
    oci create --bundle "$pod" --pid-file "$out/pod.pid" pod </dev/null >"$out/pod.out" 2>&1 &
    created "$out/pod.pid"
    oci start pod || true
    oci state pod >/dev/null || true
    for _ in $(seq 600); do grep -q pod-up "$out/pod.out" && break; sleep 1; done
    # A console socket that answers the member's terminal with a line.
    python3 - "$out/console.sock" <<'PY' &
import array, os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(1)
c, _ = s.accept()
fds = array.array("i")
msg, anc, _, _ = c.recvmsg(256, socket.CMSG_LEN(4))
fds.frombytes(anc[0][2][:4])
m = fds[0]
time.sleep(5)
os.write(m, b"ping\r")
end = time.time() + 600
buf = b""
while b"got-ping" not in buf and time.time() < end:
    buf += os.read(m, 4096)
PY
    console=$!
    sleep 1
    oci create --bundle "$member" --console-socket "$out/console.sock" --pid-file "$out/member.pid" member </dev/null >/dev/null 2>&1 &
    created "$out/member.pid"
    oci start member || true
    wait "$console" || true
    # A forwarded signal (the pod's trap exits 3), then kill via the control socket.
    kill -USR1 "$(cat "$out/pod.pid")" 2>/dev/null || true
    for _ in $(seq 120); do kill -0 "$(cat "$out/pod.pid")" 2>/dev/null || break; sleep 1; done
    oci kill pod KILL >/dev/null 2>&1 || true
    oci delete --force member >/dev/null 2>&1 || true
    oci delete --force pod >/dev/null 2>&1 || true
    wait
elif [ "$tests" = 1 ]; then
    strace -f -ff -qq -o "$out/tests" cargo test -q -p runtime "${only[@]}" "${flags[@]}" \
        -- --test-threads=1 >"$out/cargo-test.log" 2>&1 || echo "(some tests failed: $out/cargo-test.log)" >&2
else
    disk="$out/disk.img"
    truncate -s 8M "$disk"
    p="console=ttyS0 probe"
    run hello --cmdline "$p=hello" </dev/null >/dev/null 2>&1
    run smp --vcpus 4 --cmdline "$p=smp" </dev/null >/dev/null 2>&1
    run mem --mem-mib 4096 --cmdline "$p=mem" </dev/null >/dev/null 2>&1
    run cpuid --vcpus 2 --cmdline "$p=cpuid" </dev/null >/dev/null 2>&1
    run cmdline --cmdline "$p=cmdline a=b" </dev/null >/dev/null 2>&1
    run serialfile --serial "$out/console.log" --cmdline "$p=hello" </dev/null >/dev/null 2>&1
    run fault --log-level debug --cmdline "$p=fault" </dev/null >/dev/null 2>&1
    head -c 300 /dev/urandom | base64 -w 160 | run echo --cmdline "$p=echo" >/dev/null 2>&1
    # A disk the guest may or may not use (the blk scenario exercises I/O when present).
    run blk --disk "$disk" --disk "$disk,ro,id=ro" --cmdline "$p=blk" </dev/null >/dev/null 2>&1
    # A virtio-fs share (the fs scenario reads, writes, renames, links and tries escapes).
    mkdir -p "$out/share"
    head -c 100000 /dev/urandom >"$out/share/file"
    run fs --fs "share=$out/share" --cmdline "$p=fs fs.read=file" </dev/null >/dev/null 2>&1
    # vsock: the device comes up and is reset; connections need a host side (--tests).
    run vsock --vsock-cid 3 --vsock-uds "$out/v.sock" --cmdline "$p=vsock" </dev/null >/dev/null 2>&1
    # stdin on a terminal: raw mode is restored when the VM ends.
    if command -v script >/dev/null; then
        strace -f -ff -qq -o "$out/tty" script -qec \
            "$capsa vm run --seccomp-level 1 --cmdline '$p=hello'" /dev/null </dev/null >/dev/null 2>&1 || true
    fi
    # Stopped by a signal while both vCPUs spin in the guest.
    (
        strace -f -ff -qq -o "$out/spin" "$capsa" vm run --seccomp-level 1 --vcpus 2 \
            --cmdline "$p=spin" </dev/null >/dev/null 2>&1 &
        sleep 3
        pkill -TERM -P $! -x capsa 2>/dev/null || kill -TERM $! 2>/dev/null || true
        wait
    ) || true
fi

# Every per-thread trace that installed a filter, and every thread such a thread cloned
# afterwards (it inherits the filter): role, then each call made under the filter (with
# the argument that its rule checks, where there is one). Roles: a thread that installed
# two filters is a worker (clone3-ENOSYS filter, then the worker list: OCI shim threads);
# `capsa_vcpuN` threads are vCPUs; the rest the VMM thread.
observed="$out/observed"
# scan FILE ROLE ON [INSTALLS]: prints the calls made once the thread's last filter is on
# (or from the start with ON=1), and "CHILD TID" for each thread cloned under it.
scan() {
    awk -v role="$2" -v on="$3" -v file="$1" -v installs="${4:-1}" '
        /seccomp\(SECCOMP_SET_MODE_FILTER/ { if (++seen >= installs) on = 1; next }
        !on { next }
        /^\+\+\+ killed by SIGSYS/ { print "KILLED " role " " last " (" file ")"; next }
        /^clone3?\(/ && match($0, /= [0-9]+$/) { print "CHILD " substr($0, RSTART + 2) }
        match($0, /^[a-z0-9_]+\(/) {
            name = substr($0, 1, RLENGTH - 1)
            split(substr($0, RLENGTH + 1), a, ", ")
            detail = ""
            if (name == "ioctl" || name == "fcntl" || name == "futex") detail = a[2]
            else if (name == "madvise" || name == "tgkill" || name == "fallocate") detail = a[3]
            else if (name == "mmap") detail = a[3] " " a[4]
            else if (name == "mprotect") detail = a[3]
            else if (name == "clone") detail = a[2]
            sub(/\).*/, "", detail)
            sub(/^flags=/, "", detail)
            last = $0
            print role " " name (detail == "" ? "" : " [" detail "]")
        }
    ' "$1"
}
# walk FILE ROLE ON [INSTALLS]: scan, then the threads it cloned (same role, filtered
# from birth).
walk() {
    local f=$1 role=$2 on=$3 line
    scan "$f" "$role" "$on" "${4:-1}" | while read -r line; do
        case "$line" in
        CHILD\ *) [ -f "${f%.*}.${line#CHILD }" ] && walk "${f%.*}.${line#CHILD }" "$role" 1 ;;
        *) echo "$line" ;;
        esac
    done
}
for f in "$out"/*.[0-9]*; do
    installs=$(grep -c 'seccomp(SECCOMP_SET_MODE_FILTER' "$f" || true)
    [ "$installs" -gt 0 ] || continue
    if [ "$installs" -ge 2 ]; then
        role=worker
    elif grep -q 'PR_SET_NAME, "capsa_vcpu' "$f"; then
        role=vcpu
    else
        role=vmm
    fi
    walk "$f" "$role" 0 "$installs"
done | sort | uniq -c | sort -k2,3 >"$observed"

echo "== calls made after the filter was installed (count, thread, syscall [checked arg])"
grep -v KILLED "$observed" || true
if grep -q KILLED "$observed"; then
    echo
    echo "== threads killed by their filter (last call shown)"
    grep KILLED "$observed"
fi

allowed="$out/allowed"
cargo run -q -p seccomp --example allowlist -- --names block vsock fs | sort -u >"$allowed"
echo
echo "== called but not on the list (add to seccomp/src/rules.rs, with a reason)"
awk '!/KILLED/ { print $2 " " $3 }' "$observed" | sort -u | comm -23 - "$allowed" || true
echo
echo "== on the list but never called here (device paths not exercised, error paths,"
echo "   or candidates for removal)"
awk '!/KILLED/ { print $2 " " $3 }' "$observed" | sort -u | comm -13 - "$allowed" || true
if [ "$keep" = 1 ]; then echo; echo "strace files kept in $out"; fi
