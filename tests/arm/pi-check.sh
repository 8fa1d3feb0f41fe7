#!/usr/bin/env bash
# make pi-check: the device side on a Raspberry Pi OS userland, emulated with qemu-user-static.
#
#   arm64: Debian 12 (bookworm) arm64, Python 3.11, `pip install '.[device]'` from the working tree
#          (ai-edge-litert's aarch64 wheel), QEMU_CPU=cortex-a72 (Raspberry Pi 4).
#   armhf: Debian 12 armhf, Debian's python3-numpy/pil/cffi, a --system-site-packages venv, the
#          legacy tflite-runtime 2.14 (ai-edge-litert has no 32-bit ARM wheel), edgeloop --no-deps,
#          QEMU_CPU=cortex-a7 (Raspberry Pi 2/3 running 32-bit Raspberry Pi OS).
#
# Each root is built once with debootstrap and cached in .cache/pi-check/ARCH. /proc/cpuinfo in the
# chroot is made to describe QEMU_CPU (qemu 7.2's user mode shows the host's x86 cpuinfo otherwise,
# which LiteRT's CPU detection would read) and checked. Then, on the shipped bundles:
# `edgeloop device predict`, `edgeloop device bench`, `python -m device info`. A crash is reported
# with its signal, then retried with XNNPACK off (EDGELOOP_XNNPACK=0) to tell the delegate from the rest.
# Timings are EMULATED (qemu on x86), not a Pi's. Needs root, qemu-user-static, debootstrap, binfmt_misc.
set -uo pipefail
ARCHES=("$@"); [ ${#ARCHES[@]} -eq 0 ] && ARCHES=(arm64 armhf)
ROOT_DIR=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${PI_CHECK_CACHE:-$ROOT_DIR/.cache/pi-check}
MIRROR=${PI_CHECK_MIRROR:-http://deb.debian.org/debian}
OUT=${PI_CHECK_OUT:-$ROOT_DIR/benchmarks/results/pi_check}
STEP_TIMEOUT=${PI_CHECK_STEP_TIMEOUT:-1800}
mkdir -p "$CACHE" "$OUT"
log() { printf '== [%s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }

need() { command -v "$1" >/dev/null || { echo "pi-check: $1 is missing: apt-get install qemu-user-static debootstrap binfmt-support" >&2; exit 2; }; }
need debootstrap; need qemu-aarch64-static; need qemu-arm-static
[ "$(id -u)" = 0 ] || { echo "pi-check: needs root (debootstrap, chroot, mount)" >&2; exit 2; }
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || true; fi
for h in qemu-aarch64 qemu-arm; do
  [ -e /proc/sys/fs/binfmt_misc/$h ] || update-binfmts --enable $h >/dev/null 2>&1 || true
  [ -e /proc/sys/fs/binfmt_misc/$h ] || { echo "pi-check: binfmt_misc has no $h handler (update-binfmts --enable $h)" >&2; exit 2; }
done

cpuinfo() {  # what a Pi's kernel prints for one core, x4
  local arch=$1 i
  for i in 0 1 2 3; do
    if [ "$arch" = arm64 ]; then
      printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' $i
    else
      printf 'processor\t: %s\nmodel name\t: ARMv7 Processor rev 5 (v7l)\nBogoMIPS\t: 38.40\nFeatures\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm\nCPU implementer\t: 0x41\nCPU architecture: 7\nCPU variant\t: 0x0\nCPU part\t: 0xc07\nCPU revision\t: 5\n\n' $i
    fi
  done
}

mounted=()
cleanup() { local m; for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null; done; mounted=(); }
trap cleanup EXIT

check_arch() {
  local arch=$1 root="$CACHE/$1" cpu part include
  if [ "$arch" = arm64 ]; then cpu=cortex-a72; part=0xd08; include=python3,python3-venv,python3-pip,ca-certificates
  else cpu=cortex-a7; part=0xc07; include=python3,python3-venv,python3-pip,ca-certificates,python3-numpy,python3-pil,python3-cffi,python3-ply; fi  # debootstrap does not resolve the virtual python3-ply-lex-3.10
  export QEMU_CPU=$cpu
  if [ ! -e "$root/.debootstrap-done" ]; then
    log "$arch: debootstrap bookworm (minbase + $include) into $root"
    rm -rf "$root"
    if ! timeout "$STEP_TIMEOUT" debootstrap --arch="$arch" --variant=minbase --include="$include" bookworm "$root" "$MIRROR" \
        > "$OUT/$arch-debootstrap.log" 2>&1; then
      echo "$arch: debootstrap FAILED (tail of $OUT/$arch-debootstrap.log):"; tail -5 "$OUT/$arch-debootstrap.log"; return 1
    fi
    touch "$root/.debootstrap-done"
  fi
  mount -t proc proc "$root/proc" && mounted+=("$root/proc")
  cpuinfo "$arch" > "$CACHE/$arch.cpuinfo"
  mount --bind "$CACHE/$arch.cpuinfo" "$root/proc/cpuinfo" && mounted+=("$root/proc/cpuinfo")
  mount --bind /dev "$root/dev" && mounted+=("$root/dev")
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/pi-check-ca.crt"
  local seen
  seen=$(chroot "$root" /bin/sh -c "uname -m; grep -m1 'CPU part' /proc/cpuinfo | awk '{print \$NF}'" | tr '\n' ' ')
  log "$arch: QEMU_CPU=$cpu, chroot sees: $seen"
  case "$seen" in *"$part"*) ;; *) echo "$arch: /proc/cpuinfo does not match QEMU_CPU=$cpu (want CPU part $part)"; return 1;; esac

  log "$arch: copying the working tree to /opt/edgeloop"
  rm -rf "$root/opt/edgeloop" && mkdir -p "$root/opt/edgeloop"
  (cd "$ROOT_DIR" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -xf - -C "$root/opt/edgeloop"
  # A clean environment: the host's SSL_CERT_FILE/REQUESTS_CA_BUNDLE/PIP_* would point pip at the chroot's
  # own files (without this network's CA) or at host-only wheel folders.
  local ca=/etc/ssl/certs/pi-check-ca.crt
  local env="-i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 QEMU_CPU=$cpu
    PIP_CERT=$ca SSL_CERT_FILE=$ca REQUESTS_CA_BUNDLE=$ca PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1"
  local t0=$SECONDS
  if [ "$arch" = arm64 ]; then
    chroot "$root" /usr/bin/env $env /bin/sh -c \
      "{ [ -x /opt/venv/bin/pip ] || python3 -m venv /opt/venv; } && /opt/venv/bin/pip install -q '/opt/edgeloop[device]' && /opt/venv/bin/pip install -q --force-reinstall --no-deps /opt/edgeloop" \
      > "$OUT/$arch-install.log" 2>&1
  else
    chroot "$root" /usr/bin/env $env /bin/sh -c \
      "{ [ -x /opt/venv/bin/pip ] || python3 -m venv --system-site-packages /opt/venv; } && /opt/venv/bin/pip install -q 'tflite-runtime==2.14.*' 'rich>=13,<16' && /opt/venv/bin/pip install -q --force-reinstall --no-deps /opt/edgeloop" \
      > "$OUT/$arch-install.log" 2>&1
  fi
  local rc=$?
  log "$arch: install rc=$rc in $((SECONDS - t0)) s (log $OUT/$arch-install.log)"
  [ $rc -eq 0 ] || { tail -5 "$OUT/$arch-install.log"; return 1; }
  chroot "$root" /usr/bin/env $env /opt/venv/bin/python -c "import platform, sys, numpy; print('python', sys.version.split()[0], platform.machine(), 'numpy', numpy.__version__)"

  local failed=0 name cmd
  run() {  # name, command...; retry once with XNNPACK off if it dies of a signal
    local name=$1; shift
    local t=$SECONDS
    chroot "$root" /usr/bin/env $env /bin/sh -c "cd /tmp && $*" > "$OUT/$arch-$name.txt" 2>&1
    local rc=$?
    log "$arch: $name rc=$rc ($((SECONDS - t)) s)"; cat "$OUT/$arch-$name.txt"
    if [ $rc -gt 128 ]; then
      echo "$arch: $name died of signal $((rc - 128)); retrying with EDGELOOP_XNNPACK=0"
      chroot "$root" /usr/bin/env $env EDGELOOP_XNNPACK=0 /bin/sh -c "cd /tmp && $*" > "$OUT/$arch-$name-noxnn.txt" 2>&1
      log "$arch: $name without XNNPACK rc=$?"; cat "$OUT/$arch-$name-noxnn.txt"
    fi
    [ $rc -eq 0 ] || failed=1
  }
  run predict "/opt/venv/bin/edgeloop device predict mnist-cnn-int8 /opt/edgeloop/models/examples/digit-7.png /opt/edgeloop/models/examples/digit-3.png"
  run predict-float32 "/opt/venv/bin/edgeloop device predict mnist-cnn-float32 /opt/edgeloop/models/examples/digit-9.png --json"
  run bench "/opt/venv/bin/edgeloop device bench mnist-cnn-int8 --runs 100 --warmup 10 --threads 1,2"
  run bench-float32 "/opt/venv/bin/edgeloop device bench mnist-cnn-float32 --runs 100 --warmup 10 --threads 1"
  run info "/opt/venv/bin/python -m device info mnist-cnn-int8"
  cleanup
  return $failed
}

status=0
for arch in "${ARCHES[@]}"; do
  if check_arch "$arch"; then log "$arch: PASS"; else log "$arch: FAIL"; status=1; fi
  cleanup
done
exit $status
