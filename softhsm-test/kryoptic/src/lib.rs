//! kryoptic as a PKCS#11 shared object (`libkryoptic_pkcs11.so`).
//!
//! Mirrors `src/lib.rs` of the published `kryoptic` crate (1.5.x): the module exports the
//! PKCS#11 entry points `C_GetFunctionList`, `C_GetInterfaceList` and `C_GetInterface`;
//! every other function is reached through the function list, as PKCS#11 consumers
//! (cryptoki, pkcs11-tool, p11-kit) do.

use kryoptic_lib::fns::general::{fn_get_function_list, fn_get_interface, fn_get_interface_list};
use kryoptic_lib::pkcs11::*;

/// PKCS#11 `C_GetFunctionList`.
#[unsafe(no_mangle)]
pub extern "C" fn C_GetFunctionList(fnlist: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    fn_get_function_list(fnlist)
}

/// PKCS#11 3.x `C_GetInterface`.
#[unsafe(no_mangle)]
pub extern "C" fn C_GetInterface(
    interface_name: CK_UTF8CHAR_PTR,
    version: CK_VERSION_PTR,
    interface: CK_INTERFACE_PTR_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    fn_get_interface(interface_name, version, interface, flags)
}

/// PKCS#11 3.x `C_GetInterfaceList`.
#[unsafe(no_mangle)]
pub extern "C" fn C_GetInterfaceList(interfaces_list: CK_INTERFACE_PTR, count: CK_ULONG_PTR) -> CK_RV {
    fn_get_interface_list(interfaces_list, count)
}
