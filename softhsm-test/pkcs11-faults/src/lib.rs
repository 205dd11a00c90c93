//! A PKCS#11 module for tests. It forwards every call to a real module and, on command,
//! fails chosen calls with a chosen return value, stalls them, or logs the application out
//! before a call, so that the daemon's handling of token faults can be driven from outside.
//!
//! Environment (read once, at `C_GetFunctionList`):
//! - `PKCS11_FAULTS_MODULE`: the real module (default `/usr/lib/softhsm/libsofthsm2.so`).
//! - `PKCS11_FAULTS_CONTROL`: a file of rules, re-read on every call. One rule per line:
//!   `FUNCTION ACTION [COUNT]`, where FUNCTION is a PKCS#11 name (`C_WrapKey`) or `*` (every
//!   call except the two close calls, which a removed token does not fail either), ACTION is
//!   `DEVICE_ERROR`, `SESSION_HANDLE_INVALID`, `TOKEN_NOT_PRESENT`, `USER_NOT_LOGGED_IN`, a
//!   return value in hex (`0x30`), `hang` (the call waits until its rule is removed from the
//!   file, then goes through) or `logout` (`C_Logout` on the call's session, then the call
//!   goes through). COUNT limits how many calls the rule hits after the file last changed;
//!   without it the rule hits every call. `#` starts a comment.
//! - `PKCS11_FAULTS_LOG`: a file that gets a line per `C_Login` (with its return value) and
//!   per fault applied.
//! - `PKCS11_FAULTS_STATE`: a file rewritten whenever the counts change:
//!   `sessions=N`, `session_objects=M` (objects made with CKA_TOKEN false and not yet
//!   destroyed, their session still open) and `logins=K`.

#![allow(non_snake_case)]

use std::collections::{HashMap, HashSet};
use std::ffi::c_void;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use cryptoki_sys::*;

struct Real {
    list: CK_FUNCTION_LIST,
    control: Option<PathBuf>,
    log: Option<PathBuf>,
    state: Option<PathBuf>,
}

#[derive(Default)]
struct Counts {
    control: String,
    applied: HashMap<usize, u64>,
    sessions: HashSet<CK_SESSION_HANDLE>,
    objects: HashMap<CK_OBJECT_HANDLE, CK_SESSION_HANDLE>,
    logins: u64,
}

static REAL: OnceLock<Result<Real, String>> = OnceLock::new();
static LIST: OnceLock<usize> = OnceLock::new();
static COUNTS: Mutex<Option<Counts>> = Mutex::new(None);

fn real() -> &'static Real {
    match REAL.get() {
        Some(Ok(r)) => r,
        // C_GetFunctionList refused to hand out a list in this case, so no call gets here.
        _ => std::process::abort(),
    }
}

fn counts() -> MutexGuard<'static, Option<Counts>> {
    COUNTS.lock().unwrap_or_else(|p| p.into_inner())
}

fn load() -> Result<Real, String> {
    let path = std::env::var_os("PKCS11_FAULTS_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
    // SAFETY: loading a PKCS#11 module runs its initialisers, which is what a PKCS#11
    // consumer does anyway.
    let lib = unsafe { libloading::Library::new(&path) }
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: the symbol has the PKCS#11 signature of C_GetFunctionList.
    let get: libloading::Symbol<unsafe extern "C" fn(*mut *mut CK_FUNCTION_LIST) -> CK_RV> =
        unsafe { lib.get(b"C_GetFunctionList\0") }.map_err(|e| e.to_string())?;
    let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
    // SAFETY: `list` is a valid out pointer; the module owns the list it points to.
    let rv = unsafe { get(&mut list) };
    if rv != CKR_OK || list.is_null() {
        return Err(format!(
            "C_GetFunctionList of the real module returned {rv:#x}"
        ));
    }
    // SAFETY: checked non-null above; the list lives as long as the library, which is
    // never unloaded.
    let list = unsafe { *list };
    std::mem::forget(lib);
    let file = |name: &str| std::env::var_os(name).map(PathBuf::from);
    Ok(Real {
        list,
        control: file("PKCS11_FAULTS_CONTROL"),
        log: file("PKCS11_FAULTS_LOG"),
        state: file("PKCS11_FAULTS_STATE"),
    })
}

fn log_line(line: &str) {
    let Some(path) = &real().log else { return };
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
}

fn write_state(c: &Counts) {
    let Some(path) = &real().state else { return };
    let live = c
        .objects
        .values()
        .filter(|s| c.sessions.contains(s))
        .count();
    let text = format!(
        "sessions={}\nsession_objects={live}\nlogins={}\n",
        c.sessions.len(),
        c.logins
    );
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

fn track(f: impl FnOnce(&mut Counts)) {
    let mut g = counts();
    let c = g.get_or_insert_with(Counts::default);
    f(c);
    write_state(c);
}

enum Action {
    Fail(CK_RV),
    Hang,
    Logout,
}

struct Rule {
    index: usize,
    line: String,
    action: Action,
    count: Option<u64>,
}

fn parse_action(word: &str) -> Option<Action> {
    Some(match word {
        "DEVICE_ERROR" => Action::Fail(CKR_DEVICE_ERROR),
        "SESSION_HANDLE_INVALID" => Action::Fail(CKR_SESSION_HANDLE_INVALID),
        "TOKEN_NOT_PRESENT" => Action::Fail(CKR_TOKEN_NOT_PRESENT),
        "USER_NOT_LOGGED_IN" => Action::Fail(CKR_USER_NOT_LOGGED_IN),
        "hang" => Action::Hang,
        "logout" => Action::Logout,
        hex => Action::Fail(CK_RV::from_str_radix(hex.strip_prefix("0x")?, 16).ok()?),
    })
}

fn is_close(function: &str) -> bool {
    matches!(function, "C_CloseSession" | "C_CloseAllSessions")
}

/// The first rule of the control file that hits `function` now, counting the hit.
fn rule_for(function: &str) -> Option<Rule> {
    let path = real().control.as_ref()?;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut g = counts();
    let c = g.get_or_insert_with(Counts::default);
    if c.control != text {
        c.control = text.clone();
        c.applied.clear();
    }
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let (Some(name), Some(action)) = (words.next(), words.next()) else {
            continue;
        };
        let hits = name == function || (name == "*" && !is_close(function));
        if !hits {
            continue;
        }
        let Some(action) = parse_action(action) else {
            continue;
        };
        let count = words.next().and_then(|n| n.parse().ok());
        let applied = c.applied.entry(index).or_default();
        if count.is_some_and(|n| *applied >= n) {
            continue;
        }
        *applied += 1;
        return Some(Rule {
            index,
            line: line.to_owned(),
            action,
            count,
        });
    }
    None
}

fn rule_still_there(rule: &Rule) -> bool {
    let Some(path) = &real().control else {
        return false;
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .nth(rule.index)
        .is_some_and(|l| l.split('#').next().unwrap_or("").trim() == rule.line)
}

/// What happens before `function` is forwarded: `Some(rv)` answers the call instead.
fn before(function: &str, session: Option<CK_SESSION_HANDLE>) -> Option<CK_RV> {
    let rule = rule_for(function)?;
    match rule.action {
        Action::Fail(rv) => {
            log_line(&format!("fault {function} {rv:#x} ({:?})", rule.count));
            Some(rv)
        }
        Action::Hang => {
            log_line(&format!("fault {function} hang"));
            let started = Instant::now();
            while rule_still_there(&rule) && started.elapsed() < Duration::from_secs(600) {
                std::thread::sleep(Duration::from_millis(20));
            }
            log_line(&format!("fault {function} released"));
            None
        }
        Action::Logout => {
            if let (Some(s), Some(logout)) = (session, real().list.C_Logout) {
                // SAFETY: forwarding a session handle the caller gave us.
                let rv = unsafe { logout(s) };
                log_line(&format!("fault {function} logout {rv:#x}"));
            }
            None
        }
    }
}

/// Whether a template asks for a session object (CKA_TOKEN absent or false).
///
/// # Safety
/// `template` must point to `count` valid attributes, as PKCS#11 requires of callers.
unsafe fn session_object(template: *const CK_ATTRIBUTE, count: CK_ULONG) -> bool {
    if template.is_null() {
        return true;
    }
    // SAFETY: the caller's contract.
    let attrs = unsafe { std::slice::from_raw_parts(template, count as usize) };
    !attrs.iter().any(|a| {
        a.type_ == CKA_TOKEN
            && !a.pValue.is_null()
            && a.ulValueLen >= 1
            // SAFETY: a CK_BBOOL value of at least one byte, checked above.
            && unsafe { *(a.pValue as *const CK_BBOOL) } != 0
    })
}

fn made(session: CK_SESSION_HANDLE, object: CK_OBJECT_HANDLE, is_session_object: bool) {
    if is_session_object {
        track(|c| {
            c.objects.insert(object, session);
        });
    }
}

macro_rules! forward {
    ($name:ident, session $s:ident $(, $a:ident : $t:ty)*) => {
        unsafe extern "C" fn $name($s: CK_SESSION_HANDLE $(, $a: $t)*) -> CK_RV {
            if let Some(rv) = before(stringify!($name), Some($s)) {
                return rv;
            }
            let Some(f) = real().list.$name else { return CKR_FUNCTION_NOT_SUPPORTED };
            // SAFETY: the caller's arguments, passed on unchanged.
            unsafe { f($s $(, $a)*) }
        }
    };
    ($name:ident $(, $a:ident : $t:ty)*) => {
        unsafe extern "C" fn $name($($a: $t),*) -> CK_RV {
            if let Some(rv) = before(stringify!($name), None) {
                return rv;
            }
            let Some(f) = real().list.$name else { return CKR_FUNCTION_NOT_SUPPORTED };
            // SAFETY: the caller's arguments, passed on unchanged.
            unsafe { f($($a),*) }
        }
    };
}

forward!(C_GetSlotList, present: CK_BBOOL, list: *mut CK_SLOT_ID, count: *mut CK_ULONG);
forward!(C_GetSlotInfo, slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO);
forward!(C_GetTokenInfo, slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO);
forward!(C_GetMechanismList, slot: CK_SLOT_ID, list: *mut CK_MECHANISM_TYPE, count: *mut CK_ULONG);
forward!(C_GetMechanismInfo, slot: CK_SLOT_ID, kind: CK_MECHANISM_TYPE, info: *mut CK_MECHANISM_INFO);
forward!(C_GetSessionInfo, session s, info: *mut CK_SESSION_INFO);
forward!(C_Logout, session s);
forward!(C_GetAttributeValue, session s, o: CK_OBJECT_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG);
forward!(C_SetAttributeValue, session s, o: CK_OBJECT_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG);
forward!(C_FindObjectsInit, session s, t: *mut CK_ATTRIBUTE, n: CK_ULONG);
forward!(C_FindObjects, session s, o: *mut CK_OBJECT_HANDLE, max: CK_ULONG, n: *mut CK_ULONG);
forward!(C_FindObjectsFinal, session s);
forward!(C_EncryptInit, session s, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE);
forward!(C_Encrypt, session s, d: *mut CK_BYTE, dl: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG);
forward!(C_DecryptInit, session s, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE);
forward!(C_Decrypt, session s, d: *mut CK_BYTE, dl: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG);
forward!(C_DigestInit, session s, m: *mut CK_MECHANISM);
forward!(C_Digest, session s, d: *mut CK_BYTE, dl: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG);
forward!(C_SignInit, session s, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE);
forward!(C_Sign, session s, d: *mut CK_BYTE, dl: CK_ULONG, o: *mut CK_BYTE, ol: *mut CK_ULONG);
forward!(C_VerifyInit, session s, m: *mut CK_MECHANISM, k: CK_OBJECT_HANDLE);
forward!(C_Verify, session s, d: *mut CK_BYTE, dl: CK_ULONG, g: *mut CK_BYTE, gl: CK_ULONG);
forward!(C_WrapKey, session s, m: *mut CK_MECHANISM, w: CK_OBJECT_HANDLE, k: CK_OBJECT_HANDLE, o: *mut CK_BYTE, ol: *mut CK_ULONG);
forward!(C_GenerateRandom, session s, o: *mut CK_BYTE, n: CK_ULONG);

unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    app: *mut c_void,
    notify: CK_NOTIFY,
    out: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    if let Some(rv) = before("C_OpenSession", None) {
        return rv;
    }
    let Some(f) = real().list.C_OpenSession else {
        return CKR_FUNCTION_NOT_SUPPORTED;
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    let rv = unsafe { f(slot, flags, app, notify, out) };
    if rv == CKR_OK && !out.is_null() {
        // SAFETY: the module wrote the handle.
        let s = unsafe { *out };
        track(|c| {
            c.sessions.insert(s);
        });
    }
    rv
}

unsafe extern "C" fn C_CloseSession(s: CK_SESSION_HANDLE) -> CK_RV {
    if let Some(rv) = before("C_CloseSession", Some(s)) {
        return rv;
    }
    let Some(f) = real().list.C_CloseSession else {
        return CKR_FUNCTION_NOT_SUPPORTED;
    };
    // SAFETY: the caller's argument, passed on unchanged.
    let rv = unsafe { f(s) };
    if rv == CKR_OK {
        track(|c| {
            c.sessions.remove(&s);
            c.objects.retain(|_, owner| *owner != s);
        });
    }
    rv
}

unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    if let Some(rv) = before("C_CloseAllSessions", None) {
        return rv;
    }
    let Some(f) = real().list.C_CloseAllSessions else {
        return CKR_FUNCTION_NOT_SUPPORTED;
    };
    // SAFETY: the caller's argument, passed on unchanged.
    let rv = unsafe { f(slot) };
    if rv == CKR_OK {
        track(|c| {
            c.sessions.clear();
            c.objects.clear();
        });
    }
    rv
}

unsafe extern "C" fn C_Login(
    s: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    len: CK_ULONG,
) -> CK_RV {
    // Every attempt counts, the ones a rule answers too.
    track(|c| c.logins += 1);
    let rv = match (before("C_Login", Some(s)), real().list.C_Login) {
        (Some(rv), _) => rv,
        (None, None) => CKR_FUNCTION_NOT_SUPPORTED,
        // SAFETY: the caller's arguments, passed on unchanged.
        (None, Some(f)) => unsafe { f(s, user, pin, len) },
    };
    log_line(&format!("C_Login rv={rv:#x}"));
    rv
}

unsafe extern "C" fn C_CreateObject(
    s: CK_SESSION_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    if let Some(rv) = before("C_CreateObject", Some(s)) {
        return rv;
    }
    let Some(f) = real().list.C_CreateObject else {
        return CKR_FUNCTION_NOT_SUPPORTED;
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    let rv = unsafe { f(s, t, n, out) };
    if rv == CKR_OK && !out.is_null() {
        // SAFETY: the caller's template; the module wrote the handle.
        unsafe { made(s, *out, session_object(t, n)) };
    }
    rv
}

unsafe extern "C" fn C_GenerateKey(
    s: CK_SESSION_HANDLE,
    m: *mut CK_MECHANISM,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    if let Some(rv) = before("C_GenerateKey", Some(s)) {
        return rv;
    }
    let Some(f) = real().list.C_GenerateKey else {
        return CKR_FUNCTION_NOT_SUPPORTED;
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    let rv = unsafe { f(s, m, t, n, out) };
    if rv == CKR_OK && !out.is_null() {
        // SAFETY: the caller's template; the module wrote the handle.
        unsafe { made(s, *out, session_object(t, n)) };
    }
    rv
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn C_GenerateKeyPair(
    s: CK_SESSION_HANDLE,
    m: *mut CK_MECHANISM,
    pt: *mut CK_ATTRIBUTE,
    pn: CK_ULONG,
    kt: *mut CK_ATTRIBUTE,
    kn: CK_ULONG,
    public: *mut CK_OBJECT_HANDLE,
    private: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    if let Some(rv) = before("C_GenerateKeyPair", Some(s)) {
        return rv;
    }
    let Some(f) = real().list.C_GenerateKeyPair else {
        return CKR_FUNCTION_NOT_SUPPORTED;
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    let rv = unsafe { f(s, m, pt, pn, kt, kn, public, private) };
    if rv == CKR_OK && !public.is_null() && !private.is_null() {
        // SAFETY: the caller's templates; the module wrote the handles.
        unsafe {
            made(s, *public, session_object(pt, pn));
            made(s, *private, session_object(kt, kn));
        }
    }
    rv
}

#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn C_UnwrapKey(
    s: CK_SESSION_HANDLE,
    m: *mut CK_MECHANISM,
    unwrapping: CK_OBJECT_HANDLE,
    wrapped: *mut CK_BYTE,
    wrapped_len: CK_ULONG,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    if let Some(rv) = before("C_UnwrapKey", Some(s)) {
        return rv;
    }
    let Some(f) = real().list.C_UnwrapKey else {
        return CKR_FUNCTION_NOT_SUPPORTED;
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    let rv = unsafe { f(s, m, unwrapping, wrapped, wrapped_len, t, n, out) };
    if rv == CKR_OK && !out.is_null() {
        // SAFETY: the caller's template; the module wrote the handle.
        unsafe { made(s, *out, session_object(t, n)) };
    }
    rv
}

unsafe extern "C" fn C_DeriveKey(
    s: CK_SESSION_HANDLE,
    m: *mut CK_MECHANISM,
    base: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    if let Some(rv) = before("C_DeriveKey", Some(s)) {
        return rv;
    }
    let Some(f) = real().list.C_DeriveKey else {
        return CKR_FUNCTION_NOT_SUPPORTED;
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    let rv = unsafe { f(s, m, base, t, n, out) };
    if rv == CKR_OK && !out.is_null() {
        // SAFETY: the caller's template; the module wrote the handle.
        unsafe { made(s, *out, session_object(t, n)) };
    }
    rv
}

unsafe extern "C" fn C_DestroyObject(s: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> CK_RV {
    if let Some(rv) = before("C_DestroyObject", Some(s)) {
        return rv;
    }
    let Some(f) = real().list.C_DestroyObject else {
        return CKR_FUNCTION_NOT_SUPPORTED;
    };
    // SAFETY: the caller's arguments, passed on unchanged.
    let rv = unsafe { f(s, o) };
    if rv == CKR_OK {
        track(|c| {
            c.objects.remove(&o);
        });
    }
    rv
}

/// The module's entry point: the real module's list with the calls above put in.
///
/// # Safety
/// `out` must be a valid pointer to write the list's address to.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn C_GetFunctionList(out: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    if out.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let real = match REAL.get_or_init(load) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pkcs11-faults: cannot load the real module: {e}");
            return CKR_GENERAL_ERROR;
        }
    };
    let list = *LIST.get_or_init(|| {
        let mut list = real.list;
        macro_rules! put {
            ($($name:ident),*) => { $( if list.$name.is_some() { list.$name = Some($name); } )* };
        }
        put!(
            C_GetSlotList,
            C_GetSlotInfo,
            C_GetTokenInfo,
            C_GetMechanismList,
            C_GetMechanismInfo,
            C_OpenSession,
            C_CloseSession,
            C_CloseAllSessions,
            C_GetSessionInfo,
            C_Login,
            C_Logout,
            C_CreateObject,
            C_DestroyObject,
            C_GetAttributeValue,
            C_SetAttributeValue,
            C_FindObjectsInit,
            C_FindObjects,
            C_FindObjectsFinal,
            C_EncryptInit,
            C_Encrypt,
            C_DecryptInit,
            C_Decrypt,
            C_DigestInit,
            C_Digest,
            C_SignInit,
            C_Sign,
            C_VerifyInit,
            C_Verify,
            C_GenerateKey,
            C_GenerateKeyPair,
            C_WrapKey,
            C_UnwrapKey,
            C_DeriveKey,
            C_GenerateRandom
        );
        list.C_GetFunctionList = Some(C_GetFunctionList);
        Box::into_raw(Box::new(list)) as usize
    });
    // SAFETY: `out` checked non-null; the list is leaked and lives for the process.
    unsafe { *out = list as *mut CK_FUNCTION_LIST };
    CKR_OK
}
