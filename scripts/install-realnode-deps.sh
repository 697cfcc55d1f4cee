#!/usr/bin/env bash
# Installs what the images and the real node need, only what is missing: podman and mmdebstrap
# (image builds), runc, CNI plugins, iptables and conntrack (the node), catatonit (the pause image).
# Also sets podman's default container ulimits: root here lacks CAP_SYS_RESOURCE and its hard
# nofile limit is 20000, so podman's defaults fail with "error setting rlimits".
# Prints nothing when there is nothing to do.
set -euo pipefail

packages=(podman buildah mmdebstrap runc containernetworking-plugins skopeo uidmap fuse-overlayfs
  iptables conntrack catatonit iproute2)

bash "$(dirname "$0")/install-debian-packages.sh" "${packages[@]}"

conf=/etc/containers/containers.conf
ulimits='default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]'
if ! grep -qs '^default_ulimits' "$conf"; then
  echo "setting $ulimits in $conf"
  mkdir -p "$(dirname "$conf")"
  if grep -qs '^\[containers\]' "$conf"; then
    sed -i "/^\[containers\]/a $ulimits" "$conf"
  else
    printf '[containers]\n%s\n' "$ulimits" >>"$conf"
  fi
fi
