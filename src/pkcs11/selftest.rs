//! Known-answer self-test run on every token at start. Mechanism flags do not prove that a
//! wrap is right (SoftHSM2 2.6.1 zero-pads RFC 5649 input; 2.7.0's native RSA-AES wrap uses
//! SHA-1 whatever it is asked), so each method is exercised on known secrets under keys whose
//! private half is held in software, and the output is checked in software. Only methods
//! proven here are ever used.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use cryptoki::mechanism::MechanismType;
use cryptoki::session::Session;
use rand::RngCore;
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey};
use serde::Serialize;
use zeroize::Zeroizing;

use super::error::TokenError;
use super::keys::{PrivateKind, PrivateMaterial};
use super::mechanism_ext::RawMechanism;
use super::ops::{self, PrivateWrap, SecretKind};
use super::profile::{OaepHash, Profile};

/// The known private keys every token must export exactly (public test vectors).
const TEST_KEYS: [(PrivateKind, &[u8]); 7] = [
    (
        PrivateKind::Rsa2048,
        include_bytes!("selftest_keys/rsa2048.der"),
    ),
    (
        PrivateKind::Rsa3072,
        include_bytes!("selftest_keys/rsa3072.der"),
    ),
    (
        PrivateKind::Rsa4096,
        include_bytes!("selftest_keys/rsa4096.der"),
    ),
    (
        PrivateKind::EcP256,
        include_bytes!("selftest_keys/p256.der"),
    ),
    (
        PrivateKind::EcP384,
        include_bytes!("selftest_keys/p384.der"),
    ),
    (
        PrivateKind::EcP521,
        include_bytes!("selftest_keys/p521.der"),
    ),
    (
        PrivateKind::EcSecp256k1,
        include_bytes!("selftest_keys/secp256k1.der"),
    ),
];

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
    /// Per private key type, the AWS wrap methods proven, preferred first.
    pub private: BTreeMap<PrivateKind, Vec<PrivateWrap>>,
    /// Private key types the vault keeps exactly under the KEK (bridge tokens only).
    pub private_storage: BTreeSet<PrivateKind>,
    /// Per private key type, every method tried with its outcome (the probe's table).
    pub private_findings: BTreeMap<PrivateKind, Vec<Finding>>,
    /// What the token unwraps correctly: keys other key managers send it (bridge tokens only).
    pub unwrap: Option<UnwrapCaps>,
    /// Every secret-key method tried, with its outcome.
    pub findings: Vec<Finding>,
}

/// Unwrapping proven on a bridge token, for keys fetched wrapped from elsewhere.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UnwrapCaps {
    /// RSA-OAEP digests with which secret keys unwrap exactly.
    pub oaep: Vec<OaepHash>,
    /// Per private key type, the OAEP digests with which the RSA_AES_KEY_WRAP form unwraps
    /// exactly (RFC 5649 with the storage mechanism).
    pub private: BTreeMap<PrivateKind, Vec<OaepHash>>,
    /// RFC 3394 (CKM_AES_KEY_WRAP) unwrap of AES keys.
    pub aes_kw: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct StorageCaps {
    pub mechanism: RawMechanism,
    /// HMAC (generic secret) lengths, in bytes, that wrap exactly and come back intact.
    pub exact_lengths: BTreeSet<usize>,
    /// The same for AES key objects (16, 24, 32).
    pub aes_lengths: BTreeSet<usize>,
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

    /// The preferred proven method for a private key type, or why there is none.
    pub fn private_wrap(&self, kind: PrivateKind) -> Result<PrivateWrap, String> {
        if let Some(m) = self.private.get(&kind).and_then(|v| v.first()) {
            return Ok(*m);
        }
        let why: Vec<String> = self
            .private_findings
            .get(&kind)
            .into_iter()
            .flatten()
            .map(|f| format!("{}: {}", f.method, f.detail))
            .collect();
        Err(if why.is_empty() {
            "no method was tried".to_owned()
        } else {
            why.join("; ")
        })
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
        let private: Vec<String> = self
            .private
            .iter()
            .filter_map(|(k, m)| {
                m.first()
                    .map(|m| format!("{k} (RSA_AES_KEY_WRAP_{})", aws_hash(m.hash())))
            })
            .collect();
        parts.push(if private.is_empty() {
            "no private key type".to_owned()
        } else {
            format!("private keys: {}", private.join(", "))
        });
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
    /// It unwrapped to something that is not exactly a PKCS#8 private key.
    BadEncoding(String),
    /// It unwrapped to a valid PKCS#8 key, but another one.
    OtherKey,
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
            Mismatch::BadEncoding(why) => {
                write!(f, "output unwraps to an invalid PKCS#8 encoding ({why})")
            }
            Mismatch::OtherKey => write!(f, "output unwraps to another key"),
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
    let got = Zeroizing::new(
        key.decrypt(oaep_padding(hash), wrapped)
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

fn oaep_padding(hash: OaepHash) -> Oaep {
    match hash {
        OaepHash::Sha1 => Oaep::new::<sha1::Sha1>(),
        OaepHash::Sha256 => Oaep::new::<sha2::Sha256>(),
    }
}

/// Checks AWS's RSA_AES_KEY_WRAP form of a private key: `OAEP(AES-256 key) || RFC5649(PKCS#8)`,
/// the PKCS#8 parsed strictly (no trailing bytes) and compared with `expected`.
pub fn check_private_wrap(
    key: &RsaPrivateKey,
    hash: OaepHash,
    expected: &PrivateMaterial,
    wrapped: &[u8],
) -> Result<(), Mismatch> {
    let k = key.size();
    if wrapped.len() <= k {
        return Err(Mismatch::Undecryptable("output is too short".into()));
    }
    let ephemeral = Zeroizing::new(
        key.decrypt(oaep_padding(hash), &wrapped[..k])
            .map_err(|e| Mismatch::Undecryptable(format!("ephemeral key: {e}")))?,
    );
    let ephemeral: [u8; 32] = ephemeral
        .as_slice()
        .try_into()
        .map_err(|_| Mismatch::Undecryptable("the ephemeral key is not AES-256".into()))?;
    let ephemeral = Zeroizing::new(ephemeral);
    check_private_kwp(&ephemeral, expected, &wrapped[k..])
}

/// Checks an RFC 5649 wrap of a private key under a known AES-256 key.
pub fn check_private_kwp(
    kek: &[u8; 32],
    expected: &PrivateMaterial,
    wrapped: &[u8],
) -> Result<(), Mismatch> {
    let der = Zeroizing::new(
        aes_kw::KekAes256::new(kek.into())
            .unwrap_with_padding_vec(wrapped)
            .map_err(|e| Mismatch::Undecryptable(format!("RFC 5649: {e:?}")))?,
    );
    let got = PrivateMaterial::from_pkcs8_der(&der).map_err(Mismatch::BadEncoding)?;
    if got.same_key(expected) {
        Ok(())
    } else {
        Err(Mismatch::OtherKey)
    }
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
    let mut private = BTreeMap::new();
    let mut private_storage = BTreeSet::new();
    let mut private_findings = BTreeMap::new();
    for (kind, der) in TEST_KEYS {
        let material = PrivateMaterial::from_pkcs8_der(der)
            .map_err(|e| TokenError::SelfTest(format!("{kind} test vector: {e}")))?;
        let (proven, found) = prove_private(session, profile, key, &oaep, kind, &material);
        if with_storage && !proven.is_empty() {
            if let Some(st) = &storage {
                let f =
                    prove_private_storage(session, st.mechanism, key, proven[0], kind, &material);
                if f.proven {
                    private_storage.insert(kind);
                }
                private_findings.insert(kind, [found, vec![f]].concat());
            } else {
                private_findings.insert(kind, found);
            }
        } else {
            private_findings.insert(kind, found);
        }
        if !proven.is_empty() {
            private.insert(kind, proven);
        }
    }
    let unwrap = if with_storage {
        let (u, f, pf) = prove_unwrap(session, profile, key, &oaep, storage.as_ref(), &private);
        findings.extend(f);
        for (k, v) in pf {
            private_findings.entry(k).or_insert_with(Vec::new).extend(v);
        }
        Some(u)
    } else {
        None
    };
    Ok(Capabilities {
        oaep,
        storage,
        private,
        private_storage,
        private_findings,
        unwrap,
        findings,
    })
}

fn soft_oaep(to: &rsa::RsaPublicKey, hash: OaepHash, data: &[u8]) -> Result<Vec<u8>, String> {
    to.encrypt(&mut rand::thread_rng(), oaep_padding(hash), data)
        .map_err(|e| e.to_string())
}

type UnwrapProof = (
    UnwrapCaps,
    Vec<Finding>,
    BTreeMap<PrivateKind, Vec<Finding>>,
);

/// Keys sent to the bridge arrive wrapped under its keys: proves, with known keys wrapped in
/// software, which forms the token unwraps exactly. Each unwrapped key is exported again with
/// a proven method to the software test key and compared.
fn prove_unwrap(
    session: &Session,
    profile: &Profile,
    key: &TestKey,
    oaep_proven: &[OaepHash],
    storage: Option<&StorageCaps>,
    private: &BTreeMap<PrivateKind, Vec<PrivateWrap>>,
) -> UnwrapProof {
    let mut caps = UnwrapCaps::default();
    let mut findings = Vec::new();
    let mut private_findings: BTreeMap<PrivateKind, Vec<Finding>> = BTreeMap::new();
    let Some(&export_hash) = oaep_proven.first() else {
        return (caps, findings, private_findings);
    };
    let setup = (|| {
        let (public, private_key) =
            ops::generate_unwrapping_pair(session).map_err(|e| ck_detail(&e))?;
        let (m, e) = ops::rsa_public_parts(session, public.handle()).map_err(|e| ck_detail(&e))?;
        let soft = rsa::RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(&m),
            rsa::BigUint::from_bytes_be(&e),
        )
        .map_err(|e| e.to_string())?;
        let test_wrapping = ops::import_rsa_wrapping_key(
            session,
            &key.modulus,
            &key.exponent,
            MechanismType::RSA_PKCS_OAEP,
        )
        .map_err(|e| ck_detail(&e))?;
        Ok::<_, String>((public, private_key, soft, m.len(), test_wrapping))
    })();
    let (_public, unwrapping, soft, modulus_len, test_wrapping) = match setup {
        Ok(v) => v,
        Err(detail) => {
            findings.push(Finding {
                method: "unwrapping under a token RSA key".into(),
                proven: false,
                detail,
            });
            return (caps, findings, private_findings);
        }
    };
    for &hash in &profile.oaep_hashes {
        let method = format!("RSA-OAEP {hash} unwrap of secret keys");
        let outcome = [(SecretKind::Aes, 32usize), (SecretKind::Hmac, 28)]
            .into_iter()
            .try_for_each(|(kind, len)| {
                let secret = random_secret(len);
                let blob = soft_oaep(&soft, hash, &secret)?;
                let obj = ops::oaep_unwrap_secret(session, hash, unwrapping.handle(), &blob, kind)
                    .map_err(|e| ck_detail(&e))?;
                let again =
                    ops::oaep_wrap(session, export_hash, test_wrapping.handle(), obj.handle())
                        .map_err(|e| ck_detail(&e))?;
                check_oaep_wrap(&key.private, export_hash, &secret, &again)
                    .map_err(|m| format!("{len}-byte {kind:?} key: {m}"))
            });
        match outcome {
            Ok(()) => {
                caps.oaep.push(hash);
                findings.push(Finding {
                    method,
                    proven: true,
                    detail: "known secrets unwrapped exactly".into(),
                });
            }
            Err(detail) => findings.push(Finding {
                method,
                proven: false,
                detail,
            }),
        }
    }
    // RFC 3394 under a known AES key (the DSM's aes-kw wrapping).
    {
        let method = "RFC 3394 (CKM_AES_KEY_WRAP) unwrap of AES keys".to_owned();
        let outcome = (|| {
            let mut kek_value = Zeroizing::new([0u8; 32]);
            rand::thread_rng().fill_bytes(kek_value.as_mut());
            let kek =
                ops::create_test_kek(session, kek_value.as_ref()).map_err(|e| ck_detail(&e))?;
            let secret = random_secret(32);
            let blob = aes_kw::KekAes256::new(kek_value.as_ref().into())
                .wrap_vec(&secret)
                .map_err(|e| format!("{e:?}"))?;
            let obj = ops::aes_kw_unwrap_secret(session, kek.handle(), &blob, SecretKind::Aes)
                .map_err(|e| ck_detail(&e))?;
            let again = ops::oaep_wrap(session, export_hash, test_wrapping.handle(), obj.handle())
                .map_err(|e| ck_detail(&e))?;
            check_oaep_wrap(&key.private, export_hash, &secret, &again).map_err(|m| m.to_string())
        })();
        caps.aes_kw = outcome.is_ok();
        findings.push(match outcome {
            Ok(()) => Finding {
                method,
                proven: true,
                detail: "a known AES-256 key unwrapped exactly".into(),
            },
            Err(detail) => Finding {
                method,
                proven: false,
                detail,
            },
        });
    }
    // The RSA_AES_KEY_WRAP form of private keys, for every type the token exports exactly.
    let Some(storage) = storage else {
        return (caps, findings, private_findings);
    };
    for (kind, der) in TEST_KEYS {
        let Some(export) = private.get(&kind).and_then(|m| m.first()).copied() else {
            continue;
        };
        let Ok(material) = PrivateMaterial::from_pkcs8_der(der) else {
            continue;
        };
        for &hash in &caps.oaep.clone() {
            let method = format!(
                "unwrap of RSA_AES_KEY_WRAP_{} ({})",
                aws_hash(hash),
                storage.mechanism.name()
            );
            let outcome = (|| {
                let eph = random_secret(32);
                let mut blob = soft_oaep(&soft, hash, &eph)?;
                let eph32: [u8; 32] = eph
                    .as_slice()
                    .try_into()
                    .map_err(|_| "ephemeral key".to_owned())?;
                blob.extend(
                    aes_kw::KekAes256::new(&eph32.into())
                        .wrap_with_padding_vec(der)
                        .map_err(|e| format!("{e:?}"))?,
                );
                let obj = ops::rsa_aes_unwrap_private(
                    session,
                    hash,
                    storage.mechanism,
                    unwrapping.handle(),
                    modulus_len,
                    &blob,
                    kind,
                )
                .map_err(|e| ck_detail(&e))?;
                let wrapping = ops::import_rsa_wrapping_key(
                    session,
                    &key.modulus,
                    &key.exponent,
                    export.wrapping_key_mechanism(),
                )
                .map_err(|e| ck_detail(&e))?;
                let again = ops::rsa_aes_wrap(session, export, wrapping.handle(), obj.handle())
                    .map_err(|e| ck_detail(&e))?;
                check_private_wrap(&key.private, export.hash(), &material, &again)
                    .map_err(|m| m.to_string())
            })();
            let entry = private_findings.entry(kind).or_default();
            match outcome {
                Ok(()) => {
                    caps.private.entry(kind).or_default().push(hash);
                    entry.push(Finding {
                        method,
                        proven: true,
                        detail: "known key unwrapped exactly".into(),
                    });
                }
                Err(detail) => entry.push(Finding {
                    method,
                    proven: false,
                    detail,
                }),
            }
        }
    }
    (caps, findings, private_findings)
}

/// The AWS wrap methods to try for private keys, preferred first: SHA-256 before SHA-1,
/// the token's native mechanism before the composed form.
fn private_candidates(profile: &Profile, oaep_proven: &[OaepHash]) -> Vec<PrivateWrap> {
    let mut hashes = profile.oaep_hashes.clone();
    hashes.sort_by_key(|h| match h {
        OaepHash::Sha256 => 0,
        OaepHash::Sha1 => 1,
    });
    let mut out = Vec::new();
    for hash in hashes {
        if profile.native_rsa_aes_key_wrap {
            out.push(PrivateWrap::Native { hash });
        }
        if oaep_proven.contains(&hash) {
            for &kwp in &profile.kwp_mechanisms {
                out.push(PrivateWrap::Composed { hash, kwp });
            }
        }
    }
    out
}

fn prove_private(
    session: &Session,
    profile: &Profile,
    key: &TestKey,
    oaep_proven: &[OaepHash],
    kind: PrivateKind,
    material: &PrivateMaterial,
) -> (Vec<PrivateWrap>, Vec<Finding>) {
    let candidates = private_candidates(profile, oaep_proven);
    let obj = match ops::create_private_key(session, material, kind) {
        Ok(o) => o,
        Err(e) => {
            let f = Finding {
                method: "holding the key".into(),
                proven: false,
                detail: format!("the token cannot hold a {kind} key ({})", ck_detail(&e)),
            };
            return (Vec::new(), vec![f]);
        }
    };
    let mut proven = Vec::new();
    let mut found = Vec::new();
    for method in candidates {
        let outcome = (|| {
            let wrapping = ops::import_rsa_wrapping_key(
                session,
                &key.modulus,
                &key.exponent,
                method.wrapping_key_mechanism(),
            )
            .map_err(|e| ck_detail(&e))?;
            let wrapped = ops::rsa_aes_wrap(session, method, wrapping.handle(), obj.handle())
                .map_err(|e| ck_detail(&e))?;
            check_private_wrap(&key.private, method.hash(), material, &wrapped)
                .map_err(|m| m.to_string())
        })();
        match outcome {
            Ok(()) => {
                proven.push(method);
                found.push(Finding {
                    method: method.describe(),
                    proven: true,
                    detail: "known key exported exactly".into(),
                });
            }
            Err(detail) => found.push(Finding {
                method: method.describe(),
                proven: false,
                detail,
            }),
        }
    }
    (proven, found)
}

/// Keeps a known private key under a known KEK, checks the blob in software, then unwraps it
/// in the token and exports it again with a proven AWS method.
fn prove_private_storage(
    session: &Session,
    mech: RawMechanism,
    key: &TestKey,
    aws_method: PrivateWrap,
    kind: PrivateKind,
    material: &PrivateMaterial,
) -> Finding {
    let method = format!("vault storage ({})", mech.name());
    let outcome = (|| {
        let mut kek_value = Zeroizing::new([0u8; 32]);
        rand::thread_rng().fill_bytes(kek_value.as_mut());
        let kek = ops::create_test_kek(session, kek_value.as_ref()).map_err(|e| ck_detail(&e))?;
        let obj = ops::create_private_key(session, material, kind).map_err(|e| ck_detail(&e))?;
        let blob =
            ops::kwp_wrap(session, mech, kek.handle(), obj.handle()).map_err(|e| ck_detail(&e))?;
        check_private_kwp(&kek_value, material, &blob).map_err(|m| m.to_string())?;
        let back = ops::kwp_unwrap_private(session, mech, kek.handle(), &blob, kind)
            .map_err(|e| format!("unwrap: {}", ck_detail(&e)))?;
        let wrapping = ops::import_rsa_wrapping_key(
            session,
            &key.modulus,
            &key.exponent,
            aws_method.wrapping_key_mechanism(),
        )
        .map_err(|e| ck_detail(&e))?;
        let again = ops::rsa_aes_wrap(session, aws_method, wrapping.handle(), back.handle())
            .map_err(|e| ck_detail(&e))?;
        check_private_wrap(&key.private, aws_method.hash(), material, &again)
            .map_err(|m| format!("round trip: {m}"))
    })();
    match outcome {
        Ok(()) => Finding {
            method,
            proven: true,
            detail: "kept and restored exactly".into(),
        },
        Err(detail) => Finding {
            method,
            proven: false,
            detail,
        },
    }
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
            Ok((exact, aes)) => {
                let detail = describe_lengths(&exact);
                let proven = !exact.is_empty();
                findings.push(Finding {
                    method,
                    proven,
                    detail: format!(
                        "exact for {detail}; AES keys of {}",
                        aes.iter()
                            .map(|l| format!("{} bits", l * 8))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                });
                if proven
                    && best
                        .as_ref()
                        .is_none_or(|b| exact.len() > b.exact_lengths.len())
                {
                    best = Some(StorageCaps {
                        mechanism: mech,
                        exact_lengths: exact,
                        aes_lengths: aes,
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

/// Wraps known secrets under a known KEK and checks each in software: HMAC (generic secret)
/// objects of every storable length and AES objects of 16, 24 and 32 bytes. Then proves the
/// unwrap side, for each kind, on its smallest and largest exact lengths by unwrapping in the
/// token and re-wrapping under the proven OAEP method. Returns (HMAC lengths, AES lengths).
fn prove_kwp_lengths(
    session: &Session,
    mech: RawMechanism,
    key: &TestKey,
    oaep: Option<OaepHash>,
) -> Result<(BTreeSet<usize>, BTreeSet<usize>), String> {
    let mut kek_value = Zeroizing::new([0u8; 32]);
    rand::thread_rng().fill_bytes(kek_value.as_mut());
    let kek = ops::create_test_kek(session, kek_value.as_ref()).map_err(|e| ck_detail(&e))?;
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
    let mut results = Vec::new();
    for (kind, lengths) in [
        (SecretKind::Hmac, STORAGE_LENGTHS.collect::<Vec<_>>()),
        (SecretKind::Aes, vec![16, 24, 32]),
    ] {
        let mut exact = BTreeSet::new();
        let mut blobs = Vec::new();
        for (i, len) in lengths.into_iter().enumerate() {
            let secret = random_secret(len);
            let obj = ops::create_secret(session, kind, &secret).map_err(|e| ck_detail(&e))?;
            let wrapped = match ops::kwp_wrap(session, mech, kek.handle(), obj.handle()) {
                Ok(w) => w,
                Err(e) if i == 0 => return Err(ck_detail(&e)),
                Err(_) => continue,
            };
            if check_kwp_wrap(&kek_value, &secret, &wrapped).is_ok() {
                exact.insert(len);
                blobs.push((len, secret, wrapped));
            }
        }
        let picks: Vec<_> = [blobs.first(), blobs.last()]
            .into_iter()
            .flatten()
            .collect();
        for (len, secret, wrapped) in picks {
            let back = ops::kwp_unwrap_secret(session, mech, kek.handle(), wrapped, kind)
                .map_err(|e| format!("unwrap of a {len}-byte {kind:?} key: {}", ck_detail(&e)))?;
            let again = ops::oaep_wrap(session, hash, wrapping.handle(), back.handle())
                .map_err(|e| ck_detail(&e))?;
            check_oaep_wrap(&key.private, hash, secret, &again)
                .map_err(|m| format!("round trip of a {len}-byte {kind:?} key: {m}"))?;
        }
        results.push(exact);
    }
    let aes = results.pop().unwrap_or_default();
    let hmac = results.pop().unwrap_or_default();
    Ok((hmac, aes))
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

    fn vector(i: usize) -> PrivateMaterial {
        PrivateMaterial::from_pkcs8_der(TEST_KEYS[i].1).expect("vector")
    }

    /// AWS's RSA_AES_KEY_WRAP done in software, optionally padding the PKCS#8 first.
    fn soft_rsa_aes(to: &RsaPublicKey, hash: OaepHash, der: &[u8], pad: bool) -> Vec<u8> {
        let eph = [3u8; 32];
        let mut body = der.to_vec();
        if pad {
            body.resize(der.len().div_ceil(8) * 8, 0);
        }
        let mut out = to
            .encrypt(&mut rand::thread_rng(), oaep_padding(hash), &eph)
            .expect("oaep");
        out.extend(
            aes_kw::KekAes256::new(&eph.into())
                .wrap_with_padding_vec(&body)
                .expect("kwp"),
        );
        out
    }

    #[test]
    fn private_check_accepts_a_correct_wrap_of_every_vector() {
        let k = key();
        let pubk = RsaPublicKey::from(&k);
        for (i, (_, der)) in TEST_KEYS.iter().enumerate() {
            let w = soft_rsa_aes(&pubk, OaepHash::Sha256, der, false);
            assert_eq!(
                check_private_wrap(&k, OaepHash::Sha256, &vector(i), &w),
                Ok(())
            );
        }
    }

    #[test]
    fn private_check_catches_a_native_mechanism_that_uses_sha1_when_asked_for_sha256() {
        let k = key();
        let w = soft_rsa_aes(
            &RsaPublicKey::from(&k),
            OaepHash::Sha1,
            TEST_KEYS[0].1,
            false,
        );
        assert!(matches!(
            check_private_wrap(&k, OaepHash::Sha256, &vector(0), &w),
            Err(Mismatch::Undecryptable(_))
        ));
    }

    #[test]
    fn private_check_catches_zero_padded_pkcs8() {
        let k = key();
        for i in [0usize, 1, 2, 3, 5] {
            // The RSA vectors and P-256/P-521 are not a multiple of 8 bytes long.
            assert_ne!(TEST_KEYS[i].1.len() % 8, 0);
            let w = soft_rsa_aes(
                &RsaPublicKey::from(&k),
                OaepHash::Sha1,
                TEST_KEYS[i].1,
                true,
            );
            assert!(
                matches!(
                    check_private_wrap(&k, OaepHash::Sha1, &vector(i), &w),
                    Err(Mismatch::BadEncoding(_))
                ),
                "vector {i}"
            );
        }
    }

    #[test]
    fn private_check_catches_another_key() {
        let k = key();
        let w = soft_rsa_aes(
            &RsaPublicKey::from(&k),
            OaepHash::Sha1,
            TEST_KEYS[4].1,
            false,
        );
        assert_eq!(
            check_private_wrap(&k, OaepHash::Sha1, &vector(6), &w),
            Err(Mismatch::OtherKey)
        );
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
