#!/usr/bin/env bash
# The test command: installs what the tests use (SoftHSM2, pkcs11-tool, LocalStack's KMS),
# builds the kryoptic token, checks formatting and lints, then runs every test against the
# real parts.
source "$(dirname "$0")/lib.sh"

"$ROOT/softhsm-test/install-deps.sh"
cd "$ROOT"
export HSM_BRIDGE_KMS_VENV="$KMS_VENV"
say "building the kryoptic token"
HSM_BRIDGE_KRYOPTIC_MODULE="$("$ROOT/softhsm-test/build-kryoptic.sh" | tail -n 1)"
export HSM_BRIDGE_KRYOPTIC_MODULE

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
say "building the PKCS#11 fault-injection module"
cargo build --locked -p pkcs11-faults
say "cargo test"
cargo test --locked -- --test-threads="${HSM_BRIDGE_TEST_THREADS:-4}"
