#!/usr/bin/env bash
# sdc-docker-setup.sh: set up a Docker client for an sdcd (SDC Docker) datacenter.
#
# Checks the account's SSH key against CloudAPI (an HTTP Signature request), writes a
# client certificate made from that key, asks CloudAPI for the Docker endpoint, fetches
# the endpoint's CA and writes ~/.sdc/docker/<profile>/env.sh.
#
# Needs bash, curl, openssl (3.0+), ssh-keygen and coreutils. python3 (standard library
# only) is needed for an Ed25519 key in OpenSSH format (ssh-keygen cannot export one to
# PEM), and is used to read JSON when present.
#
# Passphrase-protected keys: when stdin is a terminal, ssh-keygen/openssl ask for the
# passphrase and only a decrypted copy in a private temporary directory is used (the
# profile's key.pem is then unencrypted, as the Docker client needs it); otherwise the
# helper stops with an error that says how to decrypt a copy.
set -euo pipefail

VERSION=1.1.0
PROG=$(basename "$0")

usage() {
    cat <<EOF
Usage:
  $PROG [-h] [-V] [-k] [-f] [-q] [-s] [-p PROFILE] CLOUDAPI_URL ACCOUNT SSH_PRIVATE_KEY_PATH

Set up a Docker client (the docker CLI, docker-compose, docker-py) to use the sdcd
Docker endpoint of a datacenter, authenticated by your SSH key (RSA, ECDSA or Ed25519;
OpenSSH or PEM format). The key must be registered with ACCOUNT.

Options:
  -h          Show this help and exit.
  -V          Show the version and exit.
  -k          Do not verify TLS certificates (insecure; for test setups).
  -f          Skip the CloudAPI ping and the credential check.
  -p PROFILE  Profile name (default: ACCOUNT); files go to ~/.sdc/docker/PROFILE/.
  -s          Also export SDC_URL, SDC_ACCOUNT and SDC_KEY_ID (and SDC_TESTING with -k).
  -q          Quiet: print only errors.

Example:
  $PROG https://cloudapi.example.com jill ~/.ssh/id_ed25519
  source ~/.sdc/docker/jill/env.sh && docker info
EOF
}

fatal() {
    echo "$PROG: error: $*" >&2
    exit 1
}

quiet=''
info() {
    [ -n "$quiet" ] || echo "$@"
}

# --- arguments ---------------------------------------------------------------------------

case ${1:-} in
    --help) usage; exit 0 ;;
    --version) echo "$PROG $VERSION"; exit 0 ;;
esac

insecure='' skip_checks='' profile='' print_sdc=''
while getopts ":hVkfqsp:" opt; do
    case $opt in
        h) usage; exit 0 ;;
        V) echo "$PROG $VERSION"; exit 0 ;;
        k) insecure=1 ;;
        f) skip_checks=1 ;;
        q) quiet=1 ;;
        s) print_sdc=1 ;;
        p) profile=$OPTARG ;;
        :) fatal "option -$OPTARG needs a value (see '$PROG -h')" ;;
        *) fatal "unknown option -$OPTARG (see '$PROG -h')" ;;
    esac
done
shift $((OPTIND - 1))
if [ $# -ne 3 ]; then
    echo "$PROG: error: expected CLOUDAPI_URL ACCOUNT SSH_PRIVATE_KEY_PATH, got $# argument(s)" >&2
    echo "usage: $(usage | sed -n 's/^  //; 2p') (see -h)" >&2
    exit 1
fi
cloudapi=$1
account=$2
key_path=$3
profile=${profile:-$account}

while [ "${cloudapi%/}" != "$cloudapi" ]; do cloudapi=${cloudapi%/}; done
case $cloudapi in
    https://?* | http://?*) ;;
    *) fatal "CLOUDAPI_URL must be an https:// URL, not '$1'" ;;
esac
# The login goes into a URL path and the certificate's subject (/CN=...).
[[ $account =~ ^[A-Za-z0-9][A-Za-z0-9._@-]*$ ]] || fatal "invalid account name '$account'"
if [[ ! $profile =~ ^[A-Za-z0-9._@-]+$ ]] || [ "$profile" = . ] || [ "$profile" = .. ]; then
    fatal "invalid profile name '$profile' (letters, digits, '.', '_', '@' and '-')"
fi
[ -n "${HOME:-}" ] || fatal "HOME is not set"
[ -e "$key_path" ] || fatal "SSH private key '$key_path' does not exist"
if [ ! -f "$key_path" ] || [ ! -r "$key_path" ]; then
    fatal "cannot read SSH private key '$key_path'"
fi

for tool in curl openssl ssh-keygen base64 od mktemp; do
    command -v "$tool" >/dev/null 2>&1 || fatal "'$tool' is required but not installed"
done

umask 077
work=$(mktemp -d "${TMPDIR:-/tmp}/sdc-docker-setup.XXXXXX") || fatal "cannot make a temporary directory"
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

curl_opts=(--silent --show-error --globoff --connect-timeout 10 --max-time 60
    --user-agent "sdc-docker-setup/$VERSION")
[ -z "$insecure" ] || curl_opts+=(--insecure)

# --- the private key as unencrypted PEM ($work/key.pem) ----------------------------------

interactive=''
[ -t 0 ] && interactive=1
encrypted_hint="give a decrypted copy of it (made with: ssh-keygen -p -N '' -f COPY)"

# Copy the key so that ssh-keygen never complains about the original's permissions and
# never touches the original.
cp "$key_path" "$work/orig" || fatal "cannot read SSH private key '$key_path'"
chmod 600 "$work/orig"
pem_key=$work/key.pem
pub_key=$work/key.pub

if grep -q -E '^(ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+ AAAA' "$work/orig"; then
    fatal "'$key_path' is a public key; give the path of the private key"
fi

openssh_ed25519_to_pem() {
    # ssh-keygen cannot export Ed25519 private keys to PEM, so read the openssh-key-v1
    # container (PROTOCOL.key in OpenSSH) and wrap the 32-byte seed in PKCS#8 (RFC 8410).
    python3 - "$1" <<'PY'
import base64
import sys


def fail(message):
    sys.stderr.write(message + "\n")
    sys.exit(1)


class Reader:
    def __init__(self, data):
        self.data, self.pos = data, 0

    def u32(self):
        if self.pos + 4 > len(self.data):
            raise ValueError("truncated key")
        value = int.from_bytes(self.data[self.pos : self.pos + 4], "big")
        self.pos += 4
        return value

    def string(self):
        size = self.u32()
        if self.pos + size > len(self.data):
            raise ValueError("truncated key")
        value = self.data[self.pos : self.pos + size]
        self.pos += size
        return value


BEGIN, END = "-----BEGIN OPENSSH PRIVATE KEY-----", "-----END OPENSSH PRIVATE KEY-----"
MAGIC = b"openssh-key-v1\0"
text = open(sys.argv[1], "rb").read().decode("ascii", "replace")
try:
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    data = base64.b64decode("".join(body.split()), validate=True)
    if not data.startswith(MAGIC):
        raise ValueError("not an openssh-key-v1 key")
    outer = Reader(data[len(MAGIC) :])
    cipher, kdf, _kdf_options = outer.string(), outer.string(), outer.string()
    if cipher != b"none" or kdf != b"none":
        fail("the key is passphrase-protected")
    if outer.u32() != 1:
        raise ValueError("the file holds more than one key")
    public = Reader(outer.string())
    private = Reader(outer.string())
    if private.u32() != private.u32():
        raise ValueError("corrupt key (check integers differ)")
    if public.string() != b"ssh-ed25519" or private.string() != b"ssh-ed25519":
        raise ValueError("not an Ed25519 key")
    public_key, pk, sk = public.string(), private.string(), private.string()
    if len(pk) != 32 or len(sk) != 64 or sk[32:] != pk or public_key != pk:
        raise ValueError("corrupt Ed25519 key")
except (IndexError, ValueError) as error:
    fail(str(error))
der = bytes.fromhex("302e020100300506032b657004220420") + sk[:32]
sys.stdout.write(
    "-----BEGIN PRIVATE KEY-----\n"
    + base64.b64encode(der).decode()
    + "\n-----END PRIVATE KEY-----\n"
)
PY
}

if grep -q -- '-----BEGIN OPENSSH PRIVATE KEY-----' "$work/orig"; then
    # openssh-key-v1: "openssh-key-v1\0", then the cipher name as an SSH string; an
    # unencrypted key's is "none" (bytes 15..22 are 00 00 00 04 'n' 'o' 'n' 'e').
    sed -e '/^-----/d' "$work/orig" | tr -d ' \t\r\n' | base64 -d >"$work/orig.bin" 2>/dev/null ||
        fatal "'$key_path' is not a valid OpenSSH private key"
    cipher=$(head -c 23 "$work/orig.bin" | tail -c 8 | od -An -v -tx1 | tr -d ' \n')
    if [ "$cipher" != 000000046e6f6e65 ]; then
        [ -n "$interactive" ] || fatal "'$key_path' is passphrase-protected; run $PROG from a terminal to be asked for the passphrase, or $encrypted_hint"
        info "'$key_path' is passphrase-protected (only a temporary copy of it is decrypted)."
        ssh-keygen -q -p -N "" -f "$work/orig" >/dev/null 2>"$work/err" ||
            fatal "cannot decrypt '$key_path' (wrong passphrase?)"
    fi
    ssh-keygen -y -P "" -f "$work/orig" >"$pub_key" 2>"$work/err" ||
        fatal "cannot read '$key_path': $(tr '\n' ' ' <"$work/err")"
    case $(head -c 20 "$pub_key") in
        ssh-ed25519\ *)
            command -v python3 >/dev/null 2>&1 ||
                fatal "python3 is needed to convert an OpenSSH-format Ed25519 key (or give a PKCS#8 PEM key)"
            openssh_ed25519_to_pem "$work/orig" >"$pem_key" 2>"$work/err" ||
                fatal "cannot convert '$key_path' to PEM: $(tr '\n' ' ' <"$work/err")"
            ;;
        *)
            # RSA and ECDSA: ssh-keygen rewrites the copy as PKCS#1 / SEC1 PEM.
            ssh-keygen -q -p -m PEM -P "" -N "" -f "$work/orig" >/dev/null 2>"$work/err" ||
                fatal "cannot convert '$key_path' to PEM: $(tr '\n' ' ' <"$work/err")"
            cp "$work/orig" "$pem_key"
            ;;
    esac
    openssl pkey -in "$pem_key" -noout 2>/dev/null || fatal "cannot convert '$key_path' to PEM"
else
    # PEM (PKCS#1, SEC1, PKCS#8): openssl reads it, and writes it as unencrypted PKCS#8.
    if grep -q -E -- '-----BEGIN ENCRYPTED PRIVATE KEY-----|^Proc-Type: 4,ENCRYPTED' "$work/orig"; then
        [ -n "$interactive" ] || fatal "'$key_path' is passphrase-protected; run $PROG from a terminal to be asked for the passphrase, or $encrypted_hint"
        info "'$key_path' is passphrase-protected (only a temporary copy of it is decrypted)."
        passphrase=''
        IFS= read -r -s -p "Enter passphrase for $key_path: " passphrase </dev/tty || true
        echo >&2
        openssl pkey -in "$work/orig" -passin fd:3 -out "$pem_key" 3<<<"$passphrase" 2>"$work/err" ||
            fatal "cannot decrypt '$key_path' (wrong passphrase?)"
        passphrase=''
    else
        openssl pkey -in "$work/orig" -passin pass: -out "$pem_key" 2>/dev/null ||
            fatal "cannot read '$key_path' as a private key (expected an OpenSSH or PEM private key)"
    fi
    if ! ssh-keygen -y -P "" -f "$pem_key" >"$pub_key" 2>/dev/null; then
        # Older OpenSSH cannot read PKCS#8 Ed25519 keys: an Ed25519 SubjectPublicKeyInfo
        # ends with the 32-byte public key, which the SSH wire format wraps as
        # string "ssh-ed25519", string key.
        openssl pkey -in "$pem_key" -pubout -outform DER -out "$work/pub.der" 2>/dev/null ||
            fatal "cannot read '$key_path' as a private key"
        key_text=$(openssl pkey -in "$pem_key" -noout -text 2>/dev/null) || key_text=''
        [[ $key_text == "ED25519 Private-Key"* ]] ||
            fatal "unsupported key type in '$key_path' (use an RSA, ECDSA or Ed25519 key)"
        { printf '\000\000\000\013ssh-ed25519\000\000\000\040'; tail -c 32 "$work/pub.der"; } >"$work/pub.blob"
        echo "ssh-ed25519 $(base64 -w0 <"$work/pub.blob")" >"$pub_key"
    fi
fi

read -r pub_type _ <"$pub_key" || fatal "cannot derive the public key of '$key_path'"
case $pub_type in
    ssh-rsa) algorithm=rsa-sha256 digest=sha256 ;;
    ecdsa-sha2-nistp256) algorithm=ecdsa-sha256 digest=sha256 ;;
    ecdsa-sha2-nistp384) algorithm=ecdsa-sha384 digest=sha384 ;;
    ecdsa-sha2-nistp521) algorithm=ecdsa-sha512 digest=sha512 ;;
    ssh-ed25519) algorithm=ed25519-sha512 digest='' ;;
    *) fatal "unsupported key type '$pub_type' in '$key_path' (use an RSA, ECDSA or Ed25519 key)" ;;
esac

fingerprint=$(ssh-keygen -E md5 -l -f "$pub_key" 2>/dev/null | awk '{print $2}') || true
fingerprint=${fingerprint#MD5:}
[[ $fingerprint =~ ^([0-9a-f]{2}:){15}[0-9a-f]{2}$ ]] ||
    fatal "cannot compute the MD5 fingerprint of '$key_path'"
key_id="/$account/keys/$fingerprint"

# --- CloudAPI ----------------------------------------------------------------------------

# base64 (one line) of the signature of $1 by the key, as HTTP Signatures want it.
sign() {
    printf '%s' "$1" >"$work/signing-string"
    if [ "$algorithm" = ed25519-sha512 ]; then
        openssl pkeyutl -sign -rawin -inkey "$pem_key" -in "$work/signing-string" -out "$work/signature"
    else
        # PKCS#1 v1.5 for RSA, an ASN.1 DER (r, s) for ECDSA.
        openssl dgst "-$digest" -sign "$pem_key" -out "$work/signature" "$work/signing-string"
    fi 2>"$work/err" || fatal "cannot sign with '$key_path': $(tr '\n' ' ' <"$work/err")"
    base64 -w0 <"$work/signature"
}

# GET $1 into file $2 (extra curl arguments after); the HTTP status goes to $status.
# Fails (status 1) only if there was no HTTP answer; the reason is in $work/curl-err.
status=''
http_get() {
    local url=$1 out=$2
    shift 2
    status=$(curl "${curl_opts[@]}" -o "$out" -w '%{http_code}' "$@" "$url" 2>"$work/curl-err")
}

# Why the last curl got no answer: the first line of its complaint, and a hint for the
# common case of a test CloudAPI with a self-signed certificate.
curl_error() {
    local reason
    reason=$(head -n 1 "$work/curl-err" | sed -e 's/^curl: ([0-9]*) //' -e 's/ *$//')
    case $reason in
        *"SSL certificate problem"*)
            [ -n "$insecure" ] || reason="$reason (use -k if it has a self-signed certificate)" ;;
    esac
    printf '%s' "${reason:-no answer}"
}

# A top-level string field of the JSON object in file $1 ('' when absent).
json_get() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c '
import json, sys
try:
    value = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
value = value.get(sys.argv[1]) if isinstance(value, dict) else None
if isinstance(value, str):
    print(value)' "$2" <"$1" 2>/dev/null || true
    else
        local pattern="\"$2\""'[[:space:]]*:[[:space:]]*"([^"\\]|\\.)*"'
        { grep -o -E -- "$pattern" "$1" || true; } | head -n 1 |
            sed -E -e 's/^"[^"]*"[[:space:]]*:[[:space:]]*"//' -e 's/"$//' \
                -e 's/\\"/"/g' -e 's/\\\//\//g' -e 's/\\\\/\\/g'
    fi
}

# The server's explanation of a failed request, for an error message.
server_message() {
    local message
    message=$(json_get "$work/body" message)
    [ -n "$message" ] || message=$(head -c 200 "$work/body" 2>/dev/null || true)
    printf '%s' "$message" | tr '\000-\037' ' ' | sed -e 's/^ *//' -e 's/ *$//'
}

# A signed GET of CloudAPI path $1; the body goes to $work/body.
cloudapi_get() {
    local date signature
    date=$(LC_ALL=C date -u '+%a, %d %b %Y %H:%M:%S GMT')
    signature=$(sign "date: $date")
    http_get "$cloudapi$1" "$work/body" \
        -H "Date: $date" \
        -H "Accept: application/json" \
        -H "Authorization: Signature keyId=\"$key_id\",algorithm=\"$algorithm\",headers=\"date\",signature=\"$signature\"" ||
        fatal "could not reach CloudAPI at $cloudapi: $(curl_error)"
}

# Stop unless the last CloudAPI answer was a success; $1 says what was asked.
check_answer() {
    local message
    case $status in
        2??) return 0 ;;
        401) fatal "invalid credentials: CloudAPI at $cloudapi did not accept the key $fingerprint for account '$account' (is that key registered with the account?)" ;;
    esac
    message=$(server_message)
    fatal "$1 failed: CloudAPI answered HTTP $status${message:+: $message}"
}

if [ -z "$skip_checks" ]; then
    info "Checking CloudAPI at $cloudapi ..."
    http_get "$cloudapi/--ping" "$work/body" -H "Accept: application/json" ||
        fatal "could not reach CloudAPI at $cloudapi: $(curl_error)"
    [ "$status" = 200 ] ||
        fatal "could not reach CloudAPI at $cloudapi: GET /--ping answered HTTP $status"
    [ "$(json_get "$work/body" ping)" = pong ] ||
        fatal "could not reach CloudAPI at $cloudapi: GET /--ping did not answer {\"ping\": \"pong\"}"

    info "Checking the credentials of account '$account' (key $fingerprint) ..."
    cloudapi_get "/$account"
    check_answer "checking account '$account'"
fi

cloudapi_get "/$account/services"
check_answer "listing the services of account '$account'"
docker_url=$(json_get "$work/body" docker)
[ -n "$docker_url" ] ||
    fatal "CloudAPI at $cloudapi lists no 'docker' service for account '$account' (this datacenter has no Docker endpoint)"

hostport=${docker_url#tcp://}
[ "$hostport" != "$docker_url" ] || fatal "unexpected Docker endpoint '$docker_url' (expected tcp://HOST:PORT)"
hostport=${hostport%/}
re_v6='^\[([0-9A-Fa-f:.]+)\](:([0-9]+))?$'
re_name='^([A-Za-z0-9._-]+)(:([0-9]+))?$'
if [[ $hostport =~ $re_v6 ]]; then
    docker_host=${BASH_REMATCH[1]} docker_port=${BASH_REMATCH[3]:-2376}
    url_host="[$docker_host]"
    is_ip=1
elif [[ $hostport =~ $re_name ]]; then
    docker_host=${BASH_REMATCH[1]} docker_port=${BASH_REMATCH[3]:-2376}
    url_host=$docker_host
    is_ip=''
    [[ ! $docker_host =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || is_ip=1
else
    fatal "unexpected Docker endpoint '$docker_url' (expected tcp://HOST:PORT)"
fi
docker_url="tcp://$url_host:$docker_port"

# --- the server CA -----------------------------------------------------------------------

info "Fetching the CA of the Docker endpoint $docker_url ..."
ca_url="https://$url_host:$docker_port/ca.pem"
# The CA is what this download is for, so it cannot be used to verify it: like SDC's
# helper, fall back to an unverified (-k) download when the endpoint's certificate is
# not one the system trusts. The Docker client then verifies every connection with it.
if ! http_get "$ca_url" "$work/ca.pem"; then
    [ -z "$insecure" ] || fatal "could not download the server CA from $ca_url: $(curl_error)"
    http_get "$ca_url" "$work/ca.pem" --insecure ||
        fatal "could not download the server CA from $ca_url: $(curl_error)"
fi
[ "$status" = 200 ] || fatal "could not download the server CA from $ca_url: HTTP $status"
openssl x509 -in "$work/ca.pem" -noout 2>/dev/null ||
    fatal "$ca_url is not a PEM certificate"

# --- the client certificate --------------------------------------------------------------

cert_opts=()
[ "$algorithm" = ed25519-sha512 ] || cert_opts=(-sha256)
openssl req -new -x509 -key "$pem_key" "${cert_opts[@]}" -subj "/CN=$account" -days 365 \
    -out "$work/cert.pem" 2>"$work/err" ||
    fatal "cannot make the client certificate: $(tr '\n' ' ' <"$work/err")"

# --- the profile -------------------------------------------------------------------------

# A value for env.sh, quoted for the shell only when it needs it.
shell_word() {
    if [[ $1 =~ ^[A-Za-z0-9_./:@%+,=-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "$(printf '%s' "$1" | sed -e "s/'/'\\\\''/g")"
    fi
}

dir=$HOME/.sdc/docker/$profile
{
    echo "# Docker client settings for account '$account' on $cloudapi (made by $PROG $VERSION)"
    echo "export DOCKER_CERT_PATH=$(shell_word "$dir")"
    echo "export DOCKER_HOST=$(shell_word "$docker_url")"
    echo "export DOCKER_CLIENT_TIMEOUT=300"
    echo "export COMPOSE_HTTP_TIMEOUT=300"
    if [ -n "$is_ip" ]; then
        # A certificate cannot name an IP endpoint reliably: use TLS without verifying
        # the server's name, as SDC's helper did.
        echo "unset DOCKER_TLS_VERIFY"
        echo "alias docker=\"docker --tls\""
    else
        echo "export DOCKER_TLS_VERIFY=1"
    fi
    if [ -n "$print_sdc" ]; then
        echo "export SDC_URL=$(shell_word "$cloudapi")"
        echo "export SDC_ACCOUNT=$(shell_word "$account")"
        echo "export SDC_KEY_ID=$fingerprint"
        [ -z "$insecure" ] || echo "export SDC_TESTING=1"
    fi
} >"$work/env.sh"

mkdir -p "$dir" || fatal "cannot make the profile directory $dir"
chmod 700 "$dir"
install -m 600 "$pem_key" "$dir/key.pem"
install -m 644 "$work/cert.pem" "$dir/cert.pem"
install -m 644 "$work/ca.pem" "$dir/ca.pem"
install -m 644 "$work/env.sh" "$dir/env.sh"

info "Setup completed successfully for account '$account' (Docker endpoint $docker_url)."
info ""
info "To point your Docker client at it, run:"
info ""
info "    source $(shell_word "$dir/env.sh")"
info ""
info "which sets:"
info ""
[ -n "$quiet" ] || grep -E '^(export|unset|alias) ' "$dir/env.sh" | sed 's/^/    /'
