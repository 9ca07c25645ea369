#!/usr/bin/env bash
# Build the podwire image for real with Debian's podman, without pulling a base image:
# a Debian bookworm root filesystem made with debootstrap, plus Debian's python3 (3.11), is
# imported as localhost/podwire-base:bookworm and stands in for python:3.11-slim-bookworm
# (the Dockerfile's PYTHON_IMAGE build argument). Then, inside the image: `podwire --version`
# and `podwire replay` of a test pcap; prints the image size.
#
#   bash scripts/build-image.sh [PCAP]        (as root; needs podman, runc and debootstrap)
#   bash scripts/build-image.sh --base        only the cached base (scripts/setup.sh --test runs this)
#
# The root filesystem is cached outside the clone ($PODWIRE_IMAGE_CACHE, default
# /var/cache/podwire-image), like the Go-built peers. The Debian mirror is the one this
# machine's apt uses. The image build itself fetches the locked Python wheels
# (requirements-image.txt, hashes checked) and libpcap through the ordinary clients.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${PODWIRE_IMAGE_CACHE:-/var/cache/podwire-image}
ROOTFS=$CACHE/rootfs-bookworm
BASE=localhost/podwire-base:bookworm
IMAGE=${PODWIRE_IMAGE:-localhost/podwire:test}
mirror() {
    awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null \
        || awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list
}
if [ ! -e "$ROOTFS/.complete" ]; then
    rm -rf "$ROOTFS"
    mkdir -p "$CACHE"
    debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
        bookworm "$ROOTFS" "$(mirror)"
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
    touch "$ROOTFS/.complete"
fi
if ! podman image exists "$BASE"; then
    tar -C "$ROOTFS" --exclude=./.complete -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
fi
[ "${1:-}" = --base ] && exit 0
# This machine's pip settings and CA bundle (a proxy may re-sign TLS) for the build steps only:
# mounted, never copied into a layer.
mounts=()
for f in /etc/pip.conf /etc/ssl/certs/ca-certificates.crt; do
    [ -f "$f" ] && mounts+=(-v "$f:$f:ro")
done
# --isolation=chroot: RUN steps without an OCI runtime (crun refuses this kernel's hybrid cgroups).
podman build --isolation=chroot --network=host "${mounts[@]}" --build-arg PYTHON_IMAGE="$BASE" -t "$IMAGE" .
# The previous build's layers, untagged by this one: half a gigabyte each, not kept.
podman image prune -f >/dev/null
# Run it: a real container (own mount, pid, ipc, uts and network namespaces), as the image's user,
# with no capabilities, a read-only root and no network: all that `--version` and `replay` need.
# runc, not crun: crun refuses this kernel's hybrid cgroup layout (cgroup v1 controllers plus a
# cgroup2 mount holding hugetlb: "cgroups in hybrid mode not supported"), runc drives the v1 ones.
# Explicit rlimits: the machine withholds CAP_SYS_RESOURCE, so no process here can raise a hard
# limit, and podman lowers its own RLIMIT_NPROC hard limit to 32768 at start; its defaults (nofile
# 1048576, nproc = the host's) then fail in the runtime with setrlimit: EPERM.
nofile=$(ulimit -Hn)
[ "$nofile" = unlimited ] && nofile=1048576
run=(podman --runtime runc run --rm --network=none --read-only --cap-drop=all
    --ulimit "nofile=$nofile:$nofile" --ulimit nproc=4096:4096)
"${run[@]}" "$IMAGE" --version
if [ -n "${1:-}" ]; then
    "${run[@]}" -v "$(dirname "$(realpath "$1")"):/mnt:ro" "$IMAGE" \
        replay "/mnt/$(basename "$1")" --format jsonl --log-level error
fi
podman image inspect --format 'image size: {{.Size}} bytes' "$IMAGE"
