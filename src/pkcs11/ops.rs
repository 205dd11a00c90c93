//! In-token operations on one session: creating and destroying the objects a wrap needs,
//! wrapping under an RSA public key or a KEK, unwrapping into session objects. Every object
//! created for an operation is a session object held by a guard that destroys it on every path.

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::error::TokenError;
use super::keys::{self, PrivateKind, PrivateMaterial};
use super::mechanism_ext::{CKM_RSA_AES_KEY_WRAP, RawMechanism};
use super::profile::OaepHash;
use super::raw::Functions;

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

std::thread_local! {
    /// Set when a session object could not be destroyed on this thread: the session that holds
    /// it must then be closed (which destroys its session objects) rather than pooled.
    static DESTROY_FAILED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a session object failed to be destroyed since the last call (and resets it).
pub fn take_destroy_failure() -> bool {
    DESTROY_FAILED.with(|f| f.replace(false))
}

impl Drop for SessionObject<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.session.destroy_object(self.handle) {
            tracing::error!(error = %e, "could not destroy a session object; its session will be closed");
            DESTROY_FAILED.with(|f| f.set(true));
        }
    }
}

pub(crate) fn guard(session: &Session, handle: ObjectHandle) -> SessionObject<'_> {
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

/// The same in one call to the token: an RSA-OAEP wrapped key is as long as the modulus.
pub fn oaep_wrap_once(
    raw: &Functions,
    session: &Session,
    hash: OaepHash,
    modulus_len: usize,
    wrapping: ObjectHandle,
    key: ObjectHandle,
) -> Result<Vec<u8>, TokenError> {
    raw.wrap_key(session, &oaep_mechanism(hash), wrapping, key, modulus_len)
        .map_err(|e| e.in_op("C_WrapKey (RSA-OAEP)"))
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
            let id = read_facts(session, *h, &[AttributeType::Id])?.id;
            Ok(Some((*h, id)))
        }
        many => Err(TokenError::Refused(format!(
            "{} keys carry the KEK label \"{label}\"; exactly one is expected",
            many.len()
        ))),
    }
}

/// What every key the bridge's own keys unwrap must be: sensitive (CKA_UNWRAP_TEMPLATE).
pub fn unwrap_template() -> Vec<Attribute> {
    vec![Attribute::Sensitive(true)]
}

/// Generates a key through `make`, first with CKA_UNWRAP_TEMPLATE; a token that does not take
/// the attribute gets the key without it (logged), never no key.
fn with_unwrap_template_if_taken(
    what: &str,
    make: impl Fn(&[Attribute]) -> Result<(), TokenError>,
) -> Result<(), TokenError> {
    match make(&unwrap_template()) {
        Err(e)
            if matches!(
                e.rv(),
                Some(
                    cryptoki::error::RvError::AttributeTypeInvalid
                        | cryptoki::error::RvError::AttributeValueInvalid
                        | cryptoki::error::RvError::TemplateInconsistent
                        | cryptoki::error::RvError::TemplateIncomplete
                )
            ) =>
        {
            tracing::warn!(key = what, error = %e, "the token does not take CKA_UNWRAP_TEMPLATE; the key is made without it");
            make(&[])
        }
        other => other,
    }
}

/// The vault KEK, generated in the token on first use. A new KEK cannot be modified, may
/// only wrap and unwrap with `mechanism` (the RFC 5649 wrap the self-test proved), where known,
/// and only unwraps keys as sensitive (CKA_UNWRAP_TEMPLATE), where the token takes it.
pub fn ensure_kek(
    session: &Session,
    raw: &super::raw::Functions,
    label: &str,
    mechanism: Option<RawMechanism>,
) -> Result<(ObjectHandle, Vec<u8>), TokenError> {
    if let Some(found) = find_kek(session, label)? {
        return Ok(found);
    }
    let id: [u8; 16] = rand::random();
    let mut t = vec![
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
        Attribute::Derive(false),
        Attribute::Modifiable(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    if let Some(m) = mechanism {
        t.push(Attribute::AllowedMechanisms(vec![m.mechanism_type()]));
    }
    with_unwrap_template_if_taken("vault KEK", |inner| {
        raw.generate_key(session, cryptoki_sys::CKM_AES_KEY_GEN, &t, inner)
            .map(|_| ())
    })?;
    tracing::info!(
        label,
        "created the vault key-encryption key in the bridge token"
    );
    find_kek(session, label)?
        .ok_or_else(|| TokenError::Refused(format!("the new KEK \"{label}\" cannot be found")))
}

/// A check value of the KEK, the same in every token that holds the same KEK: the first 16
/// bytes (hex) of SHA-256 over its RFC 5649 wrap of a fixed all-zero AES-256 key. RFC 5649
/// is deterministic, so two tokens with one KEK agree; the digest reveals nothing of the KEK
/// and is no wrapped key anyone could unwrap.
pub fn kek_check_value(
    session: &Session,
    mech: RawMechanism,
    kek: ObjectHandle,
) -> Result<String, TokenError> {
    use sha2::{Digest, Sha256};
    let t = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Sensitive(false),
        Attribute::Extractable(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Value(vec![0u8; 32]),
    ];
    let probe = session
        .create_object(&t)
        .map_err(TokenError::ck("C_CreateObject (KEK check key)"))?;
    let probe = guard(session, probe);
    let wrapped = kwp_wrap(session, mech, kek, probe.handle())?;
    Ok(hex::encode(&Sha256::digest(&wrapped)[..16]))
}

/// The label of the audit log's MAC key in the bridge token.
pub const AUDIT_MAC_LABEL: &str = "hsm-bridge-audit-mac";

/// The audit log's MAC key: an HMAC-SHA-256 key that never leaves the bridge token and can only
/// sign and verify. `create`: generated on first use (the daemon); otherwise absent is `None`
/// (`audit verify` never creates one).
pub fn audit_mac_key(session: &Session, create: bool) -> Result<Option<ObjectHandle>, TokenError> {
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(AUDIT_MAC_LABEL.as_bytes().to_vec()),
        ])
        .map_err(TokenError::ck("C_FindObjects (audit MAC key)"))?;
    match found.as_slice() {
        [h] => return Ok(Some(*h)),
        [] if !create => return Ok(None),
        [] => {}
        many => {
            return Err(TokenError::Refused(format!(
                "{} keys carry the label \"{AUDIT_MAC_LABEL}\"; exactly one is expected",
                many.len()
            )));
        }
    }
    let t = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::ValueLen(32u64.into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::Verify(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
        Attribute::Label(AUDIT_MAC_LABEL.as_bytes().to_vec()),
    ];
    let h = session
        .generate_key(&Mechanism::GenericSecretKeyGen, &t)
        .map_err(TokenError::ck("C_GenerateKey (audit MAC key)"))?;
    tracing::info!("created the audit log's MAC key in the bridge token");
    Ok(Some(h))
}

/// HMAC-SHA-256 of `data` under a token key.
pub fn hmac_sha256(
    session: &Session,
    key: ObjectHandle,
    data: &[u8],
) -> Result<Vec<u8>, TokenError> {
    session
        .sign(&Mechanism::Sha256Hmac, key, data)
        .map_err(TokenError::ck("C_Sign (HMAC-SHA-256)"))
}

/// Attributes of a token object, as far as they were asked for and the token gave them.
#[derive(Debug, Clone)]
pub struct KeyFacts {
    pub class: ObjectClass,
    pub key_type: Option<KeyType>,
    pub value_len: Option<u64>,
    pub extractable: Option<bool>,
    pub wrap_with_trusted: Option<bool>,
    pub label: String,
    pub id: Vec<u8>,
    pub modulus: Option<Vec<u8>>,
    pub public_exponent: Option<Vec<u8>>,
    pub ec_point: Option<Vec<u8>>,
    pub ec_params: Option<Vec<u8>>,
}

/// Reads the `wanted` attributes of an object.
pub fn read_facts(
    session: &Session,
    h: ObjectHandle,
    wanted: &[AttributeType],
) -> Result<KeyFacts, TokenError> {
    let attrs = session
        .get_attributes(h, wanted)
        .map_err(TokenError::ck("C_GetAttributeValue"))?;
    Ok(facts_of(attrs))
}

/// The same in one call to the token where labels and CKA_IDs are short (as they are: the
/// bridge's identifiers), for the upload's hot path.
pub fn read_facts_once(
    raw: &Functions,
    session: &Session,
    h: ObjectHandle,
    wanted: &[AttributeType],
) -> Result<KeyFacts, TokenError> {
    const ROOM: usize = 256;
    match raw.attributes_once(session, h, wanted, ROOM)? {
        Some(attrs) => Ok(facts_of(attrs)),
        None => read_facts(session, h, wanted),
    }
}

fn facts_of(attrs: Vec<Attribute>) -> KeyFacts {
    let mut f = KeyFacts {
        class: ObjectClass::DATA,
        key_type: None,
        value_len: None,
        extractable: None,
        wrap_with_trusted: None,
        label: String::new(),
        id: Vec::new(),
        modulus: None,
        public_exponent: None,
        ec_point: None,
        ec_params: None,
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
            Attribute::Modulus(m) => f.modulus = Some(m),
            Attribute::PublicExponent(e) => f.public_exponent = Some(e),
            Attribute::EcPoint(p) => f.ec_point = Some(p),
            Attribute::EcParams(p) => f.ec_params = Some(p),
            _ => {}
        }
    }
    f
}

/// What the bridge needs to know about a key found in a source token.
pub fn key_facts(session: &Session, h: ObjectHandle) -> Result<KeyFacts, TokenError> {
    read_facts(
        session,
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

/// How a private key is wrapped for AWS (RSA_AES_KEY_WRAP_SHA_1 or _SHA_256).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum PrivateWrap {
    /// The token's own CKM_RSA_AES_KEY_WRAP.
    Native { hash: OaepHash },
    /// Composed in the token: an ephemeral AES-256 session key, RFC 5649 wrap of the private
    /// key under it with `kwp`, RSA-OAEP wrap of the ephemeral key under the AWS key.
    Composed { hash: OaepHash, kwp: RawMechanism },
}

impl PrivateWrap {
    pub fn hash(self) -> OaepHash {
        match self {
            PrivateWrap::Native { hash } | PrivateWrap::Composed { hash, .. } => hash,
        }
    }

    /// The mechanism the AWS wrapping key object is restricted to.
    pub fn wrapping_key_mechanism(self) -> MechanismType {
        match self {
            PrivateWrap::Native { .. } => RawMechanism::new(CKM_RSA_AES_KEY_WRAP).mechanism_type(),
            PrivateWrap::Composed { .. } => MechanismType::RSA_PKCS_OAEP,
        }
    }

    pub fn describe(self) -> String {
        match self {
            PrivateWrap::Native { hash } => format!("native CKM_RSA_AES_KEY_WRAP, OAEP {hash}"),
            PrivateWrap::Composed { hash, kwp } => {
                format!("composed: {} + RSA-OAEP {hash}", kwp.name())
            }
        }
    }
}

/// Wraps a private key under an RSA public key the AWS way: `OAEP(ephemeral AES-256 key) ||
/// RFC5649(PKCS#8)`. The ephemeral key of the composed form is a session object destroyed
/// before this returns, whatever happens.
pub fn rsa_aes_wrap(
    session: &Session,
    method: PrivateWrap,
    wrapping: ObjectHandle,
    key: ObjectHandle,
) -> Result<Vec<u8>, TokenError> {
    match method {
        PrivateWrap::Native { hash } => RawMechanism::with_rsa_aes_key_wrap(hash, |m| {
            session
                .wrap_key(m, wrapping, key)
                .map_err(TokenError::ck("C_WrapKey (CKM_RSA_AES_KEY_WRAP)"))
        }),
        PrivateWrap::Composed { hash, kwp } => {
            // Extractable: the RSA-OAEP layer wraps it for AWS; its one own use is the RFC 5649 wrap.
            let ephemeral = single_use_wrapping_key(session, true, kwp.mechanism_type())?;
            let wrapped_key = kwp_wrap(session, kwp, ephemeral.handle(), key)?;
            let mut out = oaep_wrap(session, hash, wrapping, ephemeral.handle())?;
            out.extend_from_slice(&wrapped_key);
            Ok(out)
        }
    }
}

/// Pushes a private key held in software (a caller's import, or a self-test vector) into
/// the token as a session object; the template's copies of its components are wiped.
pub fn create_private_key<'s>(
    session: &'s Session,
    material: &PrivateMaterial,
    kind: PrivateKind,
) -> Result<SessionObject<'s>, TokenError> {
    let mut t = keys::private_template(kind);
    t.extend(material.components());
    let result = session.create_object(&t);
    keys::wipe(&mut t);
    let h = result.map_err(TokenError::ck("C_CreateObject (private key)"))?;
    Ok(guard(session, h))
}

/// A key pair generated in the token, both halves session objects.
pub fn generate_key_pair(
    session: &Session,
    kind: PrivateKind,
) -> Result<(SessionObject<'_>, SessionObject<'_>), TokenError> {
    let (mech, mut public) = match (kind.rsa_bits(), kind.curve()) {
        (Some(bits), _) => (
            Mechanism::RsaPkcsKeyPairGen,
            vec![
                Attribute::ModulusBits(u64::from(bits).into()),
                Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                Attribute::Encrypt(true),
            ],
        ),
        (None, Some(curve)) => (
            Mechanism::EccKeyPairGen,
            vec![Attribute::EcParams(curve.ec_params().to_vec())],
        ),
        (None, None) => return Err(TokenError::Refused(format!("cannot generate {kind}"))),
    };
    public.extend([
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::Verify(true),
    ]);
    let private: Vec<Attribute> = keys::private_template(kind)
        .into_iter()
        .filter(|a| !matches!(a, Attribute::Class(_) | Attribute::KeyType(_)))
        .collect();
    let (p, k) = session
        .generate_key_pair(&mech, &public, &private)
        .map_err(TokenError::ck("C_GenerateKeyPair"))?;
    Ok((guard(session, p), guard(session, k)))
}

/// A key pair generated in a token that drops an EC scalar's leading zero bytes when it
/// exports the key (kryoptic keeps the generator's big number as is): a pair whose private
/// key exports shorter than a full-length reference key is destroyed and generated again.
/// That excludes the keys whose first scalar byte is zero (1 in 256 of P-256 and P-384 keys,
/// half of all P-521 keys), under one bit of the key space.
pub fn generate_full_length_key_pair(
    session: &Session,
    kind: PrivateKind,
) -> Result<(SessionObject<'_>, SessionObject<'_>), TokenError> {
    const ATTEMPTS: usize = 32;
    let Some(full) = full_scalar_export_len(session, kind)? else {
        return generate_key_pair(session, kind);
    };
    for _ in 0..ATTEMPTS {
        let (public, private) = generate_key_pair(session, kind)?;
        let len = private_export_len(session, private.handle())?;
        if len >= full {
            return Ok((public, private));
        }
        tracing::debug!(%kind, len, full, "generated key exports a short scalar; generating another");
    }
    Err(TokenError::Refused(format!(
        "the token exported the scalar of {ATTEMPTS} generated {kind} keys short; import the key instead"
    )))
}

/// Whether an EC private key exports its scalar at full length (RSA keys always pass), for
/// tokens that drop leading zero bytes: AWS refuses such material after CreateKey.
pub fn exports_full_scalar(
    session: &Session,
    key: ObjectHandle,
    kind: PrivateKind,
) -> Result<bool, TokenError> {
    match full_scalar_export_len(session, kind)? {
        Some(full) => Ok(private_export_len(session, key)? >= full),
        None => Ok(true),
    }
}

/// The export length of a key of this curve whose scalar has no leading zero byte (a
/// reference key made for the measurement); `None` for RSA.
fn full_scalar_export_len(
    session: &Session,
    kind: PrivateKind,
) -> Result<Option<usize>, TokenError> {
    let Some(curve) = kind.curve() else {
        return Ok(None);
    };
    let mut scalar = Zeroizing::new(vec![0u8; curve.scalar_len()]);
    scalar[0] = 1;
    let reference = create_private_key(session, &PrivateMaterial::Ec { curve, scalar }, kind)?;
    private_export_len(session, reference.handle()).map(Some)
}

/// An AES-256 session key generated for one wrap with one mechanism.
fn single_use_wrapping_key(
    session: &Session,
    extractable: bool,
    mechanism: MechanismType,
) -> Result<SessionObject<'_>, TokenError> {
    let t = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32u64.into()),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(extractable),
        Attribute::Wrap(true),
        Attribute::Unwrap(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Derive(false),
        Attribute::Sign(false),
        Attribute::AllowedMechanisms(vec![mechanism]),
    ];
    let h = session
        .generate_key(&Mechanism::AesKeyGen, &t)
        .map_err(TokenError::ck("C_GenerateKey (single-use AES)"))?;
    Ok(guard(session, h))
}

/// How long a private key object's PKCS#8 export is, measured by wrapping it under a
/// throwaway AES-GCM session key (the ciphertext is the plaintext's length plus the tag).
/// The ciphertext is dropped and its key destroyed, so nothing of the material leaves the token.
pub fn private_export_len(session: &Session, key: ObjectHandle) -> Result<usize, TokenError> {
    const TAG_BITS: u64 = 128;
    let throwaway = single_use_wrapping_key(session, false, MechanismType::AES_GCM)?;
    // The key is used once, so a fixed nonce is safe.
    let mut iv = [0u8; 12];
    let params = GcmParams::new(&mut iv, &[], TAG_BITS.into())
        .map_err(|e| TokenError::Refused(format!("AES-GCM parameters: {e}")))?;
    let out = session
        .wrap_key(&Mechanism::AesGcm(params), throwaway.handle(), key)
        .map_err(TokenError::ck("C_WrapKey (AES-GCM, length check)"))?;
    Ok(out.len().saturating_sub(TAG_BITS as usize / 8))
}

/// The SubjectPublicKeyInfo of a public key object (or of an RSA private key object, whose
/// modulus and exponent are public).
pub fn public_key_spki(
    session: &Session,
    h: ObjectHandle,
    kind: PrivateKind,
) -> Result<Vec<u8>, TokenError> {
    let wanted = if kind.curve().is_some() {
        vec![AttributeType::EcPoint]
    } else {
        vec![AttributeType::Modulus, AttributeType::PublicExponent]
    };
    let f = read_facts(session, h, &wanted)?;
    let spki = match (kind.curve(), f.modulus, f.public_exponent, f.ec_point) {
        (Some(curve), _, _, Some(p)) => {
            keys::ec_spki_der(curve, &keys::ec_point_from_attribute(&p))
        }
        (None, Some(m), Some(e), _) => keys::rsa_spki_der(&m, &e),
        _ => Err("the token did not give the public key".to_owned()),
    };
    spki.map_err(TokenError::Refused)
}

pub fn kwp_unwrap_private<'s>(
    session: &'s Session,
    mech: RawMechanism,
    kek: ObjectHandle,
    blob: &[u8],
    kind: PrivateKind,
) -> Result<SessionObject<'s>, TokenError> {
    let t = keys::private_template(kind);
    let h = session
        .unwrap_key(&mech.without_params(), kek, blob, &t)
        .map_err(TokenError::ck("C_UnwrapKey (RFC 5649, private key)"))?;
    Ok(guard(session, h))
}

/// What a private key found in a source token is.
pub fn private_key_kind(
    session: &Session,
    h: ObjectHandle,
) -> Result<Option<PrivateKind>, TokenError> {
    let f = read_facts(
        session,
        h,
        &[
            AttributeType::KeyType,
            AttributeType::Modulus,
            AttributeType::EcParams,
        ],
    )?;
    let (key_type, modulus, params) = (f.key_type, f.modulus, f.ec_params);
    Ok(match key_type {
        Some(k) if k == KeyType::RSA => modulus.and_then(|m| {
            let first = m.iter().position(|b| *b != 0).unwrap_or(m.len());
            PrivateKind::from_rsa_bits((m.len() - first) * 8)
        }),
        Some(k) if k == KeyType::EC => params
            .and_then(|p| keys::Curve::from_ec_params(&p))
            .map(PrivateKind::from_curve),
        _ => None,
    })
}

/// What an unwrapped object must turn out to be.
#[derive(Clone, Copy, Debug)]
pub enum Expected {
    SecretLen(usize),
    Private(PrivateKind),
}

/// Checks a freshly unwrapped object against what its sender said it was: an unwrap that
/// "succeeds" into a key of another size or type must not travel on to AWS. Tokens that do
/// not answer (SoftHSM2 reports 0 as the length of unwrapped secrets) are not held to it.
pub fn check_unwrapped(
    session: &Session,
    h: ObjectHandle,
    expected: Expected,
) -> Result<(), TokenError> {
    match expected {
        Expected::SecretLen(want) => {
            let len = read_facts(session, h, &[AttributeType::ValueLen])?.value_len;
            match len {
                Some(l) if l != 0 && l != want as u64 => Err(TokenError::Refused(format!(
                    "the unwrapped key is {l} bytes, not the {want} announced"
                ))),
                _ => Ok(()),
            }
        }
        Expected::Private(want) => match private_key_kind(session, h)? {
            Some(k) if k == want => Ok(()),
            Some(k) => Err(TokenError::Refused(format!(
                "the unwrapped key is {k}, not the {want} announced"
            ))),
            None => {
                // No kind: either the token did not say, or it said something no spec takes.
                let f = read_facts(
                    session,
                    h,
                    &[AttributeType::Modulus, AttributeType::EcParams],
                )?;
                if f.modulus.is_some() || f.ec_params.is_some() {
                    Err(TokenError::Refused(format!(
                        "the unwrapped key is of a size or curve no key spec takes, not the {want} announced"
                    )))
                } else {
                    Ok(())
                }
            }
        },
    }
}

/// Keys, certificates and data objects this process sees in the token: (token objects,
/// session objects). Other classes (kryoptic lists its mechanisms as objects) are left out.
pub fn count_objects(session: &Session) -> Result<(usize, usize), TokenError> {
    let mut counts = (0, 0);
    for class in [
        ObjectClass::DATA,
        ObjectClass::CERTIFICATE,
        ObjectClass::PUBLIC_KEY,
        ObjectClass::PRIVATE_KEY,
        ObjectClass::SECRET_KEY,
    ] {
        for (on_token, slot) in [(true, &mut counts.0), (false, &mut counts.1)] {
            *slot += session
                .find_objects(&[Attribute::Class(class), Attribute::Token(on_token)])
                .map_err(TokenError::ck("C_FindObjects"))?
                .len();
        }
    }
    Ok(counts)
}

/// The bridge token's transport key pair: other key managers wrap keys for the bridge under
/// its public half; the private half never leaves the token and may only unwrap.
pub const TRANSPORT_LABEL: &str = "hsm-bridge-transport";

pub fn find_transport_key(
    session: &Session,
    label: &str,
) -> Result<Option<(ObjectHandle, ObjectHandle)>, TokenError> {
    let one = |class| -> Result<Option<ObjectHandle>, TokenError> {
        let found = session
            .find_objects(&[
                Attribute::Class(class),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
            .map_err(TokenError::ck("C_FindObjects (transport key)"))?;
        match found.as_slice() {
            [] => Ok(None),
            [h] => Ok(Some(*h)),
            _ => Err(TokenError::Refused(format!(
                "several keys carry the transport label \"{label}\""
            ))),
        }
    };
    Ok(
        match (
            one(ObjectClass::PUBLIC_KEY)?,
            one(ObjectClass::PRIVATE_KEY)?,
        ) {
            (Some(p), Some(k)) => Some((p, k)),
            _ => None,
        },
    )
}

pub fn ensure_transport_key(
    session: &Session,
    raw: &super::raw::Functions,
    label: &str,
) -> Result<(ObjectHandle, ObjectHandle), TokenError> {
    if let Some(found) = find_transport_key(session, label)? {
        return Ok(found);
    }
    let id: [u8; 16] = rand::random();
    let public = [
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::ModulusBits(3072u64.into()),
        Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
        Attribute::Wrap(true),
        Attribute::Encrypt(false),
        Attribute::Verify(false),
        Attribute::Modifiable(false),
        Attribute::AllowedMechanisms(vec![MechanismType::RSA_PKCS_OAEP]),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    // Only RSA-OAEP unwraps (of secret keys, and of the ephemeral key of an RSA-AES wrap).
    let private = [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Unwrap(true),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Derive(false),
        Attribute::Modifiable(false),
        Attribute::AllowedMechanisms(vec![MechanismType::RSA_PKCS_OAEP]),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    with_unwrap_template_if_taken("transport key", |inner| {
        raw.generate_key_pair(
            session,
            cryptoki_sys::CKM_RSA_PKCS_KEY_PAIR_GEN,
            &public,
            &private,
            inner,
        )
    })?;
    tracing::info!(label, "created the transport key pair in the bridge token");
    find_transport_key(session, label)?.ok_or_else(|| {
        TokenError::Refused(format!("the new transport key \"{label}\" cannot be found"))
    })
}

/// A session RSA key pair whose private half may only unwrap (self-test).
pub fn generate_unwrapping_pair(
    session: &Session,
) -> Result<(SessionObject<'_>, SessionObject<'_>), TokenError> {
    let public = [
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Token(false),
        Attribute::Private(false),
        Attribute::ModulusBits(2048u64.into()),
        Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
        Attribute::Wrap(true),
    ];
    let private = [
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Unwrap(true),
        Attribute::Decrypt(false),
    ];
    let (p, k) = session
        .generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)
        .map_err(TokenError::ck("C_GenerateKeyPair"))?;
    Ok((guard(session, p), guard(session, k)))
}

/// Modulus and exponent of an RSA public key object.
pub fn rsa_public_parts(
    session: &Session,
    h: ObjectHandle,
) -> Result<(Vec<u8>, Vec<u8>), TokenError> {
    let f = read_facts(
        session,
        h,
        &[AttributeType::Modulus, AttributeType::PublicExponent],
    )?;
    match (f.modulus, f.public_exponent) {
        (Some(m), Some(e)) => Ok((m, e)),
        _ => Err(TokenError::Refused(
            "the token did not give the RSA public key".into(),
        )),
    }
}

/// The transport public key as SubjectPublicKeyInfo DER, if the token has one yet.
pub fn transport_spki_der(session: &Session) -> Result<Option<Vec<u8>>, TokenError> {
    let Some((public, _)) = find_transport_key(session, TRANSPORT_LABEL)? else {
        return Ok(None);
    };
    let (m, e) = rsa_public_parts(session, public)?;
    keys::rsa_spki_der(&m, &e)
        .map(Some)
        .map_err(TokenError::Refused)
}

/// RSA-OAEP unwrap of a secret key into a session object.
pub fn oaep_unwrap_secret<'s>(
    session: &'s Session,
    hash: OaepHash,
    unwrapping: ObjectHandle,
    blob: &[u8],
    kind: SecretKind,
) -> Result<SessionObject<'s>, TokenError> {
    let h = session
        .unwrap_key(
            &oaep_mechanism(hash),
            unwrapping,
            blob,
            &secret_template(kind),
        )
        .map_err(TokenError::ck("C_UnwrapKey (RSA-OAEP)"))?;
    Ok(guard(session, h))
}

/// RFC 3394 (CKM_AES_KEY_WRAP) unwrap of a secret key into a session object.
pub fn aes_kw_unwrap_secret<'s>(
    session: &'s Session,
    kek: ObjectHandle,
    blob: &[u8],
    kind: SecretKind,
) -> Result<SessionObject<'s>, TokenError> {
    let h = session
        .unwrap_key(&Mechanism::AesKeyWrap, kek, blob, &secret_template(kind))
        .map_err(TokenError::ck("C_UnwrapKey (RFC 3394)"))?;
    Ok(guard(session, h))
}

/// Unwraps `OAEP(ephemeral AES key) || RFC5649(PKCS#8)` (the RSA_AES_KEY_WRAP form) into a
/// private key session object; the ephemeral key lives only inside this call.
pub fn rsa_aes_unwrap_private<'s>(
    session: &'s Session,
    hash: OaepHash,
    kwp: RawMechanism,
    unwrapping: ObjectHandle,
    modulus_len: usize,
    blob: &[u8],
    kind: PrivateKind,
) -> Result<SessionObject<'s>, TokenError> {
    if blob.len() <= modulus_len {
        return Err(TokenError::Refused(
            "the wrapped private key is too short".into(),
        ));
    }
    let t = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Unwrap(true),
        Attribute::Wrap(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
    ];
    let ephemeral = guard(
        session,
        session
            .unwrap_key(&oaep_mechanism(hash), unwrapping, &blob[..modulus_len], &t)
            .map_err(TokenError::ck("C_UnwrapKey (RSA-OAEP, ephemeral key)"))?,
    );
    kwp_unwrap_private(session, kwp, ephemeral.handle(), &blob[modulus_len..], kind)
}
