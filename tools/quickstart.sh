#!/usr/bin/env bash
# Sets everything up on a fresh Debian 12 machine and runs sdcd on the embedded default:
# system packages and a virtualenv, a demo account with a freshly generated SSH key, the
# server (`twistd -n sdcd -c etc/sdcd.toml`), then the client setup helper. It reuses
# whatever an earlier run set up. Stop sdcd with Ctrl-C.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
config=${SDCD_CONFIG:-$here/etc/sdcd.toml}
account=${SDCD_DEMO_ACCOUNT:-demo}
key=${SDCD_DEMO_KEY:-$HOME/.ssh/sdcd_${account}_ed25519}

bash tools/install-deps.sh
export PATH="$here/.venv/bin:$PATH"
# twistd finds twisted/plugins/sdcd_plugins.py through sys.path.
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"

if [ ! -f "$key" ]; then
    mkdir -p "$(dirname "$key")" && chmod 700 "$(dirname "$key")"
    ssh-keygen -q -t ed25519 -N "" -C "$account@sdcd-demo" -f "$key"
    echo "made SSH key $key"
fi
if ! sdcd-admin -c "$config" account show "$account" >/dev/null 2>&1; then
    sdcd-admin -c "$config" account create "$account" --approved
fi
if ! sdcd-admin -c "$config" key list "$account" | grep -q "$(ssh-keygen -E md5 -lf "$key" | awk '{print $2}' | sed 's/^MD5://')"; then
    sdcd-admin -c "$config" key add "$account" -f "$key.pub"
fi

twistd --pidfile= -n sdcd -c "$config" &
sdcd_pid=$!
trap 'kill $sdcd_pid 2>/dev/null; wait $sdcd_pid' INT TERM
cloudapi_port=$(python3 -c 'import sys,tomllib; print(tomllib.load(open(sys.argv[1],"rb")).get("cloudapi",{}).get("port",8443))' "$config")
for _ in $(seq 100); do
    curl -sk "https://localhost:$cloudapi_port/--ping" >/dev/null 2>&1 && break
    kill -0 $sdcd_pid 2>/dev/null || { wait $sdcd_pid; exit 1; }
    sleep 0.2
done
# -k: the CloudAPI's certificate is signed by sdcd's own CA, which the helper fetches.
bash tools/sdc-docker-setup.sh -k "https://localhost:$cloudapi_port" "$account" "$key"
echo
echo "sdcd is running (pid $sdcd_pid); in another shell:"
echo "    source ~/.sdc/docker/$account/env.sh && docker info"
wait $sdcd_pid
