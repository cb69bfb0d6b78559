#!/usr/bin/env bash
# Build an OCI bundle with a busybox root filesystem, from Debian's busybox-static, with
# no container registry:
#
#   bash tools/busybox-bundle.sh DIR [--tty] [COMMAND [ARG...]]
#
# DIR/rootfs gets /bin/busybox and a symlink per applet, /etc/passwd and /etc/group, and
# the usual mount points; DIR/config.json runs COMMAND (default: a greeting) as root with
# runc's default mounts, namespaces and capabilities. --tty sets process.terminal.
# Prints DIR. Needs busybox-static (apt-get install busybox-static).
set -euo pipefail

die() { echo "busybox-bundle: $*" >&2; exit 1; }

(($#)) || die "usage: $0 DIR [--tty] [COMMAND [ARG...]]"
dir=$1
shift
terminal=false
if [[ ${1:-} == --tty ]]; then
	terminal=true
	shift
fi
if (($#)); then
	args=("$@")
else
	args=(sh -c 'echo "hello from a capsa container: $(uname -sr) on $(hostname)"')
fi

busybox=/bin/busybox
[[ -x $busybox ]] || die "$busybox missing: apt-get install busybox-static"
file_out=$(LC_ALL=C od -An -c -N4 "$busybox" | tr -d ' ')
[[ $file_out == 177ELF ]] || die "$busybox is not an ELF binary"

rootfs=$dir/rootfs
mkdir -p "$rootfs"/{bin,dev,etc,proc,sys,tmp,root,run,var/tmp}
chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
cp "$busybox" "$rootfs/bin/busybox"
while read -r applet; do
	[[ -n $applet && $applet != busybox ]] || continue
	ln -sf busybox "$rootfs/bin/$applet"
done < <("$busybox" --list)
mkdir -p "$rootfs/usr"
ln -sfn ../bin "$rootfs/usr/bin"
ln -sfn ../bin "$rootfs/sbin"
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' >"$rootfs/etc/group"
: >"$rootfs/etc/hosts"
: >"$rootfs/etc/resolv.conf"

# JSON string array of the command, escaping backslashes and quotes.
json_args=""
for a in "${args[@]}"; do
	a=${a//\\/\\\\}
	a=${a//\"/\\\"}
	json_args+="${json_args:+, }\"$a\""
done

caps='"CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_SYS_CHROOT", "CAP_MKNOD"'
cat >"$dir/config.json" <<EOF
{
  "ociVersion": "1.2.0",
  "process": {
    "terminal": $terminal,
    "user": {"uid": 0, "gid": 0},
    "args": [$json_args],
    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm", "HOME=/root"],
    "cwd": "/",
    "capabilities": {
      "bounding": [$caps], "effective": [$caps], "permitted": [$caps]
    },
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    "noNewPrivileges": true
  },
  "root": {"path": "rootfs", "readonly": false},
  "hostname": "capsa",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}
  ],
  "linux": {
    "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
    "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
  }
}
EOF
echo "$dir"
