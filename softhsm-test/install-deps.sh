#!/usr/bin/env bash
# Installs what the scripts and tests use: SoftHSM2 and OpenSC's pkcs11-tool from Debian,
# Python for the KMS emulator, and the build tools. Safe to run again.
source "$(dirname "$0")/lib.sh"

PKGS=(softhsm2 opensc python3 python3-venv python3-pip curl ca-certificates openssl sqlite3
      build-essential pkg-config clang libclang-dev libssl-dev libsqlite3-dev)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -e "$SOFTHSM_MODULE" ] || die "SoftHSM2 module not found at $SOFTHSM_MODULE"
command -v pkcs11-tool >/dev/null || die "pkcs11-tool (opensc) is missing"
"$(dirname "$0")/kms-emulator.sh" install
"$(dirname "$0")/kmip-server.sh" install
"$(dirname "$0")/postgres.sh" install
