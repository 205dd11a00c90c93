//! Known-answer self-test run on every token at start. Mechanism flags do not prove that a
//! wrap is right (SoftHSM2 2.6.1 zero-pads RFC 5649 input; 2.7.0's native RSA-AES wrap uses
//! SHA-1 whatever it is asked), so each method is exercised on known secrets under keys whose
//! private half is held in software, and the output is checked in software. Only methods
//! proven here are ever used.

use std::collections::BTreeSet;
use std::fmt;

use cryptoki::mechanism::MechanismType;
use cryptoki::session::Session;
use rand::RngCore;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey};
use serde::Serialize;
use zeroize::Zeroizing;

use super::error::TokenError;
use super::mechanism_ext::RawMechanism;
use super::ops::{self, SecretKind};
use super::profile::{OaepHash, Profile};

/// Secret lengths the vault stores (HMAC keys up to 128 bytes, AES keys of 16/24/32).
pub const STORAGE_LENGTHS: std::ops::RangeInclusive<usize> = 16..=128;

/// Secrets used to prove OAEP wraps: AES-256 and HMAC keys of the AWS sizes.
const OAEP_PROBES: &[(SecretKind, usize)] = &[
    (SecretKind::Aes, 32),
    (SecretKind::Hmac, 28),
    (SecretKind::Hmac, 32),
    (SecretKind::Hmac, 48),
    (SecretKind::Hmac, 64),
    (SecretKind::Hmac, 100),
    (SecretKind::Hmac, 128),
];

#[derive(Debug, Clone, Serialize)]
pub struct Capabilities {
    /// OAEP digests proven for wrapping secret keys, preferred first.
    pub oaep: Vec<OaepHash>,
    /// How vault keys are kept under the KEK (bridge tokens only).
    pub storage: Option<StorageCaps>,
    /// Every method tried, with its outcome.
    pub findings: Vec<Finding>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StorageCaps {
    pub mechanism: RawMechanism,
    /// Secret lengths (bytes) that wrap exactly and come back intact.
    pub exact_lengths: BTreeSet<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub method: String,
    pub proven: bool,
    pub detail: String,
}

impl Capabilities {
    pub fn best_oaep(&self) -> Option<OaepHash> {
        self.oaep.first().copied()
    }

    pub fn can_store(&self, len: usize) -> bool {
        self.storage
            .as_ref()
            .is_some_and(|s| s.exact_lengths.contains(&len))
    }

    /// One line per method, for logs and `probe`.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .oaep
            .iter()
            .map(|h| format!("RSAES_OAEP_{}", aws_hash(*h)))
            .collect();
        if let Some(s) = &self.storage {
            parts.push(format!(
                "vault storage {} ({})",
                s.mechanism.name(),
                describe_lengths(&s.exact_lengths)
            ));
        }
        parts.join(", ")
    }
}

pub fn aws_hash(h: OaepHash) -> &'static str {
    match h {
        OaepHash::Sha1 => "SHA_1",
        OaepHash::Sha256 => "SHA_256",
    }
}

/// "16-128 bytes" or "lengths that are multiples of 8 between 16 and 128 bytes" and the like.
pub fn describe_lengths(set: &BTreeSet<usize>) -> String {
    let all: BTreeSet<usize> = STORAGE_LENGTHS.collect();
    if set == &all {
        return "every length from 16 to 128 bytes".into();
    }
    let mult8: BTreeSet<usize> = STORAGE_LENGTHS.filter(|l| l % 8 == 0).collect();
    if set == &mult8 {
        return "only lengths that are a multiple of 8 bytes".into();
    }
    if set.is_empty() {
        return "no length".into();
    }
    format!("{} of {} lengths", set.len(), all.len())
}

/// Why a wrap output was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// The software could not unwrap it at all (wrong digest, wrong key, bad integrity).
    Undecryptable(String),
    /// It unwrapped, but to other bytes than were put in.
    WrongValue { expected_len: usize, got_len: usize },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Undecryptable(why) => write!(f, "output does not unwrap in software ({why})"),
            Mismatch::WrongValue {
                expected_len,
                got_len,
            } if got_len > expected_len => write!(
                f,
                "output unwraps to {got_len} bytes for a {expected_len}-byte secret (input was padded)"
            ),
            Mismatch::WrongValue { .. } => write!(f, "output unwraps to a different value"),
        }
    }
}

/// Checks an RSA-OAEP wrap of `expected` under `key` with digest `hash` (MGF1 with the same
/// digest, empty label: AWS's RSAES_OAEP_SHA_*).
pub fn check_oaep_wrap(
    key: &RsaPrivateKey,
    hash: OaepHash,
    expected: &[u8],
    wrapped: &[u8],
) -> Result<(), Mismatch> {
    let padding = match hash {
        OaepHash::Sha1 => Oaep::new::<sha1::Sha1>(),
        OaepHash::Sha256 => Oaep::new::<sha2::Sha256>(),
    };
    let got = Zeroizing::new(
        key.decrypt(padding, wrapped)
            .map_err(|e| Mismatch::Undecryptable(e.to_string()))?,
    );
    compare(expected, &got)
}

/// Checks an RFC 5649 wrap of `expected` under the AES-256 key `kek`.
pub fn check_kwp_wrap(kek: &[u8; 32], expected: &[u8], wrapped: &[u8]) -> Result<(), Mismatch> {
    let kw = aes_kw::KekAes256::new(kek.into());
    let got = Zeroizing::new(
        kw.unwrap_with_padding_vec(wrapped)
            .map_err(|e| Mismatch::Undecryptable(format!("{e:?}")))?,
    );
    compare(expected, &got)
}

fn compare(expected: &[u8], got: &[u8]) -> Result<(), Mismatch> {
    use subtle_eq::ct_eq;
    if ct_eq(expected, got) {
        Ok(())
    } else {
        Err(Mismatch::WrongValue {
            expected_len: expected.len(),
            got_len: got.len(),
        })
    }
}

mod subtle_eq {
    /// Length-revealing, value-constant-time comparison (the values are test secrets, but the
    /// habit costs nothing).
    pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// The software RSA key whose public half the token wraps under during the self-test.
pub struct TestKey {
    private: RsaPrivateKey,
    modulus: Vec<u8>,
    exponent: Vec<u8>,
}

impl TestKey {
    pub fn generate() -> Result<Self, TokenError> {
        let private = RsaPrivateKey::new(&mut rand::thread_rng(), 2048)
            .map_err(|e| TokenError::SelfTest(format!("software RSA key generation: {e}")))?;
        let modulus = private.n().to_bytes_be();
        let exponent = private.e().to_bytes_be();
        Ok(Self {
            private,
            modulus,
            exponent,
        })
    }
}

fn random_secret(len: usize) -> Zeroizing<Vec<u8>> {
    let mut v = Zeroizing::new(vec![0u8; len]);
    rand::thread_rng().fill_bytes(&mut v);
    v
}

fn ck_detail(e: &TokenError) -> String {
    match e.rv() {
        Some(rv) => format!("token refused: {rv:?}"),
        None => e.to_string(),
    }
}

/// Runs every check the profile asks for on one session of the token.
pub fn run(
    session: &Session,
    profile: &Profile,
    key: &TestKey,
    with_storage: bool,
) -> Result<Capabilities, TokenError> {
    let mut findings = Vec::new();
    let mut oaep = Vec::new();
    for &hash in &profile.oaep_hashes {
        let method = format!("RSA-OAEP {hash} wrap of secret keys");
        match prove_oaep(session, key, hash) {
            Ok(()) => {
                oaep.push(hash);
                findings.push(Finding {
                    method,
                    proven: true,
                    detail: format!("{} known secrets checked", OAEP_PROBES.len()),
                });
            }
            Err(detail) => findings.push(Finding {
                method,
                proven: false,
                detail,
            }),
        }
    }
    let storage = if with_storage {
        prove_storage(session, profile, key, oaep.first().copied(), &mut findings)
    } else {
        None
    };
    Ok(Capabilities {
        oaep,
        storage,
        findings,
    })
}

fn prove_oaep(session: &Session, key: &TestKey, hash: OaepHash) -> Result<(), String> {
    let wrapping = ops::import_rsa_wrapping_key(
        session,
        &key.modulus,
        &key.exponent,
        MechanismType::RSA_PKCS_OAEP,
    )
    .map_err(|e| ck_detail(&e))?;
    for &(kind, len) in OAEP_PROBES {
        let secret = random_secret(len);
        let obj = ops::create_secret(session, kind, &secret).map_err(|e| ck_detail(&e))?;
        let wrapped = ops::oaep_wrap(session, hash, wrapping.handle(), obj.handle())
            .map_err(|e| ck_detail(&e))?;
        check_oaep_wrap(&key.private, hash, &secret, &wrapped)
            .map_err(|m| format!("{len}-byte {kind:?} secret: {m}"))?;
    }
    Ok(())
}

fn prove_storage(
    session: &Session,
    profile: &Profile,
    key: &TestKey,
    oaep: Option<OaepHash>,
    findings: &mut Vec<Finding>,
) -> Option<StorageCaps> {
    let mut best: Option<StorageCaps> = None;
    for &mech in &profile.kwp_mechanisms {
        let method = format!(
            "{} storage of secret keys under an AES-256 KEK",
            mech.name()
        );
        match prove_kwp_lengths(session, mech, key, oaep) {
            Ok(exact) => {
                let detail = describe_lengths(&exact);
                let proven = !exact.is_empty();
                findings.push(Finding {
                    method,
                    proven,
                    detail: format!("exact for {detail}"),
                });
                if proven
                    && best
                        .as_ref()
                        .is_none_or(|b| exact.len() > b.exact_lengths.len())
                {
                    best = Some(StorageCaps {
                        mechanism: mech,
                        exact_lengths: exact,
                    });
                }
            }
            Err(detail) => findings.push(Finding {
                method,
                proven: false,
                detail,
            }),
        }
    }
    best
}

/// Wraps a known secret of every storable length under a known KEK and checks each in
/// software; then proves the unwrap side on the largest and smallest exact lengths by
/// unwrapping in the token and re-wrapping under the proven OAEP method.
fn prove_kwp_lengths(
    session: &Session,
    mech: RawMechanism,
    key: &TestKey,
    oaep: Option<OaepHash>,
) -> Result<BTreeSet<usize>, String> {
    let mut kek_value = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(kek_value.as_mut());
    let kek = ops::create_test_kek(session, kek_value.as_ref()).map_err(|e| ck_detail(&e))?;
    let mut exact = BTreeSet::new();
    let mut blobs = Vec::new();
    for len in STORAGE_LENGTHS {
        let secret = random_secret(len);
        let obj =
            ops::create_secret(session, SecretKind::Hmac, &secret).map_err(|e| ck_detail(&e))?;
        let wrapped = match ops::kwp_wrap(session, mech, kek.handle(), obj.handle()) {
            Ok(w) => w,
            Err(e) if len == *STORAGE_LENGTHS.start() => return Err(ck_detail(&e)),
            Err(_) => continue,
        };
        if check_kwp_wrap(&kek_value, &secret, &wrapped).is_ok() {
            exact.insert(len);
            blobs.push((len, secret, wrapped));
        }
    }
    let Some(hash) = oaep else {
        return Err("no proven OAEP method to check the unwrap side with".into());
    };
    let wrapping = ops::import_rsa_wrapping_key(
        session,
        &key.modulus,
        &key.exponent,
        MechanismType::RSA_PKCS_OAEP,
    )
    .map_err(|e| ck_detail(&e))?;
    let picks: Vec<_> = [blobs.first(), blobs.last()]
        .into_iter()
        .flatten()
        .collect();
    for (len, secret, wrapped) in picks {
        let back = ops::kwp_unwrap_secret(session, mech, kek.handle(), wrapped, SecretKind::Hmac)
            .map_err(|e| format!("unwrap of a {len}-byte secret: {}", ck_detail(&e)))?;
        let again = ops::oaep_wrap(session, hash, wrapping.handle(), back.handle())
            .map_err(|e| ck_detail(&e))?;
        check_oaep_wrap(&key.private, hash, secret, &again)
            .map_err(|m| format!("round trip of a {len}-byte secret: {m}"))?;
    }
    Ok(exact)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::RsaPublicKey;

    fn key() -> RsaPrivateKey {
        RsaPrivateKey::new(&mut rand::thread_rng(), 1024).expect("keygen")
    }

    #[test]
    fn oaep_check_accepts_a_correct_wrap() {
        let k = key();
        let pubk = RsaPublicKey::from(&k);
        let secret = [7u8; 32];
        let w = pubk
            .encrypt(
                &mut rand::thread_rng(),
                Oaep::new::<sha2::Sha256>(),
                &secret,
            )
            .expect("encrypt");
        assert_eq!(check_oaep_wrap(&k, OaepHash::Sha256, &secret, &w), Ok(()));
    }

    #[test]
    fn oaep_check_catches_a_token_that_uses_sha1_when_asked_for_sha256() {
        let k = key();
        let pubk = RsaPublicKey::from(&k);
        let secret = [7u8; 32];
        let w = pubk
            .encrypt(&mut rand::thread_rng(), Oaep::new::<sha1::Sha1>(), &secret)
            .expect("encrypt");
        assert!(matches!(
            check_oaep_wrap(&k, OaepHash::Sha256, &secret, &w),
            Err(Mismatch::Undecryptable(_))
        ));
    }

    #[test]
    fn oaep_check_catches_a_wrap_of_other_material() {
        let k = key();
        let pubk = RsaPublicKey::from(&k);
        let w = pubk
            .encrypt(
                &mut rand::thread_rng(),
                Oaep::new::<sha1::Sha1>(),
                &[1u8; 32],
            )
            .expect("encrypt");
        assert!(matches!(
            check_oaep_wrap(&k, OaepHash::Sha1, &[2u8; 32], &w),
            Err(Mismatch::WrongValue { .. })
        ));
    }

    #[test]
    fn kwp_check_accepts_a_correct_wrap() {
        let kek = [9u8; 32];
        let secret = [5u8; 28];
        let w = aes_kw::KekAes256::new(&kek.into())
            .wrap_with_padding_vec(&secret)
            .expect("wrap");
        assert_eq!(check_kwp_wrap(&kek, &secret, &w), Ok(()));
    }

    #[test]
    fn kwp_check_catches_softhsm_2_6_1_zero_padding() {
        // SoftHSM2 2.6.1 pads the input with zeros to a multiple of 8 before an RFC 5649 wrap.
        let kek = [9u8; 32];
        let secret = [5u8; 28];
        let mut padded = secret.to_vec();
        padded.resize(32, 0);
        let w = aes_kw::KekAes256::new(&kek.into())
            .wrap_with_padding_vec(&padded)
            .expect("wrap");
        let m = check_kwp_wrap(&kek, &secret, &w).expect_err("must be caught");
        assert_eq!(
            m,
            Mismatch::WrongValue {
                expected_len: 28,
                got_len: 32
            }
        );
        assert!(m.to_string().contains("padded"));
    }

    #[test]
    fn kwp_check_catches_rfc3394_output() {
        let kek = [9u8; 32];
        let secret = [5u8; 32];
        let w = aes_kw::KekAes256::new(&kek.into())
            .wrap_vec(&secret)
            .expect("wrap");
        assert!(matches!(
            check_kwp_wrap(&kek, &secret, &w),
            Err(Mismatch::Undecryptable(_))
        ));
    }

    #[test]
    fn lengths_are_described_plainly() {
        let mult8: BTreeSet<usize> = STORAGE_LENGTHS.filter(|l| l % 8 == 0).collect();
        assert_eq!(
            describe_lengths(&mult8),
            "only lengths that are a multiple of 8 bytes"
        );
        let all: BTreeSet<usize> = STORAGE_LENGTHS.collect();
        assert_eq!(describe_lengths(&all), "every length from 16 to 128 bytes");
    }
}
