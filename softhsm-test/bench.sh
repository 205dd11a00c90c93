#!/usr/bin/env bash
# The benchmark (not part of the tests' pass/fail): LocalStack's KMS, SoftHSM2 tokens with N
# AES-256 source keys and the daemon (release build); uploads at each concurrency level for a
# fixed time after a warm-up; prints uploads/s, p50/p95/p99 latency, the daemon's CPU per upload
# (utime+stime from /proc) and RSS, the emulator's CPU per upload, KMS calls per upload by
# operation (the daemon's own call counter), and the cold start to ready. A sample of every
# level's keys is proven in KMS to hold the source material. Also writes the numbers as JSON.
#
#   ./softhsm-test/bench.sh                      # levels 1 8 32 64, 20 s each, 64 keys
#   LEVELS="1 8" DURATION=10 KEYS=16 ./softhsm-test/bench.sh
#   HSM_BRIDGE_BIN=target/profiling/hsm-bridge ./softhsm-test/bench.sh   # a build of your own
#
# The emulator enforces no AWS quotas, so the daemon's request quotas are raised here: the
# benchmark measures the bridge, not AWS's pacing.
source "$(dirname "$0")/lib.sh"

LEVELS="${LEVELS:-1 8 32 64}"
DURATION="${DURATION:-20}"
WARMUP="${WARMUP:-3}"
KEYS="${KEYS:-64}"

"$ROOT/softhsm-test/install-deps.sh"
if [ -n "${HSM_BRIDGE_BIN:-}" ]; then
    BIN="$HSM_BRIDGE_BIN"
    say "benchmarking $BIN"
else
    say "building hsm-bridge (release)"
    (cd "$ROOT" && cargo build --release --locked --quiet)
    BIN="$ROOT/target/release/hsm-bridge"
fi

B="$WORK/bench"
rm -rf "$B"
mkdir -p "$B/tokens" "$B/secrets" "$B/kms"
chmod 700 "$B/secrets"
cleanup() {
    [ -n "${DAEMON_PID:-}" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
    "$ROOT/softhsm-test/kms-emulator.sh" stop "$B/kms" || true
}
trap cleanup EXIT

export SOFTHSM2_CONF="$B/softhsm2.conf"
printf 'directories.tokendir = %s/tokens\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n' "$B" >"$SOFTHSM2_CONF"
umask 077
head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$B/secrets/token.pin"
head -c 48 /dev/urandom >"$B/secrets/jwt.key"
PIN="$(cat "$B/secrets/token.pin")"
softhsm2-util --init-token --free --label hsm-bridge --so-pin "so-$PIN" --pin "$PIN" >/dev/null
softhsm2-util --init-token --free --label bench-src --so-pin "so-$PIN" --pin "$PIN" >/dev/null
umask 022

say "$KEYS AES-256 source keys"
P11=(pkcs11-tool --module "$SOFTHSM_MODULE" --token-label bench-src --login --pin "$PIN")
KEYS_JSON="["
for i in $(seq 1 "$KEYS"); do
    head -c 32 /dev/urandom >"$B/secrets/k$i.bin"
    "${P11[@]}" --write-object "$B/secrets/k$i.bin" --type secrkey --key-type AES:32 \
        --label "bench-$i" --id "$(printf '%04x' "$i")" --sensitive --extractable --usage-decrypt >/dev/null 2>&1
    [ "$i" -gt 1 ] && KEYS_JSON+=","
    KEYS_JSON+="{\"label\":\"bench-$i\",\"material\":\"$(base64 -w0 <"$B/secrets/k$i.bin")\"}"
done
KEYS_JSON+="]"

say "starting LocalStack's KMS"
KMS_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$ROOT/softhsm-test/kms-emulator.sh" start "$KMS_PORT" "$B/kms" >/dev/null
EMU_PID="$(cat "$B/kms/emulator.pid")"
export AWS_ACCESS_KEY_ID=000000000000 AWS_SECRET_ACCESS_KEY=bench AWS_EC2_METADATA_DISABLED=true AWS_DEFAULT_REGION=us-east-1

cat >"$B/hsm-bridge.toml" <<CONF
[server]
listen = "127.0.0.1:0"
plaintext = true
address_file = "$B/address"
max_connections = 1024

[auth]
issuer = "hsm-bridge-bench"
jwt_secret_file = "$B/secrets/jwt.key"
allowed_groups = ["CCKM Admins"]
token_ttl_secs = 3600

[store]
path = "$B/state/hsm-bridge.db"

[logging]
level = "warn"

[sync]
interval_secs = 0

[[tokens]]
name = "bridge"
module = "$SOFTHSM_MODULE"
token_label = "hsm-bridge"
pin_file = "$B/secrets/token.pin"
profile = "softhsm2"
role = "bridge"
sessions = 16

[[tokens]]
name = "luna"
module = "$SOFTHSM_MODULE"
token_label = "bench-src"
pin_file = "$B/secrets/token.pin"
profile = "softhsm2"
role = "source"
sessions = 16

[[kms]]
name = "bench"
id = "3d6b8f8e-7f8e-4f52-9a53-2c1bde1b0a01"
account_id = "000000000000"
regions = ["us-east-1"]
endpoint_url = "http://127.0.0.1:$KMS_PORT"
wrapping_key_spec = "RSA_2048"
request_quotas = { GetParametersForImport = 100000, CreateKey = 100000, ImportKeyMaterial = 100000, DescribeKey = 100000 }
CONF

say "starting hsm-bridge"
START="$(date +%s.%N)"
"$BIN" serve --config "$B/hsm-bridge.toml" >"$B/daemon.out" 2>"$B/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 1 600); do [ -s "$B/address" ] && break; sleep 0.05; done
[ -s "$B/address" ] || { cat "$B/daemon.log" >&2; die "hsm-bridge did not start"; }
READY="$(date +%s.%N)"
URL="$(cat "$B/address")"
TOKEN="$("$BIN" token --config "$B/hsm-bridge.toml" --user bench --group "CCKM Admins")"

cat >"$B/bench.json" <<JSON
{"url": "$URL", "token": "$TOKEN", "kms": "bench", "region": "us-east-1",
 "kms_endpoint": "http://127.0.0.1:$KMS_PORT", "pid": $DAEMON_PID, "emulator_pid": $EMU_PID,
 "emulator_log": "$B/kms/emulator.log",
 "levels": [$(echo "$LEVELS" | tr ' ' ',')], "duration": $DURATION, "warmup": $WARMUP,
 "cold_start_s": $(python3 -c "print($READY - $START)"),
 "json_out": "$B/results.json", "keys": $KEYS_JSON}
JSON
say "uploading at concurrency $LEVELS, ${DURATION}s each after ${WARMUP}s of warm-up"
"$KMS_VENV/bin/python" "$ROOT/softhsm-test/bench.py" "$B/bench.json"
