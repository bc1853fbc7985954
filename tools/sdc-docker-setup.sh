#!/usr/bin/env bash
# sdc-docker-setup.sh: set up a Docker client for an sdcd (SDC Docker) datacenter.
#
# Checks the account's SSH key against CloudAPI (HTTP Signature), writes a client
# certificate made from that key, fetches the server CA and the Docker endpoint, and
# writes ~/.sdc/docker/<profile>/env.sh. Needs bash, curl, openssl and ssh-keygen; an
# OpenSSH-format Ed25519 key also needs python3 (standard library only).
set -euo pipefail

VERSION=1.0.0
PROG=$(basename "$0")

usage() {
    cat <<EOF
Usage:
  $PROG [OPTIONS] CLOUDAPI_URL ACCOUNT SSH_PRIVATE_KEY_PATH

Set up a Docker client (the docker CLI, docker-compose, docker-py) to use the sdcd
Docker endpoint of a datacenter, authenticated by your SSH key.

Options:
  -h          Show this help and exit.
  -V          Show the version and exit.
  -k          Do not verify the CloudAPI's TLS certificate (insecure; test setups).
  -f          Skip the CloudAPI ping and credential check.
  -p PROFILE  Profile name (default: ACCOUNT); files go to ~/.sdc/docker/PROFILE.
  -s          Also print SDC_URL, SDC_ACCOUNT and SDC_KEY_ID exports.
  -q          Quiet: print only errors.

Example:
  $PROG -k https://localhost:8443 jill ~/.ssh/id_ed25519
EOF
}

fatal() { echo "$PROG: error: $*" >&2; exit 1; }
info() { [ -n "$quiet" ] || echo "$@"; }

insecure='' skip_checks='' profile='' print_sdc='' quiet=''
while getopts ":hVkfp:sq" opt; do
    case $opt in
        h) usage; exit 0 ;;
        V) echo "$PROG $VERSION"; exit 0 ;;
        k) insecure=1 ;;
        f) skip_checks=1 ;;
        p) profile=$OPTARG ;;
        s) print_sdc=1 ;;
        q) quiet=1 ;;
        :) fatal "option -$OPTARG needs a value (see -h)" ;;
        *) fatal "unknown option -$OPTARG (see -h)" ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 3 ] || { usage >&2; exit 1; }
cloudapi=${1%/}
account=$2
key_path=$3
profile=${profile:-$account}

for tool in curl openssl ssh-keygen; do
    command -v "$tool" >/dev/null 2>&1 || fatal "'$tool' is required but not installed"
done
case $cloudapi in https://* | http://*) ;; *) fatal "CLOUDAPI_URL must start with https://" ;; esac
[[ $account =~ ^[A-Za-z][A-Za-z0-9._@-]*$ ]] || fatal "invalid account name '$account'"
[[ $profile =~ ^[A-Za-z0-9._@-]+$ ]] || fatal "invalid profile name '$profile'"
[ -r "$key_path" ] || fatal "cannot read SSH private key '$key_path'"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 700 "$work"

curl_opts=(--silent --show-error --connect-timeout 10 --max-time 60)
[ -z "$insecure" ] || curl_opts+=(--insecure)

# --- the private key as PEM ------------------------------------------------------------

openssh_ed25519_to_pem() {
    # ssh-keygen cannot export Ed25519 private keys to PEM: read the openssh-key-v1
    # container and wrap the 32-byte seed in PKCS#8.
    python3 - "$1" <<'PY'
import base64, struct, sys
text = open(sys.argv[1]).read()
body = "".join(l for l in text.splitlines() if l and not l.startswith("-----"))
data = base64.b64decode(body)
magic = b"openssh-key-v1\0"
if not data.startswith(magic):
    sys.exit("not an OpenSSH private key")
pos = len(magic)
def string():
    global pos
    (n,) = struct.unpack(">I", data[pos:pos + 4]); pos += 4
    value = data[pos:pos + n]; pos += n
    return value
cipher, kdf, _ = string(), string(), string()
if cipher != b"none":
    sys.exit("encrypted")
(count,) = struct.unpack(">I", data[pos:pos + 4]); pos += 4
for _ in range(count):
    string()
private = string()
pos_saved, data, pos = pos, private, 8  # skip the two check integers
if string() != b"ssh-ed25519":
    sys.exit("not an Ed25519 key")
string()
seed = string()[:32]
der = bytes.fromhex("302e020100300506032b657004220420") + seed
pem = base64.encodebytes(der).decode().replace("\n", "")
print("-----BEGIN PRIVATE KEY-----\n" + pem + "\n-----END PRIVATE KEY-----")
PY
}

pem_key=$work/key.pem
status=
if grep -q -- "-----BEGIN OPENSSH PRIVATE KEY-----" "$key_path"; then
    key_type=$(ssh-keygen -y -P "" -f "$key_path" 2>/dev/null | awk '{print $1}') ||
        fatal "cannot read '$key_path' (is it passphrase-protected? decrypt a copy with 'ssh-keygen -p -f COPY' first)"
    [ -n "$key_type" ] || fatal "cannot read '$key_path' (passphrase-protected keys are not supported)"
    if [ "$key_type" = ssh-ed25519 ]; then
        command -v python3 >/dev/null 2>&1 || fatal "python3 is needed to convert an OpenSSH Ed25519 key"
        openssh_ed25519_to_pem "$key_path" >"$pem_key" 2>"$work/err" ||
            fatal "cannot convert '$key_path': $(cat "$work/err")"
    else
        cp "$key_path" "$work/copy" && chmod 600 "$work/copy"
        ssh-keygen -q -p -m PEM -P "" -N "" -f "$work/copy" >/dev/null 2>&1 ||
            fatal "cannot convert '$key_path' to PEM"
        cp "$work/copy" "$pem_key"
    fi
else
    openssl pkey -in "$key_path" -passin pass: -out "$pem_key" 2>/dev/null ||
        fatal "cannot read '$key_path' as a private key (encrypted keys are not supported)"
fi
chmod 600 "$pem_key"

key_text=$(openssl pkey -in "$pem_key" -noout -text 2>/dev/null | head -n 3 | tr '\n' ' ')
digest=''
case $key_text in
    *ED25519*) algorithm=ed25519-sha512 ;;
    *modulus:*) algorithm=rsa-sha256; digest=sha256 ;;
    *"(256 bit)"*) algorithm=ecdsa-sha256; digest=sha256 ;;
    *"(384 bit)"*) algorithm=ecdsa-sha384; digest=sha384 ;;
    *"(521 bit)"*) algorithm=ecdsa-sha512; digest=sha512 ;;
    *) fatal "unsupported key type in '$key_path' (use RSA, ECDSA or Ed25519)" ;;
esac

ssh_public_key() {
    # ssh-keygen reads OpenSSH keys and PEM RSA/ECDSA keys; a PEM Ed25519 key's public
    # half is the last 32 bytes of its SubjectPublicKeyInfo.
    if ssh-keygen -y -P "" -f "$key_path" 2>/dev/null; then
        return
    fi
    if [ "$algorithm" = ed25519-sha512 ]; then
        { printf '\000\000\000\013ssh-ed25519\000\000\000\040'
          openssl pkey -in "$pem_key" -pubout -outform DER | tail -c 32; } |
            openssl base64 -A | sed 's/^/ssh-ed25519 /'
        echo
    else
        openssl pkey -in "$pem_key" -pubout -out "$work/pub.pem" &&
            ssh-keygen -i -m PKCS8 -f "$work/pub.pem"
    fi
}
ssh_public_key >"$work/key.pub" 2>/dev/null || true
[ -s "$work/key.pub" ] || fatal "cannot derive the SSH public key from '$key_path'"
fingerprint=$(ssh-keygen -E md5 -l -f "$work/key.pub" | awk '{print $2}')
fingerprint=${fingerprint#MD5:}
key_id="/$account/keys/$fingerprint"

# --- CloudAPI ----------------------------------------------------------------------

sign() {
    printf '%s' "$1" >"$work/signing-string"
    if [ "$algorithm" = ed25519-sha512 ]; then
        openssl pkeyutl -sign -rawin -inkey "$pem_key" -in "$work/signing-string"
    else
        openssl dgst "-$digest" -sign "$pem_key" "$work/signing-string"
    fi | openssl base64 -A
}

# Leaves the body in $work/body and the HTTP status in $status.
cloudapi_get() {
    local path=$1 date signature
    date=$(LC_ALL=C date -u '+%a, %d %b %Y %H:%M:%S GMT')
    signature=$(sign "date: $date")
    status=$(curl "${curl_opts[@]}" -o "$work/body" -w '%{http_code}' \
        -H "Date: $date" -H "Accept: application/json" \
        -H "Authorization: Signature keyId=\"$key_id\",algorithm=\"$algorithm\",headers=\"date\",signature=\"$signature\"" \
        "$cloudapi$path") || fatal "could not reach CloudAPI at $cloudapi"
}

json_field() {
    python3 -c 'import json,sys
try:
    value = json.load(sys.stdin).get(sys.argv[1], "")
except Exception:
    value = ""
print(value if isinstance(value, str) else "")' "$1"
}

if [ -z "$skip_checks" ]; then
    info "Checking CloudAPI at $cloudapi ..."
    curl "${curl_opts[@]}" -f -o /dev/null "$cloudapi/--ping" 2>"$work/err" ||
        fatal "could not reach CloudAPI at $cloudapi: $(cat "$work/err")"
    cloudapi_get "/$account"
    case $status in
        200) ;;
        401 | 403) fatal "invalid credentials: CloudAPI refused account '$account' with key $fingerprint ($(json_field message <"$work/body"))" ;;
        *) fatal "CloudAPI answered $status: $(json_field message <"$work/body")" ;;
    esac
fi

cloudapi_get "/$account/services"
case $status in
    200) ;;
    401 | 403) fatal "invalid credentials: CloudAPI refused account '$account' with key $fingerprint" ;;
    *) fatal "could not get the services of '$account' (HTTP $status)" ;;
esac
docker_url=$(json_field docker <"$work/body")
[ -n "$docker_url" ] || fatal "this datacenter's CloudAPI lists no docker service"
docker_hostport=${docker_url#tcp://}
docker_host=${docker_hostport%:*}
docker_host=${docker_host#[}
docker_host=${docker_host%]}

# --- the profile -------------------------------------------------------------------

dir=$HOME/.sdc/docker/$profile
mkdir -p "$dir"
chmod 700 "$HOME/.sdc" "$HOME/.sdc/docker" "$dir"

# The CA is what is being fetched, so it cannot verify this one download (as SDC's
# helper did); the docker client verifies every later connection against it.
curl "${curl_opts[@]}" --insecure -f -o "$work/ca.pem" "https://$docker_hostport/ca.pem" 2>"$work/err" ||
    fatal "could not download the CA from https://$docker_hostport/ca.pem: $(cat "$work/err")"
grep -q "BEGIN CERTIFICATE" "$work/ca.pem" || fatal "https://$docker_hostport/ca.pem is not a certificate"

cert_opts=()
[ "$algorithm" = ed25519-sha512 ] || cert_opts=(-sha256)
openssl req -new -x509 -key "$pem_key" "${cert_opts[@]}" -subj "/CN=$account" -days 365 \
    -out "$work/cert.pem" 2>"$work/err" || fatal "cannot make the client certificate: $(cat "$work/err")"

install -m 600 "$pem_key" "$dir/key.pem"
install -m 644 "$work/cert.pem" "$dir/cert.pem"
install -m 644 "$work/ca.pem" "$dir/ca.pem"

is_ip=
if [[ $docker_host =~ ^[0-9.]+$ || $docker_host == *:* ]]; then is_ip=1; fi
{
    echo "# sdcd Docker client settings for account '$account' (made by $PROG)"
    echo "export DOCKER_CERT_PATH=$dir"
    echo "export DOCKER_HOST=$docker_url"
    echo "export DOCKER_CLIENT_TIMEOUT=300"
    echo "export COMPOSE_HTTP_TIMEOUT=300"
    if [ -n "$is_ip" ]; then
        echo "# The endpoint is an IP address: verify nothing, but use TLS."
        echo "unset DOCKER_TLS_VERIFY"
        echo "alias docker=\"docker --tls\""
    else
        echo "export DOCKER_TLS_VERIFY=1"
    fi
    if [ -n "$print_sdc" ]; then
        echo "export SDC_URL=$cloudapi"
        echo "export SDC_ACCOUNT=$account"
        echo "export SDC_KEY_ID=$fingerprint"
        [ -z "$insecure" ] || echo "export SDC_TESTING=1"
    fi
} >"$work/env.sh"
install -m 644 "$work/env.sh" "$dir/env.sh"

info "Setup completed successfully for account '$account' ($docker_url)."
info ""
info "To point your docker client at it, run:"
info "    source $dir/env.sh"
info ""
info "That sets:"
[ -n "$quiet" ] || grep -E '^(export|unset|alias)' "$dir/env.sh" | sed 's/^/    /'
