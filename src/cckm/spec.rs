//! The closed vocabularies of an upload: source tiers, key specs and key usages.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SourceTier {
    #[serde(rename = "local")]
    Local,
    #[serde(rename = "dsm")]
    Dsm,
    #[serde(rename = "hsm-luna")]
    HsmLuna,
    #[serde(rename = "external-cm")]
    ExternalCm,
}

impl SourceTier {
    pub const ALL: [SourceTier; 4] = [
        SourceTier::Local,
        SourceTier::Dsm,
        SourceTier::HsmLuna,
        SourceTier::ExternalCm,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SourceTier::Local => "local",
            SourceTier::Dsm => "dsm",
            SourceTier::HsmLuna => "hsm-luna",
            SourceTier::ExternalCm => "external-cm",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for SourceTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySpec {
    SymmetricDefault,
    Rsa2048,
    Rsa3072,
    Rsa4096,
    EccNistP256,
    EccNistP384,
    EccNistP521,
    EccSecgP256k1,
    Hmac224,
    Hmac256,
    Hmac384,
    Hmac512,
}

/// What family of material a key spec takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecFamily {
    Symmetric,
    Hmac,
    Rsa,
    Ecc,
}

impl KeySpec {
    pub const ALL: [KeySpec; 12] = [
        KeySpec::SymmetricDefault,
        KeySpec::Rsa2048,
        KeySpec::Rsa3072,
        KeySpec::Rsa4096,
        KeySpec::EccNistP256,
        KeySpec::EccNistP384,
        KeySpec::EccNistP521,
        KeySpec::EccSecgP256k1,
        KeySpec::Hmac224,
        KeySpec::Hmac256,
        KeySpec::Hmac384,
        KeySpec::Hmac512,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeySpec::SymmetricDefault => "SYMMETRIC_DEFAULT",
            KeySpec::Rsa2048 => "RSA_2048",
            KeySpec::Rsa3072 => "RSA_3072",
            KeySpec::Rsa4096 => "RSA_4096",
            KeySpec::EccNistP256 => "ECC_NIST_P256",
            KeySpec::EccNistP384 => "ECC_NIST_P384",
            KeySpec::EccNistP521 => "ECC_NIST_P521",
            KeySpec::EccSecgP256k1 => "ECC_SECG_P256K1",
            KeySpec::Hmac224 => "HMAC_224",
            KeySpec::Hmac256 => "HMAC_256",
            KeySpec::Hmac384 => "HMAC_384",
            KeySpec::Hmac512 => "HMAC_512",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    pub fn family(self) -> SpecFamily {
        match self {
            KeySpec::SymmetricDefault => SpecFamily::Symmetric,
            KeySpec::Rsa2048 | KeySpec::Rsa3072 | KeySpec::Rsa4096 => SpecFamily::Rsa,
            KeySpec::EccNistP256
            | KeySpec::EccNistP384
            | KeySpec::EccNistP521
            | KeySpec::EccSecgP256k1 => SpecFamily::Ecc,
            KeySpec::Hmac224 | KeySpec::Hmac256 | KeySpec::Hmac384 | KeySpec::Hmac512 => {
                SpecFamily::Hmac
            }
        }
    }

    /// Material lengths in bytes AWS accepts for secret keys of this spec.
    pub fn secret_len_range(self) -> Option<std::ops::RangeInclusive<usize>> {
        match self {
            KeySpec::SymmetricDefault => Some(32..=32),
            KeySpec::Hmac224 => Some(28..=64),
            KeySpec::Hmac256 => Some(32..=64),
            KeySpec::Hmac384 => Some(48..=128),
            KeySpec::Hmac512 => Some(64..=128),
            _ => None,
        }
    }

    pub fn default_usage(self) -> Option<KeyUsage> {
        match self.family() {
            SpecFamily::Symmetric => Some(KeyUsage::EncryptDecrypt),
            SpecFamily::Hmac => Some(KeyUsage::GenerateVerifyMac),
            SpecFamily::Ecc => Some(KeyUsage::SignVerify),
            SpecFamily::Rsa => None,
        }
    }

    pub fn allowed_usages(self) -> &'static [KeyUsage] {
        match self.family() {
            SpecFamily::Symmetric => &[KeyUsage::EncryptDecrypt],
            SpecFamily::Hmac => &[KeyUsage::GenerateVerifyMac],
            SpecFamily::Ecc => &[KeyUsage::SignVerify],
            SpecFamily::Rsa => &[KeyUsage::EncryptDecrypt, KeyUsage::SignVerify],
        }
    }

    /// The private key type an asymmetric spec takes.
    pub fn private_kind(self) -> Option<crate::pkcs11::keys::PrivateKind> {
        use crate::pkcs11::keys::PrivateKind as P;
        match self {
            KeySpec::Rsa2048 => Some(P::Rsa2048),
            KeySpec::Rsa3072 => Some(P::Rsa3072),
            KeySpec::Rsa4096 => Some(P::Rsa4096),
            KeySpec::EccNistP256 => Some(P::EcP256),
            KeySpec::EccNistP384 => Some(P::EcP384),
            KeySpec::EccNistP521 => Some(P::EcP521),
            KeySpec::EccSecgP256k1 => Some(P::EcSecp256k1),
            _ => None,
        }
    }

    pub fn for_private_kind(kind: crate::pkcs11::keys::PrivateKind) -> Self {
        use crate::pkcs11::keys::PrivateKind as P;
        match kind {
            P::Rsa2048 => KeySpec::Rsa2048,
            P::Rsa3072 => KeySpec::Rsa3072,
            P::Rsa4096 => KeySpec::Rsa4096,
            P::EcP256 => KeySpec::EccNistP256,
            P::EcP384 => KeySpec::EccNistP384,
            P::EcP521 => KeySpec::EccNistP521,
            P::EcSecp256k1 => KeySpec::EccSecgP256k1,
        }
    }

    /// CipherTrust's `key_type` for the record.
    pub fn record_key_type(self) -> &'static str {
        match self.family() {
            SpecFamily::Symmetric => "symmetric",
            SpecFamily::Hmac => "hmac",
            SpecFamily::Rsa | SpecFamily::Ecc => "asymmetric",
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyUsage {
    EncryptDecrypt,
    SignVerify,
    GenerateVerifyMac,
}

impl KeyUsage {
    pub const ALL: [KeyUsage; 3] = [
        KeyUsage::EncryptDecrypt,
        KeyUsage::SignVerify,
        KeyUsage::GenerateVerifyMac,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyUsage::EncryptDecrypt => "ENCRYPT_DECRYPT",
            KeyUsage::SignVerify => "SIGN_VERIFY",
            KeyUsage::GenerateVerifyMac => "GENERATE_VERIFY_MAC",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for KeyUsage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the material reaches AWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum WrappingAlgorithm {
    RsaesOaepSha1,
    RsaesOaepSha256,
    RsaAesKeyWrapSha1,
    RsaAesKeyWrapSha256,
}

impl WrappingAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            WrappingAlgorithm::RsaesOaepSha1 => "RSAES_OAEP_SHA_1",
            WrappingAlgorithm::RsaesOaepSha256 => "RSAES_OAEP_SHA_256",
            WrappingAlgorithm::RsaAesKeyWrapSha1 => "RSA_AES_KEY_WRAP_SHA_1",
            WrappingAlgorithm::RsaAesKeyWrapSha256 => "RSA_AES_KEY_WRAP_SHA_256",
        }
    }
}
