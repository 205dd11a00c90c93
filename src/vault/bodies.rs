//! The request bodies of the vault routes, with CipherTrust Manager's vocabulary: the fields
//! the bridge uses, those it accepts and ignores, and those whose meaning it does not implement
//! (refused when they carry a value, so that nothing is silently read differently).

use std::collections::BTreeMap;

use secrecy::SecretString;
use serde::Deserialize;
use serde_json::Value;

use crate::error::DomainError;
use crate::unused_fields;
use crate::vocabulary::{Given, Unused, Vocabulary, refuse_given};

/// `POST /api/v1/vault/keys2`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct CreateKeyBody {
    pub name: Option<String>,
    pub algorithm: Option<String>,
    pub size: Option<u32>,
    pub curveid: Option<String>,
    /// Caller material: hex (or base64) for AES and HMAC, PEM for RSA and EC.
    pub material: Option<SecretString>,
    pub format: Option<String>,
    pub encoding: Option<String>,
    pub usageMask: Option<u32>,
    pub meta: Option<Value>,
    pub labels: Option<BTreeMap<String, String>>,
    pub unexportable: Option<bool>,
    pub undeletable: Option<bool>,

    // Documented, accepted, not used: lifecycle dates and states, identifiers, descriptive
    // attributes of CipherTrust's key object.
    #[serde(default)]
    pub publicKeyName: Unused,
    #[serde(default)]
    pub usage: Unused,
    #[serde(default)]
    pub neverExported: Unused,
    #[serde(default)]
    pub neverExportable: Unused,
    #[serde(default)]
    pub defaultIV: Unused,
    #[serde(default)]
    pub objectType: Unused,
    #[serde(default)]
    pub certType: Unused,
    #[serde(default)]
    pub activationDate: Unused,
    #[serde(default)]
    pub deactivationDate: Unused,
    #[serde(default)]
    pub archiveDate: Unused,
    #[serde(default)]
    pub rotationDate: Unused,
    #[serde(default)]
    pub processStartDate: Unused,
    #[serde(default)]
    pub protectStopDate: Unused,
    #[serde(default)]
    pub destroyDate: Unused,
    #[serde(default)]
    pub compromiseDate: Unused,
    #[serde(default)]
    pub compromiseOccurrenceDate: Unused,
    #[serde(default)]
    pub rotationFrequencyDays: Unused,
    #[serde(default)]
    pub state: Unused,
    #[serde(default)]
    pub revocationReason: Unused,
    #[serde(default)]
    pub revocationMessage: Unused,
    #[serde(default)]
    pub aliases: Unused,
    #[serde(default)]
    pub publicKeyParameters: Unused,
    #[serde(default)]
    pub secretDataLink: Unused,
    #[serde(default)]
    pub secretDataEncoding: Unused,
    #[serde(default)]
    pub uuid: Unused,
    #[serde(default)]
    pub muid: Unused,
    #[serde(default)]
    pub keyId: Unused,
    #[serde(default)]
    pub id: Unused,
    #[serde(default)]
    pub idSize: Unused,
    #[serde(default)]
    pub generateKeyId: Unused,
    #[serde(default)]
    pub assignSelfAsOwner: Unused,
    #[serde(default)]
    pub templateId: Unused,
    #[serde(default)]
    pub padded: Unused,
    #[serde(default)]
    pub wrapKeyIDType: Unused,
    #[serde(default)]
    pub wrapPublicKeyPadding: Unused,
    #[serde(default)]
    pub wrappingHashAlgo: Unused,
    #[serde(default)]
    pub macSignKeyIdentifierType: Unused,
    #[serde(default)]
    pub signingAlgo: Unused,

    // Documented, not implemented, refused when given: each changes what the key or its
    // material is.
    #[serde(default)]
    pub emptyMaterial: Given,
    #[serde(default)]
    pub xts: Given,
    #[serde(default)]
    pub password: Given,
    #[serde(default)]
    pub hkdfCreateParameters: Given,
    #[serde(default)]
    pub wrapKeyName: Given,
    #[serde(default)]
    pub wrapPublicKey: Given,
    #[serde(default)]
    pub wrappingMethod: Given,
    #[serde(default)]
    pub wrappingEncryptionAlgo: Given,
    #[serde(default)]
    pub wrapIV: Given,
    #[serde(default)]
    pub wrapHKDF: Given,
    #[serde(default)]
    pub wrapPBE: Given,
    #[serde(default)]
    pub wrapRSAAES: Given,
    #[serde(default)]
    pub pemWrap: Given,
    #[serde(default)]
    pub macSignKeyIdentifier: Given,
    #[serde(default)]
    pub macSignBytes: Given,
}

impl CreateKeyBody {
    /// Refuses the documented options this vault does not implement.
    pub fn check_supported(&self) -> Result<(), DomainError> {
        refuse_given(
            &[
                ("emptyMaterial", self.emptyMaterial),
                ("xts", self.xts),
                ("hkdfCreateParameters", self.hkdfCreateParameters),
            ],
            "not supported by this bridge's vault: keys are generated in the bridge token or imported from material",
        )
        .and_then(|()| {
            refuse_given(
                &[("password", self.password)],
                "not supported by this bridge's vault: PKCS#12 material cannot be imported",
            )
        })
        .and_then(|()| {
            refuse_given(
                &[
                    ("wrapKeyName", self.wrapKeyName),
                    ("wrapPublicKey", self.wrapPublicKey),
                    ("wrappingMethod", self.wrappingMethod),
                    ("wrappingEncryptionAlgo", self.wrappingEncryptionAlgo),
                    ("wrapIV", self.wrapIV),
                    ("wrapHKDF", self.wrapHKDF),
                    ("wrapPBE", self.wrapPBE),
                    ("wrapRSAAES", self.wrapRSAAES),
                    ("pemWrap", self.pemWrap),
                    ("macSignKeyIdentifier", self.macSignKeyIdentifier),
                    ("macSignBytes", self.macSignBytes),
                ],
                "not supported by this bridge's vault on create: material is never returned, \
                 and wrapped material is not imported here (export with POST .../export)",
            )
        })
        .map_err(DomainError::Invalid)
    }
}

impl Vocabulary for CreateKeyBody {
    fn unused(&self) -> Vec<String> {
        unused_fields!(self, ""; publicKeyName, usage, neverExported, neverExportable,
            defaultIV, objectType, certType, activationDate, deactivationDate, archiveDate,
            rotationDate, processStartDate, protectStopDate, destroyDate, compromiseDate,
            compromiseOccurrenceDate, rotationFrequencyDays, state, revocationReason,
            revocationMessage, aliases, publicKeyParameters, secretDataLink, secretDataEncoding,
            uuid, muid, keyId, id, idSize, generateKeyId, assignSelfAsOwner, templateId, padded,
            wrapKeyIDType, wrapPublicKeyPadding, wrappingHashAlgo, macSignKeyIdentifierType,
            signingAlgo)
    }
}

/// The query string of `POST /api/v1/vault/keys2`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct CreateKeyQuery {
    /// An existing key of the same name is answered (200) instead of a 409.
    pub returnExisting: Option<bool>,
    /// Material is never returned by this bridge: `true` is refused.
    #[serde(default)]
    pub includeMaterial: Given,
}

impl Vocabulary for CreateKeyQuery {}

/// `POST /api/v1/vault/keys2/{id}/export`: always wrapped, never in the clear.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct ExportBody {
    pub wrapPublicKey: Option<String>,
    pub wrapPublicKeyPadding: Option<String>,
    pub wrappingEncryptionAlgo: Option<String>,
    pub wrapRSAAES: Option<WrapRsaAes>,
    pub wrappingMethod: Option<String>,
    pub format: Option<String>,

    #[serde(default)]
    pub encoding: Unused,
    #[serde(default)]
    pub padded: Unused,
    #[serde(default)]
    pub secretDataEncoding: Unused,
    #[serde(default)]
    pub secretDataLink: Unused,
    #[serde(default)]
    pub combineXts: Unused,
    #[serde(default)]
    pub wrappingHashAlgo: Unused,
    #[serde(default)]
    pub wrapKeyIDType: Unused,
    #[serde(default)]
    pub macSignKeyIdentifierType: Unused,
    #[serde(default)]
    pub signingAlgo: Unused,

    #[serde(default)]
    pub password: Given,
    #[serde(default)]
    pub wrapJWE: Given,
    #[serde(default)]
    pub wrapKeyName: Given,
    #[serde(default)]
    pub wrapSymmetricKeyName: Given,
    #[serde(default)]
    pub wrapIV: Given,
    #[serde(default)]
    pub wrapHKDF: Given,
    #[serde(default)]
    pub wrapPBE: Given,
    #[serde(default)]
    pub pemWrap: Given,
    #[serde(default)]
    pub macSignKeyIdentifier: Given,
    #[serde(default)]
    pub macSignBytes: Given,
}

impl ExportBody {
    /// The wrapping key; its absence is a plaintext export, refused whoever asks.
    pub fn wrapping_key_pem(&self) -> Result<&str, DomainError> {
        self.wrapPublicKey.as_deref().ok_or_else(|| {
            DomainError::Forbidden(
                "plaintext export is refused by this bridge: ask for a wrapped export (wrapPublicKey)"
                    .into(),
            )
        })
    }

    /// Refuses the documented export options the bridge does not implement.
    pub fn check_supported(&self) -> Result<(), DomainError> {
        refuse_given(
            &[
                ("password", self.password),
                ("wrapJWE", self.wrapJWE),
                ("wrapKeyName", self.wrapKeyName),
                ("wrapSymmetricKeyName", self.wrapSymmetricKeyName),
                ("wrapIV", self.wrapIV),
                ("wrapHKDF", self.wrapHKDF),
                ("wrapPBE", self.wrapPBE),
                ("pemWrap", self.pemWrap),
                ("macSignKeyIdentifier", self.macSignKeyIdentifier),
                ("macSignBytes", self.macSignBytes),
            ],
            "not supported by this bridge: exports are wrapped under an RSA public key \
             (wrapPublicKey) with OAEP or RSA-AES key wrap only",
        )
        .map_err(DomainError::Invalid)
    }
}

impl Vocabulary for ExportBody {
    fn unused(&self) -> Vec<String> {
        unused_fields!(self, ""; encoding, padded, secretDataEncoding, secretDataLink,
            combineXts, wrappingHashAlgo, wrapKeyIDType, macSignKeyIdentifierType, signingAlgo)
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct WrapRsaAes {
    pub aesKeySize: Option<u32>,
    pub padding: Option<String>,
}

/// The query string of the single-key routes: CipherTrust names the key by `type` (id, name,
/// ...) and may ask for a `version`; this vault keeps one version of each key.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRefQuery {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub version: Option<i64>,
}

impl Vocabulary for KeyRefQuery {}

impl KeyRefQuery {
    /// Checks the query: the key is found by id or name whatever `type` says, but a type this
    /// vault does not have, or a version other than the current (0, or -1 for the latest), is
    /// refused rather than answered with another key.
    pub fn check(&self) -> Result<(), DomainError> {
        if let Some(t) = self.kind.as_deref()
            && !matches!(t, "" | "id" | "name" | "uuid")
        {
            return Err(DomainError::Invalid(format!(
                "type: `{t}` is not offered here (id, name or uuid)"
            )));
        }
        if let Some(v) = self.version
            && v != 0
            && v != -1
        {
            return Err(DomainError::NotFound(format!(
                "version {v}: this vault keeps one version of each key (0)"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphertrust_fields_parse_and_meaningful_ones_are_refused() {
        let b: CreateKeyBody = serde_json::from_value(serde_json::json!({
            "name": "k", "algorithm": "aes", "size": 256,
            "activationDate": "2027-01-01T00:00:00Z", "aliases": [{"alias": "a", "type": "string"}],
            "objectType": "Symmetric Key", "xts": false, "wrapKeyName": ""
        }))
        .expect("parses");
        assert!(b.check_supported().is_ok());
        assert_eq!(b.unused(), vec!["objectType", "activationDate", "aliases"]);
        let b: CreateKeyBody = serde_json::from_value(serde_json::json!({
            "name": "k", "wrapKeyName": "kek"
        }))
        .expect("parses");
        let e = b.check_supported().expect_err("refused").to_string();
        assert!(e.starts_with("wrapKeyName:"), "{e}");
        let e = serde_json::from_value::<CreateKeyBody>(serde_json::json!({"nmae": "k"}))
            .err()
            .expect("typo");
        assert!(e.to_string().contains("nmae"));
    }

    #[test]
    fn export_refuses_what_it_does_not_do() {
        let b: ExportBody = serde_json::from_value(serde_json::json!({
            "wrapPublicKey": "pem", "wrapJWE": {"keyEncryptionAlgorithm": "RSA-OAEP"}
        }))
        .expect("parses");
        assert!(b.check_supported().is_err());
        let b: ExportBody = serde_json::from_value(serde_json::json!({
            "wrapPublicKey": "pem", "combineXts": false, "padded": true
        }))
        .expect("parses");
        assert!(b.check_supported().is_ok());
        assert_eq!(b.unused(), vec!["padded", "combineXts"]);
    }
}
