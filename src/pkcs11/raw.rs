//! The few PKCS#11 calls the `cryptoki` crate cannot express: templates holding an array
//! attribute (CKA_UNWRAP_TEMPLATE, which `Attribute` has no variant for). They go through the
//! module's own function list, so they reach the very module instance, and session, the crate
//! opened; attributes the crate can name are converted with its own `CK_ATTRIBUTE` conversion.

use std::path::Path;

use cryptoki::error::{Rv, RvError};
use cryptoki::object::{Attribute, ObjectHandle};
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
}
