//! The fingerprint of a key's material, computed by the token: it tells whether two keys hold
//! the same material without any material leaving the token. AES keys: AES-ECB of a zero block
//! (the key check value); HMAC keys: an HMAC-SHA-256 of a fixed message; RSA and EC private
//! keys: their public key (SubjectPublicKeyInfo DER). What is kept is the SHA-256 of that
//! output, so that the record holds no known plaintext/ciphertext pair of the key (only the
//! usual 3-byte KCV of AES keys is shown as well).

use cryptoki::mechanism::Mechanism;
use cryptoki::object::ObjectHandle;
use cryptoki::session::Session;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::TokenError;
use super::keys::PrivateKind;
use super::ops;
use super::raw::Functions;

/// The message HMAC keys are fingerprinted over; fixed for all time (changing it would make
/// every stored fingerprint unverifiable).
const HMAC_MESSAGE: &[u8] = b"hsm-bridge key fingerprint v1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// AES-ECB encryption of 16 zero bytes (its first 3 bytes are the usual KCV).
    AesKcv,
    /// HMAC-SHA-256 of a fixed message.
    HmacSha256,
    /// SHA-256 of the public key's SubjectPublicKeyInfo.
    PublicKeySha256,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub method: Method,
    /// Hex of the SHA-256 of what the token computed.
    pub value: String,
    /// The conventional 3-byte key check value of an AES key (hex), for display.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kcv: Option<String>,
}

impl Fingerprint {
    fn of(method: Method, out: &[u8]) -> Self {
        Fingerprint {
            method,
            value: hex::encode(sha2::Sha256::digest(out)),
            kcv: (method == Method::AesKcv).then(|| hex::encode(&out[..out.len().min(3)])),
        }
    }

    pub fn kcv(&self) -> Option<&str> {
        self.kcv.as_deref()
    }
}

/// What kind of key is fingerprinted.
#[derive(Debug, Clone, Copy)]
pub enum Subject {
    Aes,
    Hmac,
    Private(PrivateKind),
}

/// The fingerprint of the key at `h`. `public_spki` is the key's public key where the source
/// knows it; an EC private key needs it (a private EC object does not carry its point), and it
/// must agree with what the token says for RSA.
pub fn compute(
    raw: &Functions,
    session: &Session,
    h: ObjectHandle,
    subject: Subject,
    public_spki: Option<&[u8]>,
) -> Result<Fingerprint, TokenError> {
    fn unusable(what: &'static str) -> impl FnOnce(TokenError) -> TokenError {
        move |e: TokenError| {
            TokenError::Refused(format!(
                "the token could not fingerprint the key ({what}): {e}; the key needs {}",
                match what {
                    "AES-ECB" => "CKA_ENCRYPT",
                    _ => "CKA_SIGN",
                }
            ))
        }
    }
    match subject {
        Subject::Aes => {
            let out = raw
                .encrypt(session, &Mechanism::AesEcb, h, &[0u8; 16], 16)
                .map_err(|e| e.in_op("C_Encrypt (AES-ECB)"))
                .map_err(unusable("AES-ECB"))?;
            Ok(Fingerprint::of(Method::AesKcv, &out))
        }
        Subject::Hmac => {
            let out = session
                .sign(&Mechanism::Sha256Hmac, h, HMAC_MESSAGE)
                .map_err(TokenError::ck("C_Sign (HMAC-SHA-256)"))
                .map_err(unusable("HMAC-SHA-256"))?;
            Ok(Fingerprint::of(Method::HmacSha256, &out))
        }
        Subject::Private(kind) => {
            let spki = if kind.curve().is_some() {
                public_spki
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| {
                        TokenError::Refused(
                            "the public key of this EC key is not known (no public key object beside it)"
                                .into(),
                        )
                    })?
            } else {
                let from_token = ops::public_key_spki(session, h, kind)?;
                if let Some(given) = public_spki
                    && given != from_token.as_slice()
                {
                    return Err(TokenError::Refused(
                        "the public key the source names is not this private key's".into(),
                    ));
                }
                from_token
            };
            Ok(Fingerprint::of(Method::PublicKeySha256, &spki))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_digest_and_the_short_kcv_are_kept() {
        let out = [0x11u8; 16];
        let f = Fingerprint::of(Method::AesKcv, &out);
        assert_eq!(f.kcv(), Some("111111"));
        assert_eq!(f.value, hex::encode(sha2::Sha256::digest(out)));
        assert!(!f.value.contains(&hex::encode(out)));
        assert_eq!(Fingerprint::of(Method::HmacSha256, &out).kcv(), None);
        let json = serde_json::to_value(&f).expect("json");
        assert_eq!(json["method"], "aes-kcv");
    }
}
