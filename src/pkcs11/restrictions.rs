//! Whether the token honours the restrictions on the bridge's own keys (the vault KEK and the
//! transport key pair): each is read back and, where a harmless try can show it, tried. Every
//! try works on throwaway session keys; nothing in the token is changed.

use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use serde::Serialize;

use super::error::TokenError;
use super::mechanism_ext::RawMechanism;
use super::ops::{self, SessionObject, guard};
use super::profile::OaepHash;
use super::raw::Functions;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Set on the key, and the token refused what it forbids.
    Honoured,
    /// Set on the key; no harmless try can show the token enforces it.
    Set,
    /// Not on the key (made by an earlier version, or the token does not take it).
    Absent,
    /// Set on the key, yet the token did what it forbids.
    NotHonoured,
}

#[derive(Debug, Clone, Serialize)]
pub struct Restriction {
    pub key: &'static str,
    pub attribute: &'static str,
    pub state: State,
    pub detail: String,
}

impl Restriction {
    fn new(key: &'static str, attribute: &'static str, state: State, detail: &str) -> Self {
        Self {
            key,
            attribute,
            state,
            detail: detail.to_owned(),
        }
    }
}

/// What the self-test needs to try the restrictions: the vault's RFC 5649 mechanism and the
/// proven OAEP digest.
pub struct Tries {
    pub storage: Option<RawMechanism>,
    pub oaep: Option<OaepHash>,
}

fn is_modifiable(s: &Session, h: ObjectHandle) -> Option<bool> {
    s.get_attributes(h, &[AttributeType::Modifiable])
        .ok()?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Modifiable(b) => Some(b),
            _ => None,
        })
}

/// An extractable, non-sensitive AES session key: something to wrap.
fn throwaway(s: &Session) -> Result<SessionObject<'_>, TokenError> {
    let h = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32u64.into()),
                Attribute::Extractable(true),
                Attribute::Sensitive(false),
                Attribute::Encrypt(true),
            ],
        )
        .map_err(TokenError::ck("C_GenerateKey (restriction check)"))?;
    Ok(guard(s, h))
}

/// A template for unwrapping the throwaway key, sensitive or not (not is what the key's
/// unwrap template forbids).
fn unwrapped_template(sensitive: bool) -> [Attribute; 5] {
    [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Sensitive(sensitive),
        Attribute::Extractable(true),
    ]
}

/// CKA_ALLOWED_MECHANISMS: a wrap of a throwaway key with `other` (not the key's mechanism)
/// must be refused.
fn allowed_mechanisms(
    s: &Session,
    key: &'static str,
    h: ObjectHandle,
    other: &Mechanism<'_>,
    other_name: &str,
) -> Result<Restriction, TokenError> {
    let victim = throwaway(s)?;
    let refused = s.wrap_key(other, h, victim.handle()).is_err();
    Ok(if refused {
        Restriction::new(
            key,
            "CKA_ALLOWED_MECHANISMS",
            State::Honoured,
            &format!("a {other_name} wrap (not its mechanism) was refused"),
        )
    } else {
        Restriction::new(
            key,
            "CKA_ALLOWED_MECHANISMS",
            State::Absent,
            &format!("the token let it wrap with {other_name} too"),
        )
    })
}

/// CKA_MODIFIABLE=false: setting the key's label to the label it has must be refused.
fn modifiable(s: &Session, key: &'static str, h: ObjectHandle, label: &str) -> Restriction {
    match is_modifiable(s, h) {
        Some(false) => {
            match s.update_attributes(h, &[Attribute::Label(label.as_bytes().to_vec())]) {
                Err(_) => Restriction::new(
                    key,
                    "CKA_MODIFIABLE=false",
                    State::Honoured,
                    "rewriting its label was refused",
                ),
                Ok(()) => Restriction::new(
                    key,
                    "CKA_MODIFIABLE=false",
                    State::NotHonoured,
                    "the token let its label be rewritten",
                ),
            }
        }
        _ => Restriction::new(
            key,
            "CKA_MODIFIABLE=false",
            State::Absent,
            "the key can be modified",
        ),
    }
}

/// CKA_UNWRAP_TEMPLATE={CKA_SENSITIVE=true}: read back, then an unwrap of `blob` (a wrapped
/// throwaway key) as not sensitive must be refused.
fn unwrap_template(
    s: &Session,
    raw: &Functions,
    key: &'static str,
    h: ObjectHandle,
    unwrap: Option<(Mechanism<'_>, Vec<u8>)>,
) -> Restriction {
    const ATTR: &str = "CKA_UNWRAP_TEMPLATE={CKA_SENSITIVE=true}";
    let template = match raw.unwrap_template(s, h) {
        Ok(t) => t,
        Err(e) => {
            return Restriction::new(
                key,
                ATTR,
                State::Absent,
                &format!("it cannot be read back: {e}"),
            );
        }
    };
    let sensitive = template.is_some_and(|t| {
        t.iter()
            .any(|(ty, v)| *ty == cryptoki_sys::CKA_SENSITIVE && v.first().is_some_and(|b| *b != 0))
    });
    if !sensitive {
        return Restriction::new(key, ATTR, State::Absent, "the key has no such template");
    }
    let Some((mechanism, blob)) = unwrap else {
        return Restriction::new(key, ATTR, State::Set, "no wrap to try it with");
    };
    match s.unwrap_key(&mechanism, h, &blob, &unwrapped_template(false)) {
        // Refused because of the template only if the same unwrap as sensitive goes through.
        Err(_) => match s.unwrap_key(&mechanism, h, &blob, &unwrapped_template(true)) {
            Ok(k) => {
                drop(guard(s, k));
                Restriction::new(
                    key,
                    ATTR,
                    State::Honoured,
                    "unwrapping a key as not sensitive was refused, as sensitive it went through",
                )
            }
            Err(_) => Restriction::new(
                key,
                ATTR,
                State::Set,
                "the try was refused whatever the template said",
            ),
        },
        Ok(k) => {
            drop(guard(s, k));
            Restriction::new(
                key,
                ATTR,
                State::NotHonoured,
                "the token unwrapped a key as not sensitive",
            )
        }
    }
}

/// Checks the KEK (labelled `kek_label`) and the transport key pair, where they exist.
pub fn check(
    s: &Session,
    raw: &Functions,
    kek_label: &str,
    tries: &Tries,
) -> Result<Vec<Restriction>, TokenError> {
    let mut out = Vec::new();
    if let Some((kek, _)) = ops::find_kek(s, kek_label)? {
        out.push(modifiable(s, "vault KEK", kek, kek_label));
        out.push(allowed_mechanisms(
            s,
            "vault KEK",
            kek,
            &Mechanism::AesKeyWrap,
            "RFC 3394",
        )?);
        let victim = throwaway(s)?;
        let wrapped = tries.storage.and_then(|m| {
            s.wrap_key(&m.without_params(), kek, victim.handle())
                .ok()
                .map(|b| (m.without_params(), b))
        });
        out.push(unwrap_template(s, raw, "vault KEK", kek, wrapped));
    }
    if let Some((public, private)) = ops::find_transport_key(s, ops::TRANSPORT_LABEL)? {
        out.push(modifiable(
            s,
            "transport private key",
            private,
            ops::TRANSPORT_LABEL,
        ));
        out.push(modifiable(
            s,
            "transport public key",
            public,
            ops::TRANSPORT_LABEL,
        ));
        out.push(allowed_mechanisms(
            s,
            "transport public key",
            public,
            &Mechanism::RsaPkcs,
            "PKCS#1 v1.5",
        )?);
        let victim = throwaway(s)?;
        let wrapped = tries.oaep.and_then(|h| {
            s.wrap_key(&ops::oaep_mechanism(h), public, victim.handle())
                .ok()
                .map(|b| (ops::oaep_mechanism(h), b))
        });
        out.push(unwrap_template(
            s,
            raw,
            "transport private key",
            private,
            wrapped,
        ));
    }
    Ok(out)
}
