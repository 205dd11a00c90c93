//! The one place where mechanisms the `cryptoki` crate does not name are built.
//!
//! `cryptoki` 0.12 has no variant for CKM_AES_KEY_WRAP_KWP (0x210B) or CKM_RSA_AES_KEY_WRAP
//! (0x1054), and `MechanismType::new_vendor_defined` refuses codes below 0x80000000, so
//! standard codes it lacks cannot be expressed through its safe API. `MechanismType` is
//! `#[repr(transparent)]` over `CK_MECHANISM_TYPE` (the crate relies on this itself to pass
//! vectors of it to C), so a value of any code is made by transmuting the raw code; it is then
//! passed through the crate's own `VendorDefinedMechanism`, which only carries the code and an
//! optional parameter pointer to `C_WrapKey` / `C_UnwrapKey`. CKM_RSA_AES_KEY_WRAP's parameters
//! are built here from `cryptoki-sys` structures for the same reason.

use std::fmt;

use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki_sys::CK_MECHANISM_TYPE;
use serde::Deserialize;

pub const CKM_AES_KEY_WRAP_PAD: CK_MECHANISM_TYPE = 0x0000_210A;
pub const CKM_AES_KEY_WRAP_KWP: CK_MECHANISM_TYPE = 0x0000_210B;
pub const CKM_RSA_AES_KEY_WRAP: CK_MECHANISM_TYPE = 0x0000_1054;
pub const CKM_LUNA_AES_KWP: CK_MECHANISM_TYPE = 0x8000_0171;

/// A mechanism code as written in a profile: `"0x210B"`, or a known name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct RawMechanism(CK_MECHANISM_TYPE);

impl RawMechanism {
    pub const fn new(code: CK_MECHANISM_TYPE) -> Self {
        Self(code)
    }

    pub fn code(self) -> CK_MECHANISM_TYPE {
        self.0
    }

    pub fn mechanism_type(self) -> MechanismType {
        // SAFETY: MechanismType is #[repr(transparent)] over CK_MECHANISM_TYPE (see module docs).
        unsafe { std::mem::transmute::<CK_MECHANISM_TYPE, MechanismType>(self.0) }
    }

    /// The mechanism without parameters (RFC 5649 wraps use the default IV).
    pub fn without_params(self) -> Mechanism<'static> {
        Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(
            self.mechanism_type(),
            None,
        ))
    }

    /// Runs `f` with CKM_RSA_AES_KEY_WRAP (0x1054) set up for AWS's RSA_AES_KEY_WRAP_SHA_*:
    /// an AES-256 ephemeral key, OAEP with `hash` and MGF1 of the same digest, empty label.
    /// The parameter structures live on this stack frame for the whole call.
    pub fn with_rsa_aes_key_wrap<R>(
        hash: super::profile::OaepHash,
        f: impl FnOnce(&Mechanism<'_>) -> R,
    ) -> R {
        use cryptoki_sys::{
            CK_RSA_AES_KEY_WRAP_PARAMS, CK_RSA_PKCS_OAEP_PARAMS, CKG_MGF1_SHA1, CKG_MGF1_SHA256,
            CKM_SHA_1, CKM_SHA256, CKZ_DATA_SPECIFIED,
        };
        let (h, mgf) = match hash {
            super::profile::OaepHash::Sha1 => (CKM_SHA_1, CKG_MGF1_SHA1),
            super::profile::OaepHash::Sha256 => (CKM_SHA256, CKG_MGF1_SHA256),
        };
        let mut oaep = CK_RSA_PKCS_OAEP_PARAMS {
            hashAlg: h,
            mgf,
            source: CKZ_DATA_SPECIFIED,
            pSourceData: std::ptr::null_mut(),
            ulSourceDataLen: 0,
        };
        let params = CK_RSA_AES_KEY_WRAP_PARAMS {
            ulAESKeyBits: 256,
            pOAEPParams: &mut oaep,
        };
        let mech = Mechanism::VendorDefined(VendorDefinedMechanism::new(
            RawMechanism::new(CKM_RSA_AES_KEY_WRAP).mechanism_type(),
            Some(&params),
        ));
        f(&mech)
    }

    pub fn name(self) -> String {
        match self.0 {
            CKM_AES_KEY_WRAP_PAD => "CKM_AES_KEY_WRAP_PAD".into(),
            CKM_AES_KEY_WRAP_KWP => "CKM_AES_KEY_WRAP_KWP".into(),
            CKM_RSA_AES_KEY_WRAP => "CKM_RSA_AES_KEY_WRAP".into(),
            CKM_LUNA_AES_KWP => "CKM_AES_KWP (Luna)".into(),
            other => format!("0x{other:X}"),
        }
    }
}

impl fmt::Display for RawMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:X})", self.name(), self.0)
    }
}

impl serde::Serialize for RawMechanism {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl TryFrom<String> for RawMechanism {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        let hex = s
            .strip_prefix("0x")
            .or_else(|| s.strip_prefix("0X"))
            .ok_or_else(|| format!("mechanism `{s}` must be written as a hex code like 0x210B"))?;
        CK_MECHANISM_TYPE::from_str_radix(hex, 16)
            .map(RawMechanism)
            .map_err(|_| format!("mechanism `{s}` is not a hex code"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmuted_type_keeps_its_code() {
        let m = RawMechanism::new(CKM_AES_KEY_WRAP_KWP);
        let mech = m.without_params();
        assert_eq!(mech.mechanism_type(), m.mechanism_type());
        let raw: cryptoki_sys::CK_MECHANISM = (&mech).into();
        assert_eq!(raw.mechanism, CKM_AES_KEY_WRAP_KWP);
        assert!(raw.pParameter.is_null());
        assert_eq!(
            RawMechanism::new(CKM_AES_KEY_WRAP_PAD).mechanism_type(),
            MechanismType::AES_KEY_WRAP_PAD
        );
    }

    #[test]
    fn parses_hex_codes() {
        let m = RawMechanism::try_from("0x80000171".to_string()).expect("parses");
        assert_eq!(m.code(), CKM_LUNA_AES_KWP);
        assert!(RawMechanism::try_from("AES".to_string()).is_err());
    }
}
