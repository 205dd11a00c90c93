//! Token family profiles (pkcs11-profiles/*.toml): which wrap methods to try, how to log in,
//! and the quirks of the family. The self-test, not the profile, decides what is used.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use super::mechanism_ext::RawMechanism;

const BUILT_IN: &[(&str, &str)] = &[
    (
        "softhsm2",
        include_str!("../../pkcs11-profiles/softhsm2.toml"),
    ),
    (
        "kryoptic",
        include_str!("../../pkcs11-profiles/kryoptic.toml"),
    ),
    ("luna", include_str!("../../pkcs11-profiles/luna.toml")),
    (
        "generic",
        include_str!("../../pkcs11-profiles/generic.toml"),
    ),
];

#[derive(
    Debug, Clone, Copy, Deserialize, serde::Serialize, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum OaepHash {
    Sha1,
    Sha256,
}

impl OaepHash {
    pub fn name(self) -> &'static str {
        match self {
            OaepHash::Sha1 => "SHA-1",
            OaepHash::Sha256 => "SHA-256",
        }
    }
}

impl fmt::Display for OaepHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LoginUser {
    User,
    CryptoUser,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub family: String,
    pub description: String,
    pub login_user: LoginUser,
    pub oaep_hashes: Vec<OaepHash>,
    pub kwp_mechanisms: Vec<RawMechanism>,
    #[serde(default)]
    pub native_rsa_aes_key_wrap: bool,
    #[serde(default)]
    pub quirks: Quirks,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quirks {
    #[serde(default)]
    pub cross_token_handles: bool,
    /// EC keys generated in the token export their scalar without its leading zero bytes
    /// (kryoptic 1.5: half of all P-521 keys, 1 in 256 of the others), which AWS and many
    /// PKCS#8 parsers reject; the vault measures each generated key and generates again.
    #[serde(default, alias = "p521_keygen_short_scalar")]
    pub keygen_short_ec_scalar: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "unknown profile `{0}` (built in: softhsm2, kryoptic, luna, generic; or a path to a .toml file)"
    )]
    Unknown(String),
    #[error("cannot read profile {0}: {1}")]
    Read(String, std::io::Error),
    #[error("profile {0}: {1}")]
    Parse(String, String),
}

impl Profile {
    /// A built-in family name, or a path to a profile file.
    pub fn load(spec: &str) -> Result<Self, ProfileError> {
        let text = if let Some((_, text)) = BUILT_IN.iter().find(|(n, _)| *n == spec) {
            (*text).to_owned()
        } else if spec.ends_with(".toml") || spec.contains('/') {
            std::fs::read_to_string(Path::new(spec))
                .map_err(|e| ProfileError::Read(spec.to_owned(), e))?
        } else {
            return Err(ProfileError::Unknown(spec.to_owned()));
        };
        let p: Profile = toml::from_str(&text)
            .map_err(|e| ProfileError::Parse(spec.to_owned(), e.to_string()))?;
        if p.oaep_hashes.is_empty() {
            return Err(ProfileError::Parse(
                spec.to_owned(),
                "oaep_hashes must not be empty".into(),
            ));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_profiles_parse() {
        for (name, _) in BUILT_IN {
            let p = Profile::load(name).expect(name);
            assert_eq!(&p.family, name);
        }
        let luna = Profile::load("luna").expect("luna");
        assert_eq!(luna.kwp_mechanisms[0].code(), 0x8000_0171);
    }

    #[test]
    fn unknown_profile_is_refused() {
        assert!(matches!(
            Profile::load("nope"),
            Err(ProfileError::Unknown(_))
        ));
    }
}
