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
