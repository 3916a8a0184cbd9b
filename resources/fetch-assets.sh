#!/usr/bin/env bash
# Prepare every guest asset irvmm's tests and benchmarks use, under <repo>/target/guests/:
#
#   probe.elf            the freestanding probe guest (built by tests/probe-guest/build.sh)
#   bzImage              Debian's kernel as packaged (linux-image-amd64's current dependency)
#   vmlinux              the uncompressed ELF kernel from that bzImage (PVH entry note checked)
#   config               the kernel's build configuration, for reference
#   kernel-version       release=, package=, version= of that kernel (shell-sourceable)
#   initramfs.cpio.gz    busybox-static (Debian) + an /init that prints "IRVMM-INIT-OK cpus=N"
#   initramfs-disk.cpio.gz  busybox-static + that kernel's virtio, ext4 and pvpanic modules + an
#                        /init that loads them and switches to the root disk
#   rootfs.ext4          an ext4 root disk (made without root: mkfs.ext4 -d) with busybox, the
#                        same modules and an /sbin/init that prints "IRVMM-ROOT-OK", writes a file
#
# Only Debian's package registry is used (apt-get download; nothing else is downloaded).
# Missing host tools are installed with apt-get. Assets that are present and intact are reused.
# See resources/README.md.
set -euo pipefail

usage() {
	cat <<'EOF'
usage: resources/fetch-assets.sh [--force] [--only STEP[,STEP...]]...

  STEP is one of: probe, kernel, initramfs, disk (default: all four; disk needs the kernel's
  assets and fetches them first when they are missing)
  --force     rebuild the selected assets even if a valid cached copy exists
  --only      restrict to the given steps (repeatable, or comma-separated)
  -h, --help  this text

Outputs go to <repo>/target/guests/. Run as root (or with sudo available) on a fresh machine
so that missing tools can be installed and the apt lists fetched.
EOF
}

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd -P)
GUESTS="$REPO_ROOT/target/guests"
STAMPS="$GUESTS/.stamps"
PROBE_BUILD="$REPO_ROOT/tests/probe-guest/build.sh"
BZIMAGE_PY="$SCRIPT_DIR/bzimage.py"
INIT_SCRIPT="$SCRIPT_DIR/initramfs/init"
DISK_INIT="$SCRIPT_DIR/disk/init"
ROOTFS_INIT="$SCRIPT_DIR/disk/rootfs-init"

# Bump when the way an asset is produced changes, so cached copies are rebuilt.
KERNEL_RECIPE=1
INITRAMFS_RECIPE=1
DISK_RECIPE=1
# The kernel modules the root-disk initramfs loads (their dependencies, soft ones included, come
# from the kernel's own modules.dep/modules.softdep via modprobe --show-depends).
DISK_MODULES=(virtio_pci virtio_blk virtio_net virtio_console virtio-rng ext4 pvpanic-mmio pvpanic-pci)
ROOTFS_SIZE=64M
# Fixed timestamp for the initramfs members (reproducible archive).
ARCHIVE_EPOCH=${SOURCE_DATE_EPOCH:-1}

FORCE=0
STEPS=()
while [ $# -gt 0 ]; do
	case "$1" in
	--force) FORCE=1 ;;
	--only)
		[ $# -ge 2 ] || { usage >&2; exit 2; }
		IFS=, read -r -a more <<<"$2"
		STEPS+=("${more[@]}")
		shift
		;;
	--only=*)
		IFS=, read -r -a more <<<"${1#--only=}"
		STEPS+=("${more[@]}")
		;;
	-h | --help) usage; exit 0 ;;
	*) echo "fetch-assets: unknown argument: $1" >&2; usage >&2; exit 2 ;;
	esac
	shift
done
[ ${#STEPS[@]} -gt 0 ] || STEPS=(probe kernel initramfs disk)
for s in "${STEPS[@]}"; do
	case "$s" in
	probe | kernel | initramfs | disk) ;;
	*) echo "fetch-assets: unknown step '$s' (probe, kernel, initramfs, disk)" >&2; exit 2 ;;
	esac
done
want() {
	local s
	for s in "${STEPS[@]}"; do [ "$s" = "$1" ] && return 0; done
	return 1
}

log() { printf '[fetch-assets] %s\n' "$*" >&2; }
die() { printf '[fetch-assets] error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# apt helpers

SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
	SUDO=(sudo)
fi
APT_DOWNLOAD_OPTS=(-q)
# As root, apt-get download otherwise warns that the _apt sandbox user cannot write our directory.
if [ "$(id -u)" -eq 0 ]; then APT_DOWNLOAD_OPTS+=(-o APT::Sandbox::User=root); fi

as_root() {
	if [ "$(id -u)" -eq 0 ] || [ ${#SUDO[@]} -gt 0 ]; then
		"${SUDO[@]}" "$@"
	else
		die "need root to run: $*"
	fi
}

APT_UPDATED=0
apt_update() {
	[ "$APT_UPDATED" -eq 0 ] || return 0
	log "apt-get update"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get -q update >&2
	APT_UPDATED=1
}

apt_lists_present() {
	local LISTS=/var/lib/apt/lists/
	eval "$(apt-config shell LISTS Dir::State::lists/d 2>/dev/null || true)"
	compgen -G "${LISTS%/}/*_Packages*" >/dev/null
}

ensure_apt_lists() {
	command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this script expects Debian (12)"
	apt_lists_present || apt_update
}

# ensure_tools CMD:PACKAGE...  installs the packages whose command is missing.
ensure_tools() {
	local spec cmd pkg missing=()
	for spec in "$@"; do
		cmd=${spec%%:*} pkg=${spec#*:}
		command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
	done
	[ ${#missing[@]} -gt 0 ] || return 0
	log "installing missing host tools: ${missing[*]}"
	ensure_apt_lists
	if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends "${missing[@]}" >&2; then
		apt_update
		as_root env DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends "${missing[@]}" >&2
	fi
	for spec in "$@"; do
		cmd=${spec%%:*}
		command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is still missing after installing ${spec#*:}"
	done
}

# candidate_version PACKAGE: the version apt would install, empty if unknown.
candidate_version() {
	apt-cache policy "$1" 2>/dev/null | awk '$1 == "Candidate:" && $2 != "(none)" { print $2; exit }' || true
}

# kernel_package: the versioned image package linux-image-amd64 currently depends on.
kernel_package() {
	apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
		sed -n 's/^Depends: //p' | head -n1 | tr ',|' '\n' |
		grep -oE '^ *linux-image-[0-9][A-Za-z0-9.+~-]*' | tr -d ' ' | head -n1 || true
}

# fetch_deb PACKAGE VERSION DIR: apt-get download into DIR, print the .deb's path.
fetch_deb() {
	local pkg=$1 ver=$2 dir=$3 deb
	(cd "$dir" && apt-get "${APT_DOWNLOAD_OPTS[@]}" download "$pkg=$ver" >&2) || return 1
	deb=$(compgen -G "$dir/${pkg}_*.deb" | head -n1) || true
	[ -n "$deb" ] || return 1
	printf '%s\n' "$deb"
}

# ---------------------------------------------------------------------------------------------
# cache helpers: .stamps/NAME holds key=value facts, .stamps/NAME.sha256 the outputs' checksums.

stamp_get() { sed -n "s/^$2=//p" "$STAMPS/$1" 2>/dev/null | head -n1; }

stamp_valid() { # NAME RECIPE [extra key=value that must match]...
	local name=$1 recipe=$2 kv
	shift 2
	[ -f "$STAMPS/$name" ] && [ -f "$STAMPS/$name.sha256" ] || return 1
	[ "$(stamp_get "$name" recipe)" = "$recipe" ] || return 1
	for kv in "$@"; do
		[ "$(stamp_get "$name" "${kv%%=*}")" = "${kv#*=}" ] || return 1
	done
	(cd "$GUESTS" && sha256sum --quiet --status -c "$STAMPS/$name.sha256")
}

stamp_write() { # NAME FILES... (reads key=value lines on stdin)
	local name=$1
	shift
	cat >"$STAMPS/$name.tmp"
	(cd "$GUESTS" && sha256sum "$@") >"$STAMPS/$name.sha256"
	mv -f "$STAMPS/$name.tmp" "$STAMPS/$name"
}

TMPDIRS=()
cleanup() {
	local d
	for d in "${TMPDIRS[@]}"; do rm -rf -- "$d"; done
}
trap cleanup EXIT
new_tmp() {
	local d
	d=$(mktemp -d "$GUESTS/.tmp.$1.XXXXXX")
	TMPDIRS+=("$d")
	printf '%s\n' "$d"
}

elapsed() { echo "$((SECONDS - $1))s"; }

# ---------------------------------------------------------------------------------------------
# steps

step_probe() {
	local t0=$SECONDS
	[ -f "$PROBE_BUILD" ] || die "$PROBE_BUILD is missing: cannot build probe.elf"
	command -v cargo >/dev/null 2>&1 || die "probe: cargo (Rust toolchain) not found"
	ensure_tools objdump:binutils
	log "probe: running tests/probe-guest/build.sh"
	# Its stdout (the output path) goes to stderr: our stdout is the summary only.
	if [ -x "$PROBE_BUILD" ]; then "$PROBE_BUILD" >&2; else sh "$PROBE_BUILD" >&2; fi ||
		die "tests/probe-guest/build.sh failed"
	[ -f "$GUESTS/probe.elf" ] || die "tests/probe-guest/build.sh did not produce target/guests/probe.elf"
	[ "$(head -c4 "$GUESTS/probe.elf" | od -An -c | tr -d ' ')" = '177ELF' ] ||
		die "target/guests/probe.elf is not an ELF file"
	log "probe: ok ($(elapsed "$t0"))"
}

step_kernel() {
	local t0=$SECONDS pkg ver
	local files=(bzImage vmlinux config kernel-version)
	if [ "$FORCE" -eq 0 ] && stamp_valid kernel "$KERNEL_RECIPE"; then
		log "kernel: cached $(stamp_get kernel package) $(stamp_get kernel version) (--force refetches the current one)"
		return 0
	fi

	ensure_tools python3:python3 readelf:binutils xz:xz-utils zstd:zstd tar:tar dpkg-deb:dpkg
	ensure_apt_lists
	pkg=$(kernel_package)
	if [ -z "$pkg" ]; then
		apt_update
		pkg=$(kernel_package)
	fi
	[ -n "$pkg" ] || die "apt knows no linux-image-amd64 (check /etc/apt/sources.list*)"
	ver=$(candidate_version "$pkg")
	[ -n "$ver" ] || die "no installable version of $pkg"

	local tmp deb
	tmp=$(new_tmp kernel)
	log "kernel: downloading $pkg $ver"
	if ! deb=$(fetch_deb "$pkg" "$ver" "$tmp"); then
		# Stale lists can name a version the mirror no longer has: refresh once and retry.
		[ "$APT_UPDATED" -eq 0 ] || die "apt-get download $pkg=$ver failed"
		apt_update
		pkg=$(kernel_package)
		ver=$(candidate_version "$pkg")
		log "kernel: retrying with $pkg $ver"
		deb=$(fetch_deb "$pkg" "$ver" "$tmp") || die "apt-get download $pkg=$ver failed"
	fi

	# Only ./boot is needed (dpkg-deb -x would also write ~400 MB of modules).
	mkdir -p "$tmp/root"
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp/root" --wildcards './boot/*'
	local vmlinuz=() config=()
	mapfile -t vmlinuz < <(compgen -G "$tmp/root/boot/vmlinuz-*" || true)
	mapfile -t config < <(compgen -G "$tmp/root/boot/config-*" || true)
	[ ${#vmlinuz[@]} -eq 1 ] || die "$pkg: expected one boot/vmlinuz-*, found ${#vmlinuz[@]}"
	[ ${#config[@]} -eq 1 ] || die "$pkg: expected one boot/config-*, found ${#config[@]}"
	local release=${vmlinuz[0]##*/vmlinuz-}

	local compression
	compression=$(python3 "$BZIMAGE_PY" info "${vmlinuz[0]}" | sed -n 's/^compression=//p')
	case "$compression" in
	xz | lzma | zstd | gzip) ;;
	lz4) ensure_tools lz4:lz4 ;;
	bzip2) ensure_tools bzip2:bzip2 ;;
	lzo) ensure_tools lzop:lzop ;;
	*) die "cannot tell how ${vmlinuz[0]##*/} is compressed" ;;
	esac
	log "kernel: extracting vmlinux from ${vmlinuz[0]##*/} ($compression)"
	local facts
	facts=$(python3 "$BZIMAGE_PY" extract "${vmlinuz[0]}" "$tmp/vmlinux") || die "could not extract vmlinux"
	log "kernel: $facts"
	readelf -nW "$tmp/vmlinux" | grep -qE '^ *Xen[[:space:]].*(0x00000012|PHYS32_ENTRY)' ||
		die "readelf -n finds no Xen PHYS32_ENTRY (PVH) note in vmlinux"

	printf 'release=%s\npackage=%s\nversion=%s\n' "$release" "$pkg" "$ver" >"$tmp/kernel-version"
	cp "${vmlinuz[0]}" "$tmp/bzImage"
	cp "${config[0]}" "$tmp/config"
	rm -f "$STAMPS/kernel" "$STAMPS/kernel.sha256"
	local f
	for f in "${files[@]}"; do
		chmod 644 "$tmp/$f"
		mv -f "$tmp/$f" "$GUESTS/$f"
	done
	printf 'recipe=%s\npackage=%s\nversion=%s\nrelease=%s\ncompression=%s\n' \
		"$KERNEL_RECIPE" "$pkg" "$ver" "$release" "$compression" | stamp_write kernel "${files[@]}"
	log "kernel: ok, $pkg $ver ($(elapsed "$t0"))"
}

# fetch_busybox DIR STEP: downloads Debian's busybox-static into DIR and unpacks it there
# (DIR/pkg/bin/busybox); sets BUSYBOX_VERSION.
BUSYBOX_VERSION=
fetch_busybox() {
	local dir=$1 step=$2 ver deb
	ver=$(candidate_version busybox-static)
	if [ -z "$ver" ]; then
		apt_update
		ver=$(candidate_version busybox-static)
	fi
	[ -n "$ver" ] || die "apt knows no busybox-static"
	log "$step: downloading busybox-static $ver"
	if ! deb=$(fetch_deb busybox-static "$ver" "$dir"); then
		[ "$APT_UPDATED" -eq 0 ] || die "apt-get download busybox-static=$ver failed"
		apt_update
		ver=$(candidate_version busybox-static)
		deb=$(fetch_deb busybox-static "$ver" "$dir") || die "apt-get download busybox-static=$ver failed"
	fi
	mkdir -p "$dir/pkg"
	dpkg-deb -x "$deb" "$dir/pkg"
	[ -f "$dir/pkg/bin/busybox" ] || die "busybox-static $ver has no bin/busybox"
	BUSYBOX_VERSION=$ver
}

# busybox_tree ROOT BUSYBOX STEP: installs BUSYBOX as ROOT/bin/busybox with one symlink per
# applet, at the path busybox itself names (it is static: it runs here too). Paths that already
# exist in ROOT (an /sbin/init script, say) are kept.
busybox_tree() {
	local root=$1 busybox=$2 step=$3 applets=() a
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,etc,tmp,root,run}
	install -m 755 "$busybox" "$root/bin/busybox"
	mapfile -t applets < <("$root/bin/busybox" --list-full 2>/dev/null || true)
	if [ ${#applets[@]} -lt 10 ]; then
		log "$step: cannot run busybox here, linking a minimal applet set"
		applets=(bin/sh bin/mount bin/umount bin/cat bin/echo bin/grep bin/ls bin/dmesg bin/sleep
			bin/uname bin/mkdir sbin/poweroff sbin/reboot sbin/halt usr/bin/setsid bin/cttyhack
			sbin/insmod sbin/modprobe sbin/switch_root sbin/ip bin/ping bin/sync usr/bin/awk
			usr/bin/cut usr/bin/sort usr/bin/tr bin/cp bin/mv bin/rm)
	fi
	for a in "${applets[@]}"; do
		a=${a#/}
		if [ "$a" = bin/busybox ] || [ -e "$root/$a" ]; then continue; fi
		mkdir -p "$root/$(dirname "$a")"
		ln -s /bin/busybox "$root/$a"
	done
	for a in bin/sh bin/mount bin/cat bin/grep sbin/poweroff; do
		[ -L "$root/$a" ] || die "$step: busybox lacks the '$a' applet"
	done
	chmod 755 "$root" "$root"/{bin,sbin,usr,usr/bin,usr/sbin,dev,proc,sys,etc,root,run}
	chmod 1777 "$root/tmp"
}

# make_cpio ROOT OUT: a reproducible gzip-compressed newc archive of ROOT (owner root, fixed
# times); prints its member count.
make_cpio() {
	local root=$1 out=$2
	find "$root" -exec touch -h -d "@$ARCHIVE_EPOCH" {} +
	(cd "$root" && find . -mindepth 1 -printf '%P\n' | LC_ALL=C sort |
		cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -9 -n >"$out"
	gzip -dc "$out" | cpio --quiet -t | wc -l
}

step_initramfs() {
	local t0=$SECONDS init_sha
	init_sha=$(sha256sum "$INIT_SCRIPT" | cut -d' ' -f1)
	if [ "$FORCE" -eq 0 ] && stamp_valid initramfs "$INITRAMFS_RECIPE" "init_sha256=$init_sha"; then
		log "initramfs: cached (busybox-static $(stamp_get initramfs version))"
		return 0
	fi

	ensure_tools cpio:cpio gzip:gzip tar:tar dpkg-deb:dpkg
	ensure_apt_lists
	local tmp
	tmp=$(new_tmp initramfs)
	fetch_busybox "$tmp" initramfs
	local ver=$BUSYBOX_VERSION root=$tmp/root
	mkdir -p "$root"
	install -m 755 "$INIT_SCRIPT" "$root/init"
	busybox_tree "$root" "$tmp/pkg/bin/busybox" initramfs

	local members
	members=$(make_cpio "$root" "$tmp/initramfs.cpio.gz")
	[ "$members" -gt 10 ] || die "initramfs: archive looks empty ($members members)"

	rm -f "$STAMPS/initramfs" "$STAMPS/initramfs.sha256"
	chmod 644 "$tmp/initramfs.cpio.gz"
	mv -f "$tmp/initramfs.cpio.gz" "$GUESTS/initramfs.cpio.gz"
	printf 'recipe=%s\npackage=busybox-static\nversion=%s\ninit_sha256=%s\nmembers=%s\n' \
		"$INITRAMFS_RECIPE" "$ver" "$init_sha" "$members" | stamp_write initramfs initramfs.cpio.gz
	log "initramfs: ok, busybox-static $ver, $members members ($(elapsed "$t0"))"
}

# disk_modules FULLTREE RELEASE OUT: the modules in DISK_MODULES and everything they need,
# dependencies first, as paths relative to lib/modules/RELEASE, one a line, into OUT.
disk_modules() {
	local full=$1 release=$2 out=$3 m lines
	: >"$out"
	for m in "${DISK_MODULES[@]}"; do
		lines=$(modprobe -d "$full" -S "$release" --show-depends "$m" 2>&1) ||
			die "disk: $release has no module '$m' (modprobe --show-depends: $lines)"
		# "insmod /abs/path.ko [params]" per module to load; "builtin NAME" needs nothing.
		printf '%s\n' "$lines" | awk -v base="$full/lib/modules/$release/" '
			$1 == "insmod" { p = $2; if (index(p, base) == 1) p = substr(p, length(base) + 1)
				else { sub(/.*\/lib\/modules\/[^\/]+\//, "", p) }; print p }' >>"$out"
	done
	# Keep the first occurrence of each (an earlier module already pulled it in).
	awk '!seen[$0]++' "$out" >"$out.uniq" && mv -f "$out.uniq" "$out"
	[ -s "$out" ] || die "disk: modprobe resolved no modules to load"
}

step_disk() {
	local t0=$SECONDS init_sha rootfs_sha
	if ! stamp_valid kernel "$KERNEL_RECIPE"; then
		log "disk: the kernel assets are missing or stale, fetching them first"
		step_kernel
	fi
	local pkg ver release
	pkg=$(stamp_get kernel package) ver=$(stamp_get kernel version) release=$(stamp_get kernel release)
	init_sha=$(sha256sum "$DISK_INIT" | cut -d' ' -f1)
	rootfs_sha=$(sha256sum "$ROOTFS_INIT" | cut -d' ' -f1)
	local key=("version=$ver" "release=$release" "init_sha256=$init_sha"
		"rootfs_init_sha256=$rootfs_sha" "modules=${DISK_MODULES[*]}" "size=$ROOTFS_SIZE")
	if [ "$FORCE" -eq 0 ] && stamp_valid disk "$DISK_RECIPE" "${key[@]}"; then
		log "disk: cached ($pkg $ver, busybox-static $(stamp_get disk busybox))"
		return 0
	fi

	ensure_tools cpio:cpio gzip:gzip tar:tar dpkg-deb:dpkg modprobe:kmod depmod:kmod \
		mkfs.ext4:e2fsprogs debugfs:e2fsprogs e2fsck:e2fsprogs
	ensure_apt_lists
	local tmp deb
	tmp=$(new_tmp disk)
	log "disk: downloading $pkg $ver (for its modules)"
	if ! deb=$(fetch_deb "$pkg" "$ver" "$tmp"); then
		[ "$APT_UPDATED" -eq 0 ] || die "apt-get download $pkg=$ver failed"
		apt_update
		deb=$(fetch_deb "$pkg" "$ver" "$tmp") ||
			die "apt-get download $pkg=$ver failed: the mirror may no longer offer the cached kernel; run resources/fetch-assets.sh --force --only kernel,disk"
	fi

	# The package ships no modules.dep (its postinst runs depmod): unpack all modules and run
	# depmod on them, then let modprobe resolve what DISK_MODULES need.
	local full=$tmp/full
	mkdir -p "$full"
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$full" "./lib/modules/$release"
	rm -f "$deb"
	[ -d "$full/lib/modules/$release/kernel" ] || die "disk: $pkg has no lib/modules/$release/kernel"
	depmod -b "$full" "$release" || die "disk: depmod failed on $pkg's modules"
	disk_modules "$full" "$release" "$tmp/load-order"

	# The trimmed tree: those modules, the builtin lists, the load order and depmod's output for
	# just them (so modprobe works in the guest too).
	local mods=$tmp/mods m moddir=lib/modules/$release
	mkdir -p "$mods/$moddir"
	while read -r m; do
		install -D -m 644 "$full/$moddir/$m" "$mods/$moddir/$m"
	done <"$tmp/load-order"
	cp "$full/$moddir"/modules.builtin "$full/$moddir"/modules.builtin.modinfo "$mods/$moddir/"
	grep -Fx -f "$tmp/load-order" "$full/$moddir/modules.order" >"$mods/$moddir/modules.order" || true
	depmod -b "$mods" "$release" || die "disk: depmod failed on the trimmed module tree"
	install -m 644 "$tmp/load-order" "$mods/$moddir/irvmm-load-order"
	rm -rf "$full"
	local count
	count=$(wc -l <"$tmp/load-order")
	log "disk: $count modules: $(sed 's|.*/||; s|\.ko.*||' "$tmp/load-order" | tr '\n' ' ')"

	fetch_busybox "$tmp" disk

	# The initramfs: /init loads the modules and switches to the root disk.
	local initrd=$tmp/initrd
	mkdir -p "$initrd/newroot"
	install -m 755 "$DISK_INIT" "$initrd/init"
	busybox_tree "$initrd" "$tmp/pkg/bin/busybox" disk
	cp -a "$mods/lib" "$initrd/"
	local members
	members=$(make_cpio "$initrd" "$tmp/initramfs-disk.cpio.gz")
	# (grep without -q: an early exit would fail the pipeline under pipefail.)
	gzip -dc "$tmp/initramfs-disk.cpio.gz" | cpio --quiet -t | grep -Fx "$moddir/irvmm-load-order" >/dev/null ||
		die "disk: the initramfs lacks its module list"

	# The root disk: busybox, the same modules, /sbin/init, a few /etc files.
	local rootfs=$tmp/rootfs
	mkdir -p "$rootfs"/{sbin,mnt,var}
	install -m 755 "$ROOTFS_INIT" "$rootfs/sbin/init"
	busybox_tree "$rootfs" "$tmp/pkg/bin/busybox" disk
	cp -a "$mods/lib" "$rootfs/"
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs/etc/passwd"
	printf 'root:x:0:\n' >"$rootfs/etc/group"
	printf 'irvmm\n' >"$rootfs/etc/hostname"
	chmod 700 "$rootfs/root"
	truncate -s "$ROOTFS_SIZE" "$tmp/rootfs.ext4"
	# 4 KiB blocks and 256-byte inodes (a small image would get 1 KiB blocks and 128-byte inodes,
	# whose timestamps end in 2038). Files keep the builder's owner (root when run as root).
	mkfs.ext4 -q -F -L irvmm-root -b 4096 -I 256 -E root_owner=0:0 -d "$rootfs" "$tmp/rootfs.ext4" >&2 ||
		die "disk: mkfs.ext4 -d failed (e2fsprogs 1.43 or later needed)"
	e2fsck -fn "$tmp/rootfs.ext4" >/dev/null 2>&1 || die "disk: e2fsck finds errors in the new image"
	debugfs -R 'cat /sbin/init' "$tmp/rootfs.ext4" 2>/dev/null | grep -F IRVMM-ROOT-OK >/dev/null ||
		die "disk: the image has no /sbin/init"

	rm -f "$STAMPS/disk" "$STAMPS/disk.sha256"
	chmod 644 "$tmp/initramfs-disk.cpio.gz" "$tmp/rootfs.ext4"
	mv -f "$tmp/initramfs-disk.cpio.gz" "$GUESTS/initramfs-disk.cpio.gz"
	mv -f "$tmp/rootfs.ext4" "$GUESTS/rootfs.ext4"
	{
		printf 'recipe=%s\npackage=%s\nbusybox=%s\nmembers=%s\ncount=%s\n' \
			"$DISK_RECIPE" "$pkg" "$BUSYBOX_VERSION" "$members" "$count"
		printf '%s\n' "${key[@]}"
	} | stamp_write disk initramfs-disk.cpio.gz rootfs.ext4
	log "disk: ok, $pkg $ver, $count modules, busybox-static $BUSYBOX_VERSION ($(elapsed "$t0"))"
}

summary() {
	local f size
	echo "guest assets in ${GUESTS#"$REPO_ROOT"/}/:"
	for f in probe.elf bzImage vmlinux config kernel-version initramfs.cpio.gz \
		initramfs-disk.cpio.gz rootfs.ext4; do
		if [ -f "$GUESTS/$f" ]; then
			size=$(stat -c %s "$GUESTS/$f")
			printf '  %-22s %10s bytes\n' "$f" "$size"
		else
			printf '  %-22s %10s\n' "$f" "(absent)"
		fi
	done
	if [ -f "$STAMPS/kernel" ]; then
		echo "  kernel:    $(stamp_get kernel package) $(stamp_get kernel version) ($(stamp_get kernel compression))"
	fi
	if [ -f "$STAMPS/initramfs" ]; then
		echo "  initramfs: busybox-static $(stamp_get initramfs version)"
	fi
	if [ -f "$STAMPS/disk" ]; then
		echo "  disk:      $(stamp_get disk count) modules of $(stamp_get disk package), busybox-static $(stamp_get disk busybox)"
	fi
}

# ---------------------------------------------------------------------------------------------

mkdir -p "$GUESTS" "$STAMPS"
# One run at a time per checkout (test harnesses may start several).
if command -v flock >/dev/null 2>&1; then
	exec 9>"$GUESTS/.lock"
	flock 9
fi
rm -rf -- "$GUESTS"/.tmp.*

START=$SECONDS
if want probe; then step_probe; fi
if want kernel; then step_kernel; fi
if want initramfs; then step_initramfs; fi
if want disk; then step_disk; fi
summary
log "done in $(elapsed "$START")"
