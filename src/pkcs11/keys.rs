//! Private key types the bridge moves (RSA 2048/3072/4096, EC on four curves), and the
//! software side of private keys: parsing caller PEM (vault import), building token templates,
//! public key encodings, and strict PKCS#8 comparison for the self-test. Material held here
//! lives only as long as the call that needs it and is wiped on drop.

use std::fmt;

use cryptoki::object::{Attribute, KeyType, ObjectClass};
use pkcs8::der::{Decode, Encode};
use rsa::RsaPrivateKey;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Curve {
    P256,
    P384,
    P521,
    Secp256k1,
}

impl Curve {
    pub const ALL: [Curve; 4] = [Curve::P256, Curve::P384, Curve::P521, Curve::Secp256k1];

    /// CKA_EC_PARAMS: the DER of the named curve's OID.
    pub fn ec_params(self) -> &'static [u8] {
        match self {
            Curve::P256 => &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07],
            Curve::P384 => &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22],
            Curve::P521 => &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x23],
            Curve::Secp256k1 => &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x0A],
        }
    }

    fn oid(self) -> pkcs8::ObjectIdentifier {
        match self {
            Curve::P256 => pkcs8::ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7"),
            Curve::P384 => pkcs8::ObjectIdentifier::new_unwrap("1.3.132.0.34"),
            Curve::P521 => pkcs8::ObjectIdentifier::new_unwrap("1.3.132.0.35"),
            Curve::Secp256k1 => pkcs8::ObjectIdentifier::new_unwrap("1.3.132.0.10"),
        }
    }

    pub fn from_oid(oid: &pkcs8::ObjectIdentifier) -> Option<Curve> {
        Self::ALL.into_iter().find(|c| &c.oid() == oid)
    }

    pub fn from_ec_params(der: &[u8]) -> Option<Curve> {
        Self::ALL.into_iter().find(|c| c.ec_params() == der)
    }

    /// Bytes of a private scalar in its full-length encoding.
    pub fn scalar_len(self) -> usize {
        match self {
            Curve::P256 | Curve::Secp256k1 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }

    /// CipherTrust Manager's `curveid`.
    pub fn ciphertrust_name(self) -> &'static str {
        match self {
            Curve::P256 => "prime256v1",
            Curve::P384 => "secp384r1",
            Curve::P521 => "secp521r1",
            Curve::Secp256k1 => "secp256k1",
        }
    }

    pub fn from_ciphertrust(name: &str) -> Option<Curve> {
        match name.to_ascii_lowercase().as_str() {
            "prime256v1" | "secp256r1" | "p-256" | "p256" => Some(Curve::P256),
            "secp384r1" | "p-384" | "p384" => Some(Curve::P384),
            "secp521r1" | "p-521" | "p521" => Some(Curve::P521),
            "secp256k1" => Some(Curve::Secp256k1),
            _ => None,
        }
    }
}

/// A private key type, as the self-test proves methods for it and the vault stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PrivateKind {
    Rsa2048,
    Rsa3072,
    Rsa4096,
    EcP256,
    EcP384,
    EcP521,
    EcSecp256k1,
}

impl PrivateKind {
    pub const ALL: [PrivateKind; 7] = [
        PrivateKind::Rsa2048,
        PrivateKind::Rsa3072,
        PrivateKind::Rsa4096,
        PrivateKind::EcP256,
        PrivateKind::EcP384,
        PrivateKind::EcP521,
        PrivateKind::EcSecp256k1,
    ];

    pub fn from_rsa_bits(bits: usize) -> Option<Self> {
        match bits {
            2048 => Some(PrivateKind::Rsa2048),
            3072 => Some(PrivateKind::Rsa3072),
            4096 => Some(PrivateKind::Rsa4096),
            _ => None,
        }
    }

    pub fn from_curve(c: Curve) -> Self {
        match c {
            Curve::P256 => PrivateKind::EcP256,
            Curve::P384 => PrivateKind::EcP384,
            Curve::P521 => PrivateKind::EcP521,
            Curve::Secp256k1 => PrivateKind::EcSecp256k1,
        }
    }

    pub fn curve(self) -> Option<Curve> {
        match self {
            PrivateKind::EcP256 => Some(Curve::P256),
            PrivateKind::EcP384 => Some(Curve::P384),
            PrivateKind::EcP521 => Some(Curve::P521),
            PrivateKind::EcSecp256k1 => Some(Curve::Secp256k1),
            _ => None,
        }
    }

    pub fn rsa_bits(self) -> Option<u32> {
        match self {
            PrivateKind::Rsa2048 => Some(2048),
            PrivateKind::Rsa3072 => Some(3072),
            PrivateKind::Rsa4096 => Some(4096),
            _ => None,
        }
    }

    pub fn key_type(self) -> KeyType {
        if self.curve().is_some() {
            KeyType::EC
        } else {
            KeyType::RSA
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PrivateKind::Rsa2048 => "RSA-2048",
            PrivateKind::Rsa3072 => "RSA-3072",
            PrivateKind::Rsa4096 => "RSA-4096",
            PrivateKind::EcP256 => "EC P-256",
            PrivateKind::EcP384 => "EC P-384",
            PrivateKind::EcP521 => "EC P-521",
            PrivateKind::EcSecp256k1 => "EC secp256k1",
        }
    }
}

impl fmt::Display for PrivateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A private key in software. Only two things ever hold one: the self-test (public test
/// vectors) and a vault import of material the caller itself sent.
pub enum PrivateMaterial {
    Rsa(Box<RsaPrivateKey>),
    Ec {
        curve: Curve,
        scalar: Zeroizing<Vec<u8>>,
    },
}

fn ec_public_point(curve: Curve, scalar: &[u8]) -> Result<Vec<u8>, String> {
    macro_rules! point {
        ($c:ident) => {{
            let sk = $c::SecretKey::from_slice(scalar)
                .map_err(|_| "invalid EC private scalar".to_owned())?;
            Ok(sk.public_key().to_sec1_bytes().to_vec())
        }};
    }
    match curve {
        Curve::P256 => point!(p256),
        Curve::P384 => point!(p384),
        Curve::P521 => point!(p521),
        Curve::Secp256k1 => point!(k256),
    }
}

/// The full-length big-endian encoding of a scalar that may have lost its leading zeros.
fn full_length(curve: Curve, scalar: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let n = curve.scalar_len();
    let trimmed: &[u8] = {
        let first = scalar.iter().position(|b| *b != 0).unwrap_or(scalar.len());
        &scalar[first..]
    };
    if trimmed.len() > n {
        return Err("EC private scalar is too long for its curve".into());
    }
    let mut out = Zeroizing::new(vec![0u8; n]);
    out[n - trimmed.len()..].copy_from_slice(trimmed);
    Ok(out)
}

impl PrivateMaterial {
    /// PEM as CipherTrust accepts it: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or
    /// SEC1 (`EC PRIVATE KEY`).
    pub fn from_pem(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.contains("BEGIN ENCRYPTED PRIVATE KEY") {
            return Err("encrypted PEM is not accepted; give the key unencrypted over TLS".into());
        }
        if text.contains("BEGIN RSA PRIVATE KEY") {
            let k = RsaPrivateKey::from_pkcs1_pem(text)
                .map_err(|e| format!("not a valid PKCS#1 RSA private key: {e}"))?;
            return Ok(PrivateMaterial::Rsa(Box::new(k)));
        }
        if text.contains("BEGIN EC PRIVATE KEY") {
            let (_, doc) = sec1::der::SecretDocument::from_pem(text)
                .map_err(|e| format!("not a valid SEC1 EC private key: {e}"))?;
            let ec = sec1::EcPrivateKey::from_der(doc.as_bytes())
                .map_err(|e| format!("not a valid SEC1 EC private key: {e}"))?;
            let curve = match ec.parameters.and_then(|p| p.named_curve()) {
                Some(oid) => Curve::from_oid(&oid).ok_or(
                    "the SEC1 key is on an unsupported curve (P-256, P-384, P-521, secp256k1)",
                )?,
                // Without parameters only the scalar length tells, and 32 bytes is ambiguous.
                None => match ec.private_key.len() {
                    48 => Curve::P384,
                    66 => Curve::P521,
                    _ => {
                        return Err(
                            "the SEC1 key does not name its curve; give it as PKCS#8".into()
                        );
                    }
                },
            };
            return Self::ec(curve, ec.private_key);
        }
        if text.contains("BEGIN PRIVATE KEY") {
            let (_, doc) = pkcs8::SecretDocument::from_pem(text)
                .map_err(|e| format!("not a valid PKCS#8 private key: {e}"))?;
            return Self::from_pkcs8_der(doc.as_bytes());
        }
        Err("material must be a PEM private key (PKCS#8, PKCS#1 or SEC1)".into())
    }

    /// Strict: trailing bytes after the structure (a padded unwrap) are an error.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, String> {
        let info = pkcs8::PrivateKeyInfo::from_der(der).map_err(|e| format!("PKCS#8: {e}"))?;
        let alg = info.algorithm.oid;
        if alg == pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1") {
            let k = RsaPrivateKey::from_pkcs8_der(der).map_err(|e| format!("PKCS#8 RSA: {e}"))?;
            return Ok(PrivateMaterial::Rsa(Box::new(k)));
        }
        if alg == pkcs8::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1") {
            let curve = info
                .algorithm
                .parameters_oid()
                .ok()
                .and_then(|oid| Curve::from_oid(&oid))
                .ok_or("PKCS#8 EC key on an unsupported curve")?;
            let ec = sec1::EcPrivateKey::from_der(info.private_key)
                .map_err(|e| format!("PKCS#8 EC: {e}"))?;
            if ec.private_key.len() != curve.scalar_len() {
                return Err(format!(
                    "PKCS#8 EC: the private scalar is {} bytes, not the {} of its curve",
                    ec.private_key.len(),
                    curve.scalar_len()
                ));
            }
            return Self::ec(curve, ec.private_key);
        }
        Err(format!("PKCS#8 key of an unsupported algorithm ({alg})"))
    }

    fn ec(curve: Curve, scalar: &[u8]) -> Result<Self, String> {
        let scalar = full_length(curve, scalar)?;
        ec_public_point(curve, &scalar)?;
        Ok(PrivateMaterial::Ec { curve, scalar })
    }

    pub fn kind(&self) -> Result<PrivateKind, String> {
        match self {
            PrivateMaterial::Rsa(k) => PrivateKind::from_rsa_bits(k.size() * 8).ok_or_else(|| {
                format!(
                    "RSA keys of {} bits are not supported (2048, 3072, 4096)",
                    k.size() * 8
                )
            }),
            PrivateMaterial::Ec { curve, .. } => Ok(PrivateKind::from_curve(*curve)),
        }
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn public_spki_der(&self) -> Result<Vec<u8>, String> {
        match self {
            PrivateMaterial::Rsa(k) => rsa::RsaPublicKey::from(k.as_ref())
                .to_public_key_der()
                .map(|d| d.as_bytes().to_vec())
                .map_err(|e| e.to_string()),
            PrivateMaterial::Ec { curve, scalar } => {
                ec_spki_der(*curve, &ec_public_point(*curve, scalar)?)
            }
        }
    }

    /// The key's own attributes for a token private key object (the caller adds class, key
    /// type, token, sensitivity and usage attributes; a repeated attribute is an error on
    /// some tokens).
    pub fn components(&self) -> Vec<Attribute> {
        match self {
            PrivateMaterial::Rsa(k) => {
                let primes = k.primes();
                let mut v = vec![
                    Attribute::Modulus(k.n().to_bytes_be()),
                    Attribute::PublicExponent(k.e().to_bytes_be()),
                    Attribute::PrivateExponent(k.d().to_bytes_be()),
                ];
                if primes.len() == 2 {
                    v.push(Attribute::Prime1(primes[0].to_bytes_be()));
                    v.push(Attribute::Prime2(primes[1].to_bytes_be()));
                    if let (Some(dp), Some(dq), Some(qinv)) = (k.dp(), k.dq(), k.crt_coefficient())
                    {
                        v.push(Attribute::Exponent1(dp.to_bytes_be()));
                        v.push(Attribute::Exponent2(dq.to_bytes_be()));
                        v.push(Attribute::Coefficient(qinv.to_bytes_be()));
                    }
                }
                v
            }
            PrivateMaterial::Ec { curve, scalar } => vec![
                Attribute::EcParams(curve.ec_params().to_vec()),
                Attribute::Value(scalar.to_vec()),
            ],
        }
    }

    /// Same key: RSA by every component, EC by curve and scalar.
    pub fn same_key(&self, other: &PrivateMaterial) -> bool {
        match (self, other) {
            (PrivateMaterial::Rsa(a), PrivateMaterial::Rsa(b)) => {
                a.n() == b.n() && a.e() == b.e() && a.d() == b.d() && {
                    let (mut pa, mut pb) = (a.primes().to_vec(), b.primes().to_vec());
                    pa.sort();
                    pb.sort();
                    pa == pb
                }
            }
            (
                PrivateMaterial::Ec {
                    curve: ca,
                    scalar: sa,
                },
                PrivateMaterial::Ec {
                    curve: cb,
                    scalar: sb,
                },
            ) => ca == cb && sa.as_slice() == sb.as_slice(),
            _ => false,
        }
    }
}

/// Wipes the copies of private components a template holds.
pub fn wipe(template: &mut [Attribute]) {
    use zeroize::Zeroize;
    for a in template.iter_mut() {
        match a {
            Attribute::PrivateExponent(v)
            | Attribute::Prime1(v)
            | Attribute::Prime2(v)
            | Attribute::Exponent1(v)
            | Attribute::Exponent2(v)
            | Attribute::Coefficient(v)
            | Attribute::Value(v) => v.zeroize(),
            _ => {}
        }
    }
}

/// SubjectPublicKeyInfo for an EC point (uncompressed SEC1 bytes).
pub fn ec_spki_der(curve: Curve, point: &[u8]) -> Result<Vec<u8>, String> {
    let curve_oid = curve.oid();
    let spki = pkcs8::SubjectPublicKeyInfoRef {
        algorithm: pkcs8::AlgorithmIdentifierRef {
            oid: pkcs8::ObjectIdentifier::new_unwrap("1.2.840.10045.2.1"),
            parameters: Some(pkcs8::der::asn1::AnyRef::from(&curve_oid)),
        },
        subject_public_key: pkcs8::der::asn1::BitStringRef::from_bytes(point)
            .map_err(|e| e.to_string())?,
    };
    spki.to_der().map_err(|e| e.to_string())
}

/// SubjectPublicKeyInfo for an RSA public key given by modulus and exponent.
pub fn rsa_spki_der(modulus: &[u8], exponent: &[u8]) -> Result<Vec<u8>, String> {
    let k = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(modulus),
        rsa::BigUint::from_bytes_be(exponent),
    )
    .map_err(|e| e.to_string())?;
    k.to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .map_err(|e| e.to_string())
}

/// CKA_EC_POINT is a DER OCTET STRING around the point on most tokens; some give it bare.
pub fn ec_point_from_attribute(raw: &[u8]) -> Vec<u8> {
    match pkcs8::der::asn1::OctetStringRef::from_der(raw) {
        Ok(os) if matches!(os.as_bytes().first(), Some(0x04)) => os.as_bytes().to_vec(),
        _ => raw.to_vec(),
    }
}

/// `sha256:<hex>` of a SubjectPublicKeyInfo DER: how `export.allowed_wrapping_keys` and
/// `hsm-bridge probe` name a wrapping key.
pub fn spki_fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(der)))
}

/// The DER of a `PUBLIC KEY` PEM block (SubjectPublicKeyInfo), if the text is one.
pub fn spki_der_from_pem(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let body = pem
        .trim()
        .strip_prefix("-----BEGIN PUBLIC KEY-----")?
        .trim_end()
        .strip_suffix("-----END PUBLIC KEY-----")?;
    let b64: String = body.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

pub fn spki_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END PUBLIC KEY-----\n");
    out
}

/// Template attributes for a private key object the bridge creates or unwraps: never a token
/// object, sensitive, extractable only by wrapping. (CKA_UNWRAP and CKA_DERIVE are left out:
/// kryoptic refuses them on RSA and EC keys with CKR_TEMPLATE_INCONSISTENT.)
pub fn private_template(kind: PrivateKind) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(kind.key_type()),
        Attribute::Token(false),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Sign(true),
        Attribute::Decrypt(kind.curve().is_none()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: [(&str, &[u8]); 7] = [
        ("rsa2048", include_bytes!("selftest_keys/rsa2048.der")),
        ("rsa3072", include_bytes!("selftest_keys/rsa3072.der")),
        ("rsa4096", include_bytes!("selftest_keys/rsa4096.der")),
        ("p256", include_bytes!("selftest_keys/p256.der")),
        ("p384", include_bytes!("selftest_keys/p384.der")),
        ("p521", include_bytes!("selftest_keys/p521.der")),
        ("secp256k1", include_bytes!("selftest_keys/secp256k1.der")),
    ];

    #[test]
    fn test_vectors_parse_to_their_kinds() {
        let kinds: Vec<PrivateKind> = KEYS
            .iter()
            .map(|(_, der)| {
                PrivateMaterial::from_pkcs8_der(der)
                    .expect("parses")
                    .kind()
                    .expect("kind")
            })
            .collect();
        assert_eq!(kinds, PrivateKind::ALL.to_vec());
    }

    #[test]
    fn trailing_padding_is_refused() {
        let mut der = KEYS[0].1.to_vec();
        der.extend([0u8; 5]);
        assert!(PrivateMaterial::from_pkcs8_der(&der).is_err());
    }

    #[test]
    fn ec_spki_round_trips_through_p256() {
        let m = PrivateMaterial::from_pkcs8_der(KEYS[3].1).expect("p256");
        let spki = m.public_spki_der().expect("spki");
        use p256::pkcs8::DecodePublicKey;
        p256::PublicKey::from_public_key_der(&spki).expect("valid SPKI");
    }

    #[test]
    fn pem_forms_are_read() {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let rsa = match PrivateMaterial::from_pkcs8_der(KEYS[0].1).expect("rsa") {
            PrivateMaterial::Rsa(k) => k,
            _ => unreachable!("rsa test vector"),
        };
        let pem = rsa.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF).expect("pem");
        let back = PrivateMaterial::from_pem(&pem).expect("pkcs1");
        assert!(back.same_key(&PrivateMaterial::Rsa(rsa.clone())));
        for (i, kind) in [(3usize, PrivateKind::EcP256), (6, PrivateKind::EcSecp256k1)] {
            let m = PrivateMaterial::from_pkcs8_der(KEYS[i].1).expect("ec");
            let (curve, scalar) = match &m {
                PrivateMaterial::Ec { curve, scalar } => (*curve, scalar.clone()),
                _ => unreachable!("ec test vector"),
            };
            let with_params = sec1::EcPrivateKey {
                private_key: &scalar,
                parameters: Some(sec1::EcParameters::NamedCurve(curve.oid())),
                public_key: None,
            };
            let pem = pkcs8::der::pem::encode_string(
                "EC PRIVATE KEY",
                pkcs8::LineEnding::LF,
                &with_params.to_der().expect("der"),
            )
            .expect("pem");
            let back = PrivateMaterial::from_pem(&pem).expect("sec1 parses");
            assert_eq!(back.kind(), Ok(kind));
            assert!(back.same_key(&m));
            let bare = sec1::EcPrivateKey {
                parameters: None,
                ..with_params
            };
            let pem = pkcs8::der::pem::encode_string(
                "EC PRIVATE KEY",
                pkcs8::LineEnding::LF,
                &bare.to_der().expect("der"),
            )
            .expect("pem");
            assert!(
                PrivateMaterial::from_pem(&pem).is_err(),
                "32-byte scalar without curve"
            );
        }
        assert!(PrivateMaterial::from_pem("-----BEGIN ENCRYPTED PRIVATE KEY-----\n").is_err());
    }
}
