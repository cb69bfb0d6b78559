#!/usr/bin/env bash
# Build capsa's x86_64 guest kernel from Debian's linux-source-6.1 package.
#
#   bash guest-kernel/build.sh
#
# Prints the path of the built vmlinux as the last line on stdout; everything
# else goes to stderr.  Results are cached under
#   ${CAPSA_CACHE:-$HOME/.cache/capsa}/kernel/<key>/vmlinux
# where <key> is the sha256 of config.fragment, patches/*.patch, this script
# and the installed linux-source-6.1 version.  A warm cache answers at once.
#
# Environment:
#   CAPSA_CACHE              cache root (default $HOME/.cache/capsa)
#   CAPSA_KERNEL_JOBS        make -j value (default: nproc)
#   CAPSA_KERNEL_KEEP_TREE=1 keep the unpacked, built source tree afterwards
#   CAPSA_KERNEL_VERBOSE=1   show make's full output instead of a progress line
#                            every 100 objects
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
fragment=$here/config.fragment
patch_dir=$here/patches
src_pkg=linux-source-6.1
src_tarball=/usr/src/linux-source-6.1.tar.xz
cache_root=${CAPSA_CACHE:-$HOME/.cache/capsa}/kernel

log() { printf 'guest-kernel: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

pkg_installed() {
	[[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

# apt-get install whichever of the given packages are missing.
ensure_packages() {
	local missing=() p
	for p in "$@"; do
		pkg_installed "$p" || missing+=("$p")
	done
	((${#missing[@]})) || return 0
	log "installing ${missing[*]} with apt-get"
	local sudo=()
	if ((EUID != 0)); then
		command -v sudo >/dev/null || die "need root (or sudo) to install: ${missing[*]}"
		sudo=(sudo)
	fi
	export DEBIAN_FRONTEND=noninteractive
	"${sudo[@]}" apt-get update -qq >&2 || die "apt-get update failed"
	"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
		die "apt-get install ${missing[*]} failed"
}

shopt -s nullglob
patches=("$patch_dir"/*.patch)
shopt -u nullglob
[[ -f $fragment ]] || die "missing $fragment"
((${#patches[@]})) || die "no patches in $patch_dir"

# --- Cache key (needs the source package's version) ---------------------------
ensure_packages "$src_pkg"
src_version=$(dpkg-query -W -f='${Version}' "$src_pkg")
key=$(
	{
		printf 'source %s %s\n' "$src_pkg" "$src_version"
		printf '== config.fragment\n'; cat "$fragment"
		for p in "${patches[@]}"; do printf '== patches/%s\n' "${p##*/}"; cat "$p"; done
		printf '== build.sh\n'; cat "${BASH_SOURCE[0]}"
	} | sha256sum | cut -d' ' -f1
)
out=$cache_root/$key
if [[ -f $out/vmlinux ]]; then
	echo "$out/vmlinux"
	exit 0
fi

# --- Cold cache: build -------------------------------------------------------------
mkdir -p "$cache_root"
# One builder per key; a concurrent run waits, then finds the result.
exec 9>"$cache_root/.lock-$key"
if ! flock -n 9; then
	log "another build of $key is running; waiting for it"
	flock 9
fi
if [[ -f $out/vmlinux ]]; then
	echo "$out/vmlinux"
	exit 0
fi

ensure_packages build-essential patch flex bison bc libelf-dev libssl-dev cpio xz-utils
[[ -f $src_tarball ]] || die "$src_tarball missing although $src_pkg is installed"

start=$SECONDS
work=$cache_root/build/$key
tree=$work/linux
log "building the guest kernel ($src_pkg $src_version) in $tree"
rm -rf "$work"
mkdir -p "$tree"

log "unpacking $src_tarball"
tar -xf "$src_tarball" -C "$tree" --strip-components=1

for p in "${patches[@]}"; do
	log "applying ${p##*/}"
	if ! patch -d "$tree" -p1 --batch --forward --fuzz=0 --quiet <"$p" >&2; then
		die "patch ${p##*/} does not apply to $src_pkg $src_version"
	fi
done

export ARCH=x86_64 KBUILD_BUILD_USER=capsa KBUILD_BUILD_HOST=capsa
cd "$tree"

log "configuring: tinyconfig + config.fragment"
make -s tinyconfig >"$work/tinyconfig.log" 2>&1 || { cat "$work/tinyconfig.log" >&2; die "make tinyconfig failed"; }
scripts/kconfig/merge_config.sh -n .config "$fragment" >"$work/merge_config.log" 2>&1 ||
	{ cat "$work/merge_config.log" >&2; die "merge_config.sh failed"; }

# Every line of the fragment must hold in the final .config: a dependency
# that is missing from the fragment silently drops the option otherwise.
bad=()
while IFS= read -r line; do
	if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
		grep -qxF -- "$line" .config ||
			bad+=("$line (got: $(grep -E "^(# )?${BASH_REMATCH[1]}[= ]" .config || echo unset))")
	elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
		! grep -q "^${BASH_REMATCH[1]}=" .config ||
			bad+=("$line (got: $(grep "^${BASH_REMATCH[1]}=" .config))")
	fi
done <"$fragment"
if ((${#bad[@]})); then
	log "these config.fragment options did not end up in .config as asked:"
	printf '  %s\n' "${bad[@]}" >&2
	die "config check failed (work tree kept in $tree)"
fi
log "config ok: $(grep -c '=y$' .config) options built in"

jobs=${CAPSA_KERNEL_JOBS:-$(nproc)}
log "make -j$jobs vmlinux (full log: $work/build.log)"
progress='
	/^  [A-Z][A-Z0-9_]* +/ {
		if ($1 == "CC" || $1 == "AS") { n++; if (n % 100 == 0) printf "guest-kernel:   %d objects compiled\n", n; fflush() }
		next
	}
	{ print; fflush() }'
if [[ ${CAPSA_KERNEL_VERBOSE:-0} == 1 ]]; then
	progress='{ print; fflush() }'
fi
if ! make -j"$jobs" vmlinux 2>&1 | tee "$work/build.log" | awk "$progress" >&2; then
	log "last lines of $work/build.log:"
	tail -n 30 "$work/build.log" >&2
	die "kernel build failed (work tree kept in $tree)"
fi

# The patches must really be in the binary.
for sym in capsa_pvm capsa_pvm_syscall; do
	grep -q " $sym\$" System.map || die "symbol $sym missing from System.map: patches not built in?"
done

# Install: vmlinux last, each file written under a temporary name then renamed.
mkdir -p "$out"
for f in .config:config System.map:System.map vmlinux:vmlinux; do
	cp "${f%%:*}" "$out/${f#*:}.tmp.$$"
	mv -f "$out/${f#*:}.tmp.$$" "$out/${f#*:}"
done
cd /
if [[ ${CAPSA_KERNEL_KEEP_TREE:-0} == 1 ]]; then
	log "source tree kept in $tree"
else
	rm -rf "$work"
fi
log "built in $((SECONDS - start)) s"
echo "$out/vmlinux"
