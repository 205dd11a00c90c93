#!/usr/bin/env bash
# The main job, end to end on this machine:
#   1. provision two SoftHSM2 tokens (the bridge token and a "Luna partition" holding keys),
#      a kryoptic token holding an RSA key, and LocalStack's KMS on loopback;
#   2. start hsm-bridge over HTTPS and wait until its tokens passed their self-test;
#   3. create keys (in the vault and in the partition) and upload them with the CipherTrust
#      Manager API, printing the answers;
#   4. prove in KMS that each uploaded key is the source key.
# Everything lives in .work/demo and is stopped when the script ends.
source "$(dirname "$0")/lib.sh"

"$ROOT/softhsm-test/install-deps.sh"
say "building hsm-bridge"
(cd "$ROOT" && cargo build --locked --quiet)
BIN="$ROOT/target/debug/hsm-bridge"

DEMO="$WORK/demo"
rm -rf "$DEMO"
mkdir -p "$DEMO/tokens" "$DEMO/secrets" "$DEMO/kms"
chmod 700 "$DEMO/secrets"
cleanup() {
    [ -n "${DAEMON_PID:-}" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null
    "$ROOT/softhsm-test/kms-emulator.sh" stop "$DEMO/kms" || true
}
trap cleanup EXIT

say "provisioning SoftHSM2 tokens in $DEMO/tokens"
export SOFTHSM2_CONF="$DEMO/softhsm2.conf"
cat >"$SOFTHSM2_CONF" <<CONF
directories.tokendir = $DEMO/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
CONF
umask 077
head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DEMO/secrets/token.pin"
head -c 48 /dev/urandom >"$DEMO/secrets/jwt.key"
PIN="$(cat "$DEMO/secrets/token.pin")"
softhsm2-util --init-token --free --label hsm-bridge --so-pin "so-$PIN" --pin "$PIN" >/dev/null
softhsm2-util --init-token --free --label luna-partition --so-pin "so-$PIN" --pin "$PIN" >/dev/null
umask 022

say "putting keys into the \"Luna partition\" (as an HSM administrator would)"
P11=(pkcs11-tool --module "$SOFTHSM_MODULE" --token-label luna-partition --login --pin "$PIN")
head -c 32 /dev/urandom >"$DEMO/secrets/luna-aes.bin"
"${P11[@]}" --write-object "$DEMO/secrets/luna-aes.bin" --type secrkey --key-type AES:32 \
    --label payments-aes --id 0a01 --sensitive --extractable --usage-decrypt >/dev/null 2>&1
"${P11[@]}" --keygen --key-type GENERIC:48 --label signing-hmac --id 0a02 \
    --sensitive --extractable --usage-sign >/dev/null 2>&1

say "a second token family: kryoptic, holding an RSA signing key"
KRYOPTIC_MODULE="$("$ROOT/softhsm-test/build-kryoptic.sh" | tail -n 1)"
export KRYOPTIC_CONF="$DEMO/kryoptic.conf"
mkdir -p "$DEMO/kryoptic"
printf '[[slots]]\nslot = 1\ndbtype = "sqlite"\ndbargs = "%s/kryoptic/slot1.sql"\n' "$DEMO" >"$KRYOPTIC_CONF"
K11=(pkcs11-tool --module "$KRYOPTIC_MODULE")
"${K11[@]}" --init-token --slot 1 --label kryoptic-partition --so-pin "so-$PIN" >/dev/null 2>&1
"${K11[@]}" --token-label kryoptic-partition --login --login-type so --so-pin "so-$PIN" \
    --init-pin --new-pin "$PIN" >/dev/null 2>&1
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -outform DER \
    -out "$DEMO/secrets/signing-rsa.der" 2>/dev/null
"${K11[@]}" --token-label kryoptic-partition --login --pin "$PIN" \
    --write-object "$DEMO/secrets/signing-rsa.der" --type privkey --label signing-rsa --id 0b01 \
    --sensitive --extractable --usage-sign >/dev/null 2>&1

say "starting LocalStack's KMS on loopback"
KMS_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$ROOT/softhsm-test/kms-emulator.sh" start "$KMS_PORT" "$DEMO/kms" >/dev/null
export AWS_ACCESS_KEY_ID=000000000000 AWS_SECRET_ACCESS_KEY=demo AWS_EC2_METADATA_DISABLED=true

say "TLS certificate for the daemon"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 -subj /CN=localhost \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -addext "basicConstraints=critical,CA:FALSE" \
    -keyout "$DEMO/secrets/tls.key" -out "$DEMO/tls.crt" 2>/dev/null

cat >"$DEMO/hsm-bridge.toml" <<CONF
[server]
listen = "127.0.0.1:0"
tls_cert_file = "$DEMO/tls.crt"
tls_key_file = "$DEMO/secrets/tls.key"
address_file = "$DEMO/address"

[auth]
issuer = "hsm-bridge-demo"
jwt_secret_file = "$DEMO/secrets/jwt.key"
allowed_groups = ["CCKM Admins"]

[store]
path = "$DEMO/state/hsm-bridge.db"

[[tokens]]
name = "bridge"
module = "$SOFTHSM_MODULE"
token_label = "hsm-bridge"
pin_file = "$DEMO/secrets/token.pin"
profile = "softhsm2"
role = "bridge"

[[tokens]]
name = "luna"
module = "$SOFTHSM_MODULE"
token_label = "luna-partition"
pin_file = "$DEMO/secrets/token.pin"
profile = "softhsm2"
role = "source"

[[tokens]]
name = "kryoptic"
module = "$KRYOPTIC_MODULE"
token_label = "kryoptic-partition"
pin_file = "$DEMO/secrets/token.pin"
profile = "kryoptic"
role = "source"

[[kms]]
name = "demo-account"
id = "6f0a2d64-5d2b-4a3e-9d57-0c1f3a1e9b10"
account_id = "000000000000"
regions = ["us-east-1"]
endpoint_url = "http://127.0.0.1:$KMS_PORT"
wrapping_key_spec = "RSA_4096"
CONF

say "what each token proved (hsm-bridge probe)"
"$BIN" probe --config "$DEMO/hsm-bridge.toml" 2>/dev/null

say "starting hsm-bridge"
"$BIN" serve --config "$DEMO/hsm-bridge.toml" >"$DEMO/daemon.out" 2>"$DEMO/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 1 300); do [ -s "$DEMO/address" ] && break; sleep 0.1; done
[ -s "$DEMO/address" ] || { cat "$DEMO/daemon.log" >&2; die "hsm-bridge did not start"; }
URL="$(cat "$DEMO/address")"
echo "listening on $URL"
TOKEN="$("$BIN" token --config "$DEMO/hsm-bridge.toml" --user demo --group "CCKM Admins")"

api() { # METHOD PATH [JSON]
    curl -sS --cacert "$DEMO/tls.crt" -X "$1" "$URL$2" -H "Authorization: Bearer $TOKEN" \
        -H 'Content-Type: application/json' ${3:+-d "$3"}
}
show() { "$KMS_VENV/bin/python" -c '
import json, sys
d = json.load(sys.stdin)
keep = sys.argv[1].split(",")
def pick(d, k):
    for part in k.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d
print(json.dumps({k: pick(d, k) for k in keep}, indent=2))
' "$1"; }

say "vault: generate an AES-256 key inside the bridge token"
VAULT_AES="$(api POST /api/v1/vault/keys2 '{"name":"orders-aes","algorithm":"aes","size":256}')"
echo "$VAULT_AES" | show id,name,algorithm,size,origin,storage.mechanism
VAULT_AES_ID="$(echo "$VAULT_AES" | "$KMS_VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["id"])')"

say "vault: import an HMAC-SHA256 key (the material is pushed into the token at once)"
head -c 32 /dev/urandom >"$DEMO/secrets/vault-hmac.bin"
HEX="$(od -An -tx1 "$DEMO/secrets/vault-hmac.bin" | tr -d ' \n')"
api POST /api/v1/vault/keys2 "{\"name\":\"webhook-hmac\",\"algorithm\":\"hmac-sha256\",\"material\":\"$HEX\"}" \
    | show id,name,algorithm,size,origin

upload() { # TIER IDENTIFIER SPEC ALIAS [KEY_USAGE]
    api POST /api/v1/cckm/aws/upload-key "{\"source_key_tier\":\"$1\",\"source_key_identifier\":\"$2\",
        \"kms\":\"demo-account\",\"region\":\"us-east-1\",
        \"aws_param\":{\"Alias\":\"$4\",\"CustomerMasterKeySpec\":\"$3\",\"Description\":\"uploaded by the demo\",
                      ${5:+\"KeyUsage\":\"$5\",}
                      \"Tags\":[{\"TagKey\":\"source\",\"TagValue\":\"$1\"}]}}"
}
FIELDS=id,key_source,local_key_name,aws_param.KeyID,aws_param.Arn,aws_param.KeyState,aws_param.CustomerMasterKeySpec,aws_param.Alias,upload.wrapping_algorithm,upload.token

say "upload-key: local tier, AES-256 from the vault"
upload local "$VAULT_AES_ID" SYMMETRIC_DEFAULT orders-aes | tee "$DEMO/u1.json" | show "$FIELDS"
say "upload-key: local tier, HMAC from the vault (by name)"
upload local webhook-hmac HMAC_256 webhook-hmac | tee "$DEMO/u2.json" | show "$FIELDS"
say "upload-key: hsm-luna tier, AES-256 from the partition (by label)"
upload hsm-luna payments-aes SYMMETRIC_DEFAULT payments-aes | tee "$DEMO/u3.json" | show "$FIELDS"
say "upload-key: hsm-luna tier, HMAC-SHA384 generated in the partition (by hex CKA_ID)"
upload hsm-luna 0a02 HMAC_384 signing-hmac | tee "$DEMO/u4.json" | show "$FIELDS"

say "upload-key: hsm-luna tier, an RSA-2048 private key from the kryoptic token (RSA_AES_KEY_WRAP_SHA_256)"
upload hsm-luna signing-rsa RSA_2048 signing-rsa SIGN_VERIFY | tee "$DEMO/u5.json" | show "$FIELDS"

say "a refused request: the answer is CipherTrust's error body, and nothing reaches AWS"
upload local webhook-hmac SYMMETRIC_DEFAULT wrong-spec; echo

say "proof: the keys in KMS are the source keys"
"$KMS_VENV/bin/python" - "$DEMO" "$KMS_PORT" "$PIN" "$SOFTHSM_MODULE" <<'PY'
import json, subprocess, sys, os, hmac, hashlib
import boto3
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
demo, port, pin, module = sys.argv[1:]
kms = boto3.client("kms", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                   aws_access_key_id="000000000000", aws_secret_access_key="demo")
def key_id(n):
    return json.load(open(f"{demo}/u{n}.json"))["aws_param"]["KeyID"]
def aes_decrypt(key, blob):  # LocalStack ciphertext: key id | IV | tag | AES-GCM body
    d = Cipher(algorithms.AES(key), modes.GCM(blob[36:52], blob[52:68])).decryptor()
    out = d.update(blob[68:]) + d.finalize()
    return out[:-out[-1]]
msg = os.urandom(24)
# HMAC imported into the vault: KMS GenerateMac equals the HMAC of the known material.
mac = kms.generate_mac(KeyId=key_id(2), MacAlgorithm="HMAC_SHA_256", Message=msg)["Mac"]
mine = hmac.new(open(f"{demo}/secrets/vault-hmac.bin", "rb").read(), msg, hashlib.sha256).digest()
print("local HMAC_256:        KMS MAC == HMAC(source material):", mac == mine)
# AES in the partition: a KMS ciphertext decrypts with the partition's key material.
ct = kms.encrypt(KeyId=key_id(3), Plaintext=msg)["CiphertextBlob"]
print("hsm-luna AES:          KMS ciphertext decrypts with the source key:",
      aes_decrypt(open(f"{demo}/secrets/luna-aes.bin", "rb").read(), ct) == msg)
# HMAC generated in the partition: the token's own HMAC equals KMS's.
open(f"{demo}/msg.bin", "wb").write(msg)
subprocess.run(["pkcs11-tool", "--module", module, "--token-label", "luna-partition", "--login",
                "--pin", pin, "--sign", "--mechanism", "SHA384-HMAC", "--id", "0a02",
                "--input-file", f"{demo}/msg.bin", "--output-file", f"{demo}/mac.bin"],
               check=True, capture_output=True)
theirs = kms.generate_mac(KeyId=key_id(4), MacAlgorithm="HMAC_SHA_384", Message=msg)["Mac"]
print("hsm-luna HMAC_384:     KMS MAC == the partition's own MAC:",
      theirs == open(f"{demo}/mac.bin", "rb").read())
# RSA private key in the kryoptic token: KMS holds its public key and signs with its private key.
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives import hashes
priv = serialization.load_der_private_key(open(f"{demo}/secrets/signing-rsa.der", "rb").read(), None)
spki = priv.public_key().public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
print("hsm-luna RSA_2048:     KMS GetPublicKey == the token key's public key:",
      kms.get_public_key(KeyId=key_id(5))["PublicKey"] == spki)
sig = kms.sign(KeyId=key_id(5), Message=msg, MessageType="RAW",
               SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_256")["Signature"]
priv.public_key().verify(sig, msg, padding.PKCS1v15(), hashes.SHA256())
print("hsm-luna RSA_2048:     a KMS signature verifies with the token key: True")
# AES generated in the vault: KMS and the bridge agree on a round trip through KMS.
ct = kms.encrypt(KeyId=key_id(1), Plaintext=msg)["CiphertextBlob"]
print("local AES (generated): KMS decrypts its own ciphertext:",
      kms.decrypt(CiphertextBlob=ct)["Plaintext"] == msg,
      "(the test suite proves generated keys by unwrapping them in the token)")
PY

say "the records, as GET /api/v1/cckm/aws/keys returns them"
api GET "/api/v1/cckm/aws/keys?limit=10" | "$KMS_VENV/bin/python" -c '
import json, sys
d = json.load(sys.stdin)
print("total:", d["total"])
for r in d["resources"]:
    p = r["aws_param"]
    cols = (p["Alias"][0], p["KeyID"], p["CustomerMasterKeySpec"], p["KeyState"], r["key_source"], r["local_key_name"])
    print("  %-22s %s  %-18s %-8s from %s:%s" % cols)
'
say "done; the daemon log is $DEMO/daemon.log"
