#!/usr/bin/env bash
# Install the system packages that the tests need, redis-server and chromium, with apt-get.
# Does nothing when both are present, so it is safe to run on every `make install`.
set -euo pipefail

missing=()
if ! command -v redis-server >/dev/null 2>&1; then
    missing+=(redis-server)
fi
if [ ! -x /usr/bin/chromium ]; then
    missing+=(chromium)
fi

if [ "${#missing[@]}" -eq 0 ]; then
    echo "System packages present: redis-server, chromium."
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing system packages: ${missing[*]}. Installing them with apt-get needs root;" \
        "run 'sudo make install' or 'sudo apt-get install -y ${missing[*]}'." >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: missing system packages: ${missing[*]}, and apt-get was not found;" \
        "install them with this system's package manager." >&2
    exit 1
fi

echo "Installing system packages: ${missing[*]}"
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"
