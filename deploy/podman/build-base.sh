#!/usr/bin/env bash
# Builds a local Debian bookworm base image with debootstrap and imports it into
# podman, for machines that cannot pull from Docker Hub. The Dockerfile's
# BASE_IMAGE build argument then points at it. Reuses the image if it exists.
#   usage: deploy/podman/build-base.sh [image-name]   (default localhost/bookworm-minbase:local)
set -euo pipefail
image="${1:-localhost/bookworm-minbase:local}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

if podman image exists "$image"; then
    echo "base image $image already present"
    exit 0
fi

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
# minbase: essential packages and apt only; the Dockerfile installs python3 itself,
# as it does on the stock debian:bookworm-slim base.
debootstrap --variant=minbase bookworm "$rootfs" "$mirror"
# Same apt sources as debian:bookworm-slim (main + updates + security).
cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$image"
echo "imported $image"
