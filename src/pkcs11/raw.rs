//! The few PKCS#11 calls the `cryptoki` crate cannot express: templates holding an array
//! attribute (CKA_UNWRAP_TEMPLATE, which `Attribute` has no variant for), and the upload's
//! hot-path calls made once with a buffer of the size the caller knows, where the crate always
//! asks the token for the length first (each call on a token object costs a file-backed
//! token such as SoftHSM2 a read of the object). They go through the module's own function
//! list, so they reach the very module instance, and session, the crate opened; attributes the
//! crate can name are converted with its own `CK_ATTRIBUTE` conversion.

use std::path::Path;

use cryptoki::error::{Rv, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectHandle};
use cryptoki::session::Session;
use cryptoki_sys::{
    CK_ATTRIBUTE, CK_ATTRIBUTE_TYPE, CK_FUNCTION_LIST, CK_MECHANISM, CK_MECHANISM_TYPE,
    CK_OBJECT_HANDLE, CK_ULONG, CK_UNAVAILABLE_INFORMATION, CKA_UNWRAP_TEMPLATE,
};

use super::error::TokenError;

/// An array attribute's contents: each attribute's type and value.
pub type Template = Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>;

/// A loaded module's function list.
pub struct Functions {
    // Keeps the module mapped while the list is in use (it is loaded by the crate anyway).
    _lib: cryptoki_sys::Pkcs11,
    list: CK_FUNCTION_LIST,
}

fn check(op: &'static str, rv: cryptoki_sys::CK_RV) -> Result<(), TokenError> {
    match Rv::from(rv) {
        Rv::Ok => Ok(()),
        Rv::Error(rv) => Err(TokenError::Pkcs11 { op, rv }),
    }
}

fn missing(op: &'static str) -> TokenError {
    TokenError::Pkcs11 {
        op,
        rv: RvError::FunctionNotSupported,
    }
}

/// `template` with CKA_UNWRAP_TEMPLATE = `inner` added; both borrow from their inputs.
fn with_unwrap_template(template: &[Attribute], inner: &[CK_ATTRIBUTE]) -> Vec<CK_ATTRIBUTE> {
    let mut raw: Vec<CK_ATTRIBUTE> = template.iter().map(CK_ATTRIBUTE::from).collect();
    if !inner.is_empty() {
        raw.push(CK_ATTRIBUTE {
            type_: CKA_UNWRAP_TEMPLATE,
            pValue: inner.as_ptr() as *mut std::ffi::c_void,
            ulValueLen: std::mem::size_of_val(inner) as CK_ULONG,
        });
    }
    raw
}

impl Functions {
    pub fn load(module: &Path) -> Result<Self, TokenError> {
        let library = |message: String| TokenError::Library {
            op: "loading the PKCS#11 module's function list",
            message,
        };
        // SAFETY: the module is already loaded and initialised by the `cryptoki` context;
        // loading it again only takes another reference to it.
        let lib = unsafe { cryptoki_sys::Pkcs11::new(module) }
            .map_err(|e| library(format!("{}: {e}", module.display())))?;
        let get = lib
            .C_GetFunctionList
            .as_ref()
            .map_err(|e| library(e.to_string()))?;
        let mut list: *mut CK_FUNCTION_LIST = std::ptr::null_mut();
        // SAFETY: `list` is a valid out pointer.
        check("C_GetFunctionList", unsafe { get(&mut list) })?;
        if list.is_null() {
            return Err(library("C_GetFunctionList returned no list".into()));
        }
        // SAFETY: non-null, owned by the module, which stays loaded.
        let list = unsafe { *list };
        Ok(Self { _lib: lib, list })
    }

    /// C_GenerateKey with `template` plus CKA_UNWRAP_TEMPLATE = `unwrap_template`.
    pub fn generate_key(
        &self,
        session: &Session,
        mechanism: CK_MECHANISM_TYPE,
        template: &[Attribute],
        unwrap_template: &[Attribute],
    ) -> Result<CK_OBJECT_HANDLE, TokenError> {
        const OP: &str = "C_GenerateKey";
        let f = self.list.C_GenerateKey.ok_or_else(|| missing(OP))?;
        let inner: Vec<CK_ATTRIBUTE> = unwrap_template.iter().map(CK_ATTRIBUTE::from).collect();
        let mut raw = with_unwrap_template(template, &inner);
        let mut mech = CK_MECHANISM {
            mechanism,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        };
        let mut handle: CK_OBJECT_HANDLE = 0;
        // SAFETY: every pointer refers to a live local or to an attribute borrowed above.
        let rv = unsafe {
            f(
                session.handle(),
                &mut mech,
                raw.as_mut_ptr(),
                raw.len() as CK_ULONG,
                &mut handle,
            )
        };
        check(OP, rv)?;
        Ok(handle)
    }

    /// C_GenerateKeyPair, the private half's template with CKA_UNWRAP_TEMPLATE added.
    pub fn generate_key_pair(
        &self,
        session: &Session,
        mechanism: CK_MECHANISM_TYPE,
        public: &[Attribute],
        private: &[Attribute],
        unwrap_template: &[Attribute],
    ) -> Result<(), TokenError> {
        const OP: &str = "C_GenerateKeyPair";
        let f = self.list.C_GenerateKeyPair.ok_or_else(|| missing(OP))?;
        let inner: Vec<CK_ATTRIBUTE> = unwrap_template.iter().map(CK_ATTRIBUTE::from).collect();
        let mut public = with_unwrap_template(public, &[]);
        let mut private = with_unwrap_template(private, &inner);
        let mut mech = CK_MECHANISM {
            mechanism,
            pParameter: std::ptr::null_mut(),
            ulParameterLen: 0,
        };
        let (mut pub_h, mut priv_h): (CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) = (0, 0);
        // SAFETY: every pointer refers to a live local or to an attribute borrowed above.
        let rv = unsafe {
            f(
                session.handle(),
                &mut mech,
                public.as_mut_ptr(),
                public.len() as CK_ULONG,
                private.as_mut_ptr(),
                private.len() as CK_ULONG,
                &mut pub_h,
                &mut priv_h,
            )
        };
        check(OP, rv)
    }

    /// The CKA_UNWRAP_TEMPLATE of `object` as stored: each attribute's type and value, or
    /// `None` when the object has none (or the token does not know the attribute).
    pub fn unwrap_template(
        &self,
        session: &Session,
        object: ObjectHandle,
    ) -> Result<Option<Template>, TokenError> {
        const OP: &str = "C_GetAttributeValue (CKA_UNWRAP_TEMPLATE)";
        let f = self.list.C_GetAttributeValue.ok_or_else(|| missing(OP))?;
        let get = |attr: &mut CK_ATTRIBUTE| {
            // SAFETY: one attribute whose buffer (if any) is as long as it says.
            unsafe { f(session.handle(), object.handle(), attr, 1) }
        };
        let mut outer = CK_ATTRIBUTE {
            type_: CKA_UNWRAP_TEMPLATE,
            pValue: std::ptr::null_mut(),
            ulValueLen: 0,
        };
        let rv = get(&mut outer);
        if matches!(
            Rv::from(rv),
            Rv::Error(RvError::AttributeTypeInvalid | RvError::AttributeSensitive)
        ) || outer.ulValueLen == CK_UNAVAILABLE_INFORMATION
            || outer.ulValueLen == 0
        {
            return Ok(None);
        }
        check(OP, rv)?;
        let n = outer.ulValueLen as usize / std::mem::size_of::<CK_ATTRIBUTE>();
        // Types unknown (CK_UNAVAILABLE_INFORMATION) ask for the stored types and lengths.
        let mut inner: Vec<CK_ATTRIBUTE> = (0..n)
            .map(|_| CK_ATTRIBUTE {
                type_: CK_UNAVAILABLE_INFORMATION,
                pValue: std::ptr::null_mut(),
                ulValueLen: 0,
            })
            .collect();
        outer.pValue = inner.as_mut_ptr() as *mut std::ffi::c_void;
        // First the types and lengths, then the values.
        check(OP, get(&mut outer))?;
        let mut values: Vec<Vec<u8>> = inner
            .iter()
            .map(|a| vec![0u8; a.ulValueLen as usize])
            .collect();
        for (a, v) in inner.iter_mut().zip(values.iter_mut()) {
            a.pValue = v.as_mut_ptr() as *mut std::ffi::c_void;
        }
        check(OP, get(&mut outer))?;
        Ok(Some(
            inner
                .iter()
                .zip(values)
                .map(|(a, v)| (a.type_, v))
                .collect(),
        ))
    }
    /// C_GetAttributeValue of `wanted` in one call, each variable-length attribute given `room`
    /// bytes. Attributes the object does not have or keeps secret are left out, as the crate
    /// does; `None` when one did not fit, for the caller to read them the crate's way.
    pub fn attributes_once(
        &self,
        session: &Session,
        object: ObjectHandle,
        wanted: &[AttributeType],
        room: usize,
    ) -> Result<Option<Vec<Attribute>>, TokenError> {
        const OP: &str = "C_GetAttributeValue";
        let f = self.list.C_GetAttributeValue.ok_or_else(|| missing(OP))?;
        let mut buffers: Vec<Vec<u8>> = wanted
            .iter()
            .map(|t| vec![0u8; t.fixed_size().unwrap_or(room)])
            .collect();
        let mut template: Vec<CK_ATTRIBUTE> = wanted
            .iter()
            .zip(buffers.iter_mut())
            .map(|(t, b)| CK_ATTRIBUTE {
                type_: (*t).into(),
                pValue: b.as_mut_ptr() as *mut std::ffi::c_void,
                ulValueLen: b.len() as CK_ULONG,
            })
            .collect();
        // SAFETY: every attribute points at a live buffer as long as it says.
        let rv = unsafe {
            f(
                session.handle(),
                object.handle(),
                template.as_mut_ptr(),
                template.len() as CK_ULONG,
            )
        };
        match Rv::from(rv) {
            Rv::Ok | Rv::Error(RvError::AttributeSensitive | RvError::AttributeTypeInvalid) => {}
            Rv::Error(RvError::BufferTooSmall) => return Ok(None),
            Rv::Error(rv) => return Err(TokenError::Pkcs11 { op: OP, rv }),
        }
        let mut out = Vec::with_capacity(template.len());
        for (a, b) in template.iter().zip(&buffers) {
            if a.ulValueLen == CK_UNAVAILABLE_INFORMATION {
                continue;
            }
            if a.ulValueLen as usize > b.len() {
                return Ok(None);
            }
            let a = Attribute::try_from(*a).map_err(|e| TokenError::Library {
                op: OP,
                message: e.to_string(),
            })?;
            out.push(a);
        }
        Ok(Some(out))
    }

    /// C_WrapKey into a buffer of `room` bytes (the wrapped length where the caller knows it:
    /// the modulus for RSA-OAEP), asking for more only if the token says it needs it.
    pub fn wrap_key(
        &self,
        session: &Session,
        mechanism: &Mechanism,
        wrapping: ObjectHandle,
        key: ObjectHandle,
        room: usize,
    ) -> Result<Vec<u8>, TokenError> {
        const OP: &str = "C_WrapKey";
        let f = self.list.C_WrapKey.ok_or_else(|| missing(OP))?;
        let mut mech = CK_MECHANISM::from(mechanism);
        into_buffer(
            OP,
            room,
            |out, len| {
                // SAFETY: the mechanism's parameters borrow from `mechanism`; `out` is `len` long.
                unsafe {
                    f(
                        session.handle(),
                        &mut mech,
                        wrapping.handle(),
                        key.handle(),
                        out,
                        len,
                    )
                }
            },
            || Ok(false),
        )
    }

    /// C_EncryptInit and one C_Encrypt of `data` into a buffer of `room` bytes, asking for
    /// more only if the token says it needs it. The standard keeps the operation active after
    /// CKR_BUFFER_TOO_SMALL; some tokens (kryoptic) end it, and it is started again.
    pub fn encrypt(
        &self,
        session: &Session,
        mechanism: &Mechanism,
        key: ObjectHandle,
        data: &[u8],
        room: usize,
    ) -> Result<Vec<u8>, TokenError> {
        const INIT: &str = "C_EncryptInit";
        const OP: &str = "C_Encrypt";
        let init = self.list.C_EncryptInit.ok_or_else(|| missing(INIT))?;
        let f = self.list.C_Encrypt.ok_or_else(|| missing(OP))?;
        let mut mech = CK_MECHANISM::from(mechanism);
        let mut start = || {
            // SAFETY: the mechanism's parameters borrow from `mechanism`.
            check(INIT, unsafe {
                init(session.handle(), &mut mech, key.handle())
            })
        };
        start()?;
        into_buffer(
            OP,
            room,
            |out, len| {
                // SAFETY: `data` and `out` are live and as long as said; C_Encrypt only reads
                // its input, whatever the signature's `*mut` says.
                unsafe {
                    f(
                        session.handle(),
                        data.as_ptr() as *mut u8,
                        data.len() as CK_ULONG,
                        out,
                        len,
                    )
                }
            },
            || start().map(|()| true),
        )
    }
}

/// Runs a PKCS#11 call that writes its output into a buffer of `room` bytes, growing it once
/// to the length the token asks for on CKR_BUFFER_TOO_SMALL. Should the token say the
/// operation ended after that, `restart` may start it again (returning whether it did).
fn into_buffer(
    op: &'static str,
    room: usize,
    mut call: impl FnMut(*mut u8, &mut CK_ULONG) -> cryptoki_sys::CK_RV,
    mut restart: impl FnMut() -> Result<bool, TokenError>,
) -> Result<Vec<u8>, TokenError> {
    let mut out = vec![0u8; room];
    let mut grown = false;
    let mut restarted = false;
    loop {
        let mut len = out.len() as CK_ULONG;
        match Rv::from(call(out.as_mut_ptr(), &mut len)) {
            Rv::Ok => {
                out.truncate(len as usize);
                return Ok(out);
            }
            Rv::Error(RvError::BufferTooSmall) if !grown && len as usize > out.len() => {
                grown = true;
                out.resize(len as usize, 0);
            }
            Rv::Error(RvError::OperationNotInitialized) if grown && !restarted && restart()? => {
                restarted = true;
            }
            Rv::Error(rv) => return Err(TokenError::Pkcs11 { op, rv }),
        }
    }
}
