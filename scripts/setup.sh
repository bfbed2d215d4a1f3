#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Installs the Debian 12 packages normflow needs. Idempotent: quick when they are present.
# Usable as root (no sudo needed) or as a user with sudo.
set -euo pipefail

PACKAGES=(cmake g++ make libeigen3-dev libxsimd-dev doctest-dev libtrilinos-kokkos-dev
          libbenchmark-dev librandom123-dev)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "setup: need root (or sudo) to install: ${missing[*]}" >&2; exit 1
  fi
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
