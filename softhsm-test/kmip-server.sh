#!/usr/bin/env bash
# PyKMIP's server on loopback, standing in for a Data Security Manager (KMIP over TLS with
# client certificates).
#   kmip-server.sh install           create the venv (pinned versions) if missing
#   kmip-server.sh certs DIR         make an ECDSA P-256 CA, server and client certificates
#   kmip-server.sh run PORT DIR      run in the foreground until stdin closes (used by the tests)
# PyKMIP's TLS 1.2 cipher list has no ECDHE-RSA-GCM suite, so the certificates are ECDSA.
source "$(dirname "$0")/lib.sh"

KMIP_VENV="${HSM_BRIDGE_KMIP_VENV:-$WORK/kmip-venv}"
case "$KMIP_VENV" in /*) ;; *) KMIP_VENV="$PWD/$KMIP_VENV" ;; esac

install() {
    if [ -x "$KMIP_VENV/bin/pykmip-server" ] && "$KMIP_VENV/bin/python" -c 'import kmip' 2>/dev/null; then
        return 0
    fi
    say "installing PyKMIP into $KMIP_VENV"
    new_venv "$KMIP_VENV"
    "$KMIP_VENV/bin/pip" install -q --disable-pip-version-check \
        -c "$ROOT/softhsm-test/kmip-server/constraints.txt" 'PyKMIP==0.11.0'
}

certs() {
    local d="$1"
    mkdir -p "$d"
    (
        cd "$d"
        openssl ecparam -name prime256v1 -genkey -noout -out ca.key.ec
        openssl req -x509 -new -key ca.key.ec -days 30 -subj /CN=hsm-bridge-test-ca -out ca.pem
        for who in server client; do
            openssl ecparam -name prime256v1 -genkey -noout -out "$who.key.ec"
            openssl pkcs8 -topk8 -nocrypt -in "$who.key.ec" -out "$who.key"
        done
        openssl req -new -key server.key -subj /CN=127.0.0.1 -out server.csr
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key.ec -CAcreateserial -days 30 \
            -extfile server.ext -out server.pem
        openssl req -new -key client.key -subj /CN=hsm-bridge -out client.csr
        printf 'extendedKeyUsage=clientAuth\nbasicConstraints=critical,CA:FALSE\n' >client.ext
        openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key.ec -CAcreateserial -days 30 \
            -extfile client.ext -out client.pem
        chmod 600 ./*.key ./*.key.ec
    ) 2>/dev/null
}

run() {
    local port="$1" d="$2"
    [ -x "$KMIP_VENV/bin/pykmip-server" ] || die "PyKMIP is not installed: run softhsm-test/install-deps.sh"
    [ -s "$d/server.pem" ] || certs "$d"
    mkdir -p "$d/policies"
    cat >"$d/server.conf" <<CONF
[server]
hostname=127.0.0.1
port=$port
certificate_path=$d/server.pem
key_path=$d/server.key
ca_path=$d/ca.pem
auth_suite=TLS1.2
policy_path=$d/policies
enable_tls_client_auth=True
database_path=$d/pykmip.db
CONF
    local parent=$PPID
    # Its own process group: PyKMIP starts helper processes, and they must go with it.
    setsid "$KMIP_VENV/bin/pykmip-server" -f "$d/server.conf" -l "$d/server.log" >"$d/out.log" 2>&1 &
    KMIP_PID=$!
    trap 'kill -9 -- "-$KMIP_PID" 2>/dev/null; kill -9 "$KMIP_PID" 2>/dev/null' EXIT
    local i
    for i in $(seq 1 100); do
        if grep -q "Starting connection service" "$d/server.log" 2>/dev/null; then
            echo "ready"
            cat <&0 >/dev/null &
            local reader=$!
            while kill -0 "$parent" 2>/dev/null && kill -0 "$reader" 2>/dev/null && kill -0 "$KMIP_PID" 2>/dev/null; do
                sleep 1
            done
            kill "$reader" 2>/dev/null || true
            return 0
        fi
        sleep 0.1
    done
    cat "$d/server.log" >&2 || true
    die "the KMIP server did not start on port $port"
}

case "${1:-}" in
    install) install ;;
    certs) [ $# -eq 2 ] || die "usage: $0 certs DIR"; certs "$2" ;;
    run) [ $# -eq 3 ] || die "usage: $0 run PORT DIR"; run "$2" "$3" ;;
    tool) shift; exec "$KMIP_VENV/bin/python" "$ROOT/softhsm-test/kmip-tool.py" "$@" ;;
    *) die "usage: $0 install | certs DIR | run PORT DIR | tool ARGS..." ;;
esac
