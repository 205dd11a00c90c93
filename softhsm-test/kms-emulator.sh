#!/usr/bin/env bash
# LocalStack's KMS on loopback, without Docker.
#   kms-emulator.sh install            create the venv (pinned versions) if missing
#   kms-emulator.sh start PORT DIR     start in the background, wait until KMS answers, print the pid
#   kms-emulator.sh run PORT DIR       run in the foreground until stdin closes (used by the tests)
#   kms-emulator.sh stop DIR           stop the one started with `start`
source "$(dirname "$0")/lib.sh"

install() {
    if [ -x "$KMS_VENV/bin/python" ] && "$KMS_VENV/bin/python" -c 'import localstack, boto3' 2>/dev/null; then
        return 0
    fi
    say "installing LocalStack's KMS emulator into $KMS_VENV"
    new_venv "$KMS_VENV"
    "$KMS_VENV/bin/pip" install -q --disable-pip-version-check \
        -c "$ROOT/softhsm-test/kms-emulator/constraints.txt" \
        'localstack-core[base-runtime]==4.10.0' 'cbor2<6'
}

# LocalStack's own certificate generator fails with current pyOpenSSL: give it one.
make_cert() {
    local dir="$1"
    [ -s "$dir/server.pem" ] && return 0
    "$KMS_VENV/bin/python" - "$dir/server.pem" <<'PY'
import datetime, sys
from cryptography import x509
from cryptography.x509.oid import NameOID
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
k = ec.generate_private_key(ec.SECP256R1())
n = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
now = datetime.datetime.now(datetime.timezone.utc)
c = (x509.CertificateBuilder().subject_name(n).issuer_name(n).public_key(k.public_key())
     .serial_number(x509.random_serial_number())
     .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
     .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
     .sign(k, hashes.SHA256()))
open(sys.argv[1], "wb").write(
    k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption()) + c.public_bytes(serialization.Encoding.PEM))
PY
}

launch() {
    local port="$1" dir="$2"
    mkdir -p "$dir/volume" "$dir/tmp"
    make_cert "$dir"
    cd "$dir"
    setsid env SERVICES=kms EAGER_SERVICE_LOADING=1 GATEWAY_SERVER=hypercorn \
        GATEWAY_LISTEN="127.0.0.1:$port" DNS_ADDRESS=0 DISABLE_EVENTS=1 SKIP_INFRA_DOWNLOADS=1 \
        LOCALSTACK_VOLUME_DIR="$dir/volume" TMPDIR="$dir/tmp" CUSTOM_SSL_CERT_PATH="$dir/server.pem" \
        "$KMS_VENV/bin/python" -m localstack.runtime.main >"$dir/emulator.log" 2>&1 &
    echo $!
}

# The emulator runs in its own process group (setsid): stop the whole group.
stop_pid() {
    local pid="$1" i
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || return 0
    for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
}

wait_ready() {
    local port="$1" i
    for i in $(seq 1 150); do
        if curl -fsS "http://127.0.0.1:$port/_localstack/health" 2>/dev/null | grep -q '"kms": "\(available\|running\)"'; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

case "${1:-}" in
    install) install ;;
    start)
        [ $# -eq 3 ] || die "usage: $0 start PORT DIR"
        install
        pid="$(launch "$2" "$3")"
        echo "$pid" >"$3/emulator.pid"
        wait_ready "$2" || { cat "$3/emulator.log" >&2; die "the KMS emulator did not start on port $2"; }
        echo "$pid"
        ;;
    run)
        [ $# -eq 3 ] || die "usage: $0 run PORT DIR"
        [ -x "$KMS_VENV/bin/python" ] || die "the KMS emulator is not installed: run softhsm-test/install-deps.sh"
        parent=$PPID
        pid="$(launch "$2" "$3")"
        trap 'stop_pid "$pid"' EXIT
        if wait_ready "$2"; then echo "ready"; else cat "$3/emulator.log" >&2; exit 1; fi
        until_parent_goes "$parent"
        ;;
    stop)
        [ $# -eq 2 ] || die "usage: $0 stop DIR"
        if [ -s "$2/emulator.pid" ]; then stop_pid "$(cat "$2/emulator.pid")"; rm -f "$2/emulator.pid"; fi
        ;;
    *) die "usage: $0 install | start PORT DIR | run PORT DIR | stop DIR" ;;
esac
