#!/usr/bin/env bash
# Boot the guest kernel under `capsa vm run` with a tiny initramfs whose /init
# (syscall-init.c, static) exercises system calls, signals and restarts, then
# reboots. Passes if /init reports "0 failures".
#
#   bash guest-kernel/tests/boot-smoke.sh [path/to/capsa]
#
# Env: CAPSA_BOOT_TIMEOUT (seconds, default 600), CAPSA_BOOT_MEM_MIB (128),
#      CAPSA_BOOT_EXTRA (extra kernel parameters), CAPSA_BOOT_BUSYBOX=0 to leave
#      busybox out of the initramfs.
# Slow on kvm_pvm hosts (guest kernel code is emulated): 15-30 s on an idle
# machine, several times that when the machine is busy.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
capsa=${1:-$repo/target/debug/capsa}
[[ -x $capsa ]] || { echo "boot-smoke: no capsa binary at $capsa" >&2; exit 2; }

kernel=$(bash "$here/../build.sh" | tail -n 1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/root/proc" "$work/root/dev" "$work/root/bin"
gcc -static -O2 -o "$work/root/init" "$here/syscall-init.c"
if [[ ${CAPSA_BOOT_BUSYBOX:-1} == 1 && -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1; then
	cp /bin/busybox "$work/root/bin/busybox"
	for app in sh uname cat grep echo; do ln -s busybox "$work/root/bin/$app"; done
fi
# Uncompressed: unpacking gzip costs tens of seconds of emulated kernel time on kvm_pvm.
(cd "$work/root" && find . | cpio -o -H newc --quiet >"$work/initrd.cpio")

cmdline="console=ttyS0 reboot=k panic=1 quiet tsc=reliable no_timer_check noreplace-smp"
if [[ -d /sys/module/kvm_pvm ]]; then
	cmdline+=" capsa.pvm=1 rodata=off percpu_alloc=page mitigations=off noxsave"
	cmdline+=" clearcpuid=smap,popcnt,fsgsbase,rdrand,rdseed,rdpid,pku,avx,avx2,erms,fsrm"
fi
cmdline+=" ${CAPSA_BOOT_EXTRA:-}"

start=$SECONDS
set +e
timeout "${CAPSA_BOOT_TIMEOUT:-600}" "$capsa" vm run --kernel "$kernel" --initrd "$work/initrd.cpio" \
	--mem-mib "${CAPSA_BOOT_MEM_MIB:-128}" --cmdline "$cmdline" --serial stdio | tee "$work/console.log"
rc=${PIPESTATUS[0]}
set -e
echo "boot-smoke: capsa exited $rc after $((SECONDS - start)) s" >&2
if grep -q '^capsa-init: 0 failures' "$work/console.log"; then
	echo "boot-smoke: 1 passed, 0 failed"
	exit 0
fi
echo "boot-smoke: 0 passed, 1 failed"
exit 1
