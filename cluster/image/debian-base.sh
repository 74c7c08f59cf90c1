#!/usr/bin/env bash
# A base image for the Dockerfile where no registry can be pulled from: Debian bookworm (its
# Python is 3.11) from the Debian mirror, by debootstrap, then `docker import`. Needs root,
# debootstrap and a Docker engine. On a network that inspects TLS, EXTRA_CA_CERTS names the
# proxy's CA files (.crt), trusted inside the image too.
#
#   bash cluster/image/debian-base.sh [TAG]      # default TAG: fundus-search-base:bookworm
#   make image BASE=fundus-search-base:bookworm
set -euo pipefail
tag=${1:-fundus-search-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/fundus-search-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT

debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror"
for cert in ${EXTRA_CA_CERTS:-}; do
    cp "$cert" "$root/usr/local/share/ca-certificates/$(basename "$cert" .crt).crt"
done
[ -z "${EXTRA_CA_CERTS:-}" ] || chroot "$root" update-ca-certificates
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import --change 'CMD ["/bin/bash"]' - "$tag"
echo "built $tag"
