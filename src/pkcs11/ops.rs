//! In-token operations on one session: creating and destroying the objects a wrap needs,
//! wrapping under an RSA public key or a KEK, unwrapping into session objects. Every object
//! created for an operation is a session object held by a guard that destroys it on every path.

use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::error::TokenError;
use super::mechanism_ext::RawMechanism;
use super::profile::OaepHash;

/// The kinds of secret keys the bridge moves: AES keys and HMAC keys (generic secrets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretKind {
    Aes,
    Hmac,
}

impl SecretKind {
    fn key_type(self) -> KeyType {
        match self {
            SecretKind::Aes => KeyType::AES,
            SecretKind::Hmac => KeyType::GENERIC_SECRET,
        }
    }

    fn usage(self) -> [Attribute; 4] {
        let aes = self == SecretKind::Aes;
        [
            Attribute::Encrypt(aes),
            Attribute::Decrypt(aes),
            Attribute::Sign(!aes),
            Attribute::Verify(!aes),
        ]
    }
}

/// A session object destroyed when the guard goes out of scope, whatever happened.
pub struct SessionObject<'s> {
    session: &'s Session,
    handle: ObjectHandle,
}

impl<'s> SessionObject<'s> {
    pub fn handle(&self) -> ObjectHandle {
        self.handle
    }
}

impl Drop for SessionObject<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.session.destroy_object(self.handle) {
            tracing::error!(error = %e, "could not destroy a session object");
        }
    }
}

fn guard(session: &Session, handle: ObjectHandle) -> SessionObject<'_> {
    SessionObject { session, handle }
}

fn secret_template(kind: SecretKind) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(kind.key_type()),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ];
    t.extend(kind.usage());
    t
}

/// Pushes caller-supplied (or known test) material into the token as a session object.
pub fn create_secret<'s>(
    session: &'s Session,
    kind: SecretKind,
    value: &[u8],
) -> Result<SessionObject<'s>, TokenError> {
    let mut t = secret_template(kind);
    t.push(Attribute::Value(value.to_vec()));
    let result = session.create_object(&t);
    // The template's copy of the material is wiped before anything else happens.
    for a in t.iter_mut() {
        if let Attribute::Value(v) = a {
            zeroize::Zeroize::zeroize(v);
        }
    }
    let h = result.map_err(TokenError::ck("C_CreateObject"))?;
    Ok(guard(session, h))
}

pub fn generate_secret(
    session: &Session,
    kind: SecretKind,
    len: usize,
) -> Result<SessionObject<'_>, TokenError> {
    let (mech, mut t) = match kind {
        SecretKind::Aes => (Mechanism::AesKeyGen, secret_template(kind)),
        SecretKind::Hmac => (Mechanism::GenericSecretKeyGen, secret_template(kind)),
    };
    t.push(Attribute::ValueLen((len as u64).into()));
    let h = session
        .generate_key(&mech, &t)
        .map_err(TokenError::ck("C_GenerateKey"))?;
    Ok(guard(session, h))
}

pub fn oaep_mechanism(hash: OaepHash) -> Mechanism<'static> {
    let (h, mgf) = match hash {
        OaepHash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        OaepHash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
    };
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(h, mgf, PkcsOaepSource::empty()))
}

/// Imports an RSA public key (AWS's wrapping key, or a self-test key) as a session object
/// that may only wrap, and only with `allowed`.
pub fn import_rsa_wrapping_key<'s>(
    session: &'s Session,
    modulus: &[u8],
    exponent: &[u8],
    allowed: MechanismType,
) -> Result<SessionObject<'s>, TokenError> {
    let t = [
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::Modulus(modulus.to_vec()),
        Attribute::PublicExponent(exponent.to_vec()),
        Attribute::Wrap(true),
        Attribute::Encrypt(false),
        Attribute::Verify(false),
        Attribute::AllowedMechanisms(vec![allowed]),
        Attribute::Label(b"hsm-bridge transient wrapping key".to_vec()),
    ];
    let h = session
        .create_object(&t)
        .map_err(TokenError::ck("C_CreateObject (RSA public key)"))?;
    Ok(guard(session, h))
}

pub fn oaep_wrap(
    session: &Session,
    hash: OaepHash,
    wrapping: ObjectHandle,
    key: ObjectHandle,
) -> Result<Vec<u8>, TokenError> {
    session
        .wrap_key(&oaep_mechanism(hash), wrapping, key)
        .map_err(TokenError::ck("C_WrapKey (RSA-OAEP)"))
}

pub fn kwp_wrap(
    session: &Session,
    mech: RawMechanism,
    kek: ObjectHandle,
    key: ObjectHandle,
) -> Result<Vec<u8>, TokenError> {
    session
        .wrap_key(&mech.without_params(), kek, key)
        .map_err(TokenError::ck("C_WrapKey (RFC 5649)"))
}

pub fn kwp_unwrap_secret<'s>(
    session: &'s Session,
    mech: RawMechanism,
    kek: ObjectHandle,
    blob: &[u8],
    kind: SecretKind,
) -> Result<SessionObject<'s>, TokenError> {
    let t = secret_template(kind);
    let h = session
        .unwrap_key(&mech.without_params(), kek, blob, &t)
        .map_err(TokenError::ck("C_UnwrapKey (RFC 5649)"))?;
    Ok(guard(session, h))
}

/// An AES-256 key with a known value, for self-tests only: it may wrap and unwrap.
pub fn create_test_kek<'s>(
    session: &'s Session,
    value: &[u8],
) -> Result<SessionObject<'s>, TokenError> {
    let t = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Value(value.to_vec()),
    ];
    let h = session
        .create_object(&t)
        .map_err(TokenError::ck("C_CreateObject (test KEK)"))?;
    Ok(guard(session, h))
}

/// The vault key-encryption key, found by label: a persistent, non-extractable AES-256 token
/// object. `None` when the token has none; an error when several carry the label.
pub fn find_kek(
    session: &Session,
    label: &str,
) -> Result<Option<(ObjectHandle, Vec<u8>)>, TokenError> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .map_err(TokenError::ck("C_FindObjects (KEK)"))?;
    match found.as_slice() {
        [] => Ok(None),
        [h] => {
            let id = read_bytes(session, *h, AttributeType::Id)?.unwrap_or_default();
            Ok(Some((*h, id)))
        }
        many => Err(TokenError::Refused(format!(
            "{} keys carry the KEK label \"{label}\"; exactly one is expected",
            many.len()
        ))),
    }
}

/// The vault KEK, generated in the token on first use.
pub fn ensure_kek(session: &Session, label: &str) -> Result<(ObjectHandle, Vec<u8>), TokenError> {
    if let Some(found) = find_kek(session, label)? {
        return Ok(found);
    }
    let id: [u8; 16] = rand::random();
    let t = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32u64.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    let h = session
        .generate_key(&Mechanism::AesKeyGen, &t)
        .map_err(TokenError::ck("C_GenerateKey (KEK)"))?;
    tracing::info!(
        label,
        "created the vault key-encryption key in the bridge token"
    );
    Ok((h, id.to_vec()))
}

pub fn read_bytes(
    session: &Session,
    h: ObjectHandle,
    at: AttributeType,
) -> Result<Option<Vec<u8>>, TokenError> {
    let attrs = session
        .get_attributes(h, &[at])
        .map_err(TokenError::ck("C_GetAttributeValue"))?;
    Ok(attrs.into_iter().find_map(|a| match a {
        Attribute::Id(v) | Attribute::Label(v) | Attribute::Value(v) | Attribute::Modulus(v) => {
            Some(v)
        }
        _ => None,
    }))
}

/// What the bridge needs to know about a key found in a source token.
#[derive(Debug, Clone)]
pub struct KeyFacts {
    pub class: ObjectClass,
    pub key_type: Option<KeyType>,
    pub value_len: Option<u64>,
    pub extractable: Option<bool>,
    pub wrap_with_trusted: Option<bool>,
    pub label: String,
    pub id: Vec<u8>,
}

pub fn key_facts(session: &Session, h: ObjectHandle) -> Result<KeyFacts, TokenError> {
    let attrs = session
        .get_attributes(
            h,
            &[
                AttributeType::Class,
                AttributeType::KeyType,
                AttributeType::ValueLen,
                AttributeType::Extractable,
                AttributeType::WrapWithTrusted,
                AttributeType::Label,
                AttributeType::Id,
            ],
        )
        .map_err(TokenError::ck("C_GetAttributeValue"))?;
    let mut f = KeyFacts {
        class: ObjectClass::DATA,
        key_type: None,
        value_len: None,
        extractable: None,
        wrap_with_trusted: None,
        label: String::new(),
        id: Vec::new(),
    };
    for a in attrs {
        match a {
            Attribute::Class(c) => f.class = c,
            Attribute::KeyType(k) => f.key_type = Some(k),
            Attribute::ValueLen(l) => f.value_len = Some(l.into()),
            Attribute::Extractable(b) => f.extractable = Some(b),
            Attribute::WrapWithTrusted(b) => f.wrap_with_trusted = Some(b),
            Attribute::Label(l) => f.label = String::from_utf8_lossy(&l).into_owned(),
            Attribute::Id(i) => f.id = i,
            _ => {}
        }
    }
    Ok(f)
}

/// Keys of a class whose CKA_LABEL or (if `id` is given) CKA_ID matches.
pub fn find_keys(
    session: &Session,
    class: ObjectClass,
    label: Option<&str>,
    id: Option<&[u8]>,
) -> Result<Vec<ObjectHandle>, TokenError> {
    let mut t = vec![Attribute::Class(class), Attribute::Token(true)];
    if let Some(l) = label {
        t.push(Attribute::Label(l.as_bytes().to_vec()));
    }
    if let Some(i) = id {
        t.push(Attribute::Id(i.to_vec()));
    }
    session
        .find_objects(&t)
        .map_err(TokenError::ck("C_FindObjects"))
}

/// Material that only exists to be wiped: used for known-answer secrets.
pub type Material = Zeroizing<Vec<u8>>;
