# Shared helpers for the softhsm-test scripts. Sourced, not run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${HSM_BRIDGE_WORK:-$ROOT/.work}"
KMS_VENV="${HSM_BRIDGE_KMS_VENV:-$WORK/kms-venv}"
case "$KMS_VENV" in /*) ;; *) KMS_VENV="$PWD/$KMS_VENV" ;; esac
SOFTHSM_MODULE="${SOFTHSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# A new, empty Python 3.11 virtualenv at $1 (what Debian 12 ships; LocalStack 4.10 needs it).
new_venv() {
    local py
    py="$(command -v python3.11 || command -v python3)"
    "$py" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
        || die "Python 3.11 (Debian 12's python3) is needed for $1"
    rm -rf "$1"
    "$py" -m venv "$1"
}

# For `run` modes: returns when whoever started us goes away (it closes our stdin, or the
# process `$1` is gone).
until_parent_goes() {
    local parent="$1" reader
    cat <&0 >/dev/null &
    reader=$!
    while kill -0 "$parent" 2>/dev/null && kill -0 "$reader" 2>/dev/null; do sleep 1; done
    kill "$reader" 2>/dev/null || true
}
