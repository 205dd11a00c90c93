#!/usr/bin/env bash
# Builds the kryoptic PKCS#11 soft token (softhsm-test/kryoptic, a cdylib over the crates.io
# `kryoptic-lib` with features `minimal` + `dynamic`, linked against the system OpenSSL 3.0)
# and prints the absolute path of the module as the last and only line on stdout. Everything
# else goes to stderr. Safe to run again: a no-op cargo build when nothing changed (< 1 s).
#
#   module="$(softhsm-test/build-kryoptic.sh)"
#   KRYOPTIC_CONF=/path/kryoptic.toml pkcs11-tool --module "$module" -L
#
# Environment: CARGO (default: cargo), HSM_BRIDGE_WORK (default: <repo>/.work; the build
# goes to $HSM_BRIDGE_WORK/kryoptic-target), KRYOPTIC_CARGO_ARGS (extra cargo arguments,
# e.g. --offline).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CRATE="$ROOT/softhsm-test/kryoptic"
TARGET_DIR="$WORK/kryoptic-target"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$PWD/$TARGET_DIR" ;; esac
MODULE="$TARGET_DIR/release/libkryoptic_pkcs11.so"
CARGO="${CARGO:-cargo}"

[ -f "$CRATE/Cargo.toml" ] || die "kryoptic crate not found at $CRATE"
[ -f "$CRATE/Cargo.lock" ] || die "$CRATE/Cargo.lock is missing (it is committed; restore it)"

# --- build prerequisites ------------------------------------------------------------------
# bindgen (in kryoptic-lib and ossl-sys) needs libclang and clang's headers; ossl-sys finds
# OpenSSL >= 3.0.7 with pkg-config; rusqlite links the system libsqlite3.
missing=()
if command -v dpkg-query >/dev/null; then
    for p in clang libclang-dev libssl-dev libsqlite3-dev pkg-config; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$p")
    done
else
    command -v clang >/dev/null || missing+=("clang")
    command -v pkg-config >/dev/null || missing+=("pkg-config")
fi
if [ "${#missing[@]}" -gt 0 ]; then
    die "building kryoptic needs these missing packages: ${missing[*]}
  install them with: sudo apt-get install ${missing[*]}
  (or run softhsm-test/install-deps.sh)"
fi
pkg-config --exists openssl \
    || die "pkg-config cannot find openssl (install libssl-dev)"
pkg-config --atleast-version=3.0.7 openssl \
    || die "kryoptic needs OpenSSL >= 3.0.7; pkg-config reports $(pkg-config --modversion openssl)"
pkg-config --exists sqlite3 \
    || die "pkg-config cannot find sqlite3 (install libsqlite3-dev)"
command -v "$CARGO" >/dev/null \
    || die "cargo not found (install a Rust toolchain, e.g. with rustup; edition 2024 needs Rust >= 1.85)"

# --- build ----------------------------------------------------------------------------------
say "building kryoptic PKCS#11 module (release) in $TARGET_DIR"
# cargo writes its progress to stderr; keep stdout for the module path alone.
# shellcheck disable=SC2086
CARGO_TARGET_DIR="$TARGET_DIR" "$CARGO" build --release --locked \
    --manifest-path "$CRATE/Cargo.toml" ${KRYOPTIC_CARGO_ARGS:-} >&2 \
    || die "cargo build of the kryoptic module failed (see the messages above)"

[ -f "$MODULE" ] || die "cargo succeeded but $MODULE does not exist"
for sym in C_GetFunctionList C_GetInterfaceList C_GetInterface; do
    if command -v nm >/dev/null; then
        nm -D --defined-only "$MODULE" | grep -qw "$sym" \
            || die "$MODULE does not export $sym"
    fi
done
printf '%s\n' "$MODULE"
