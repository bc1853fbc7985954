#!/usr/bin/env bash
# Installs what sdcd and its tests need on Debian 12, idempotently: system packages
# (only those missing) and a virtualenv at .venv with sdcd and its test tools.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

packages=(redis-server openssl openssh-client curl ca-certificates python3 python3-venv
          util-linux iproute2 runc conmon docker-registry busybox-static)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ! command -v docker >/dev/null 2>&1; then
    missing+=(docker.io)  # the client; these machines normally have one at /usr/local/bin
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing system packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # Debian's packages would start their own services; sdcd starts what it needs itself.
    made_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt-get install -y -q --no-install-recommends "${missing[@]}"
    [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.sdcd-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[test]'
    touch "$stamp"
fi
