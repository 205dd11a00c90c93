//! The upload-key request: the body as CipherTrust Manager clients send it, and its validated
//! form, in which an invalid request cannot be represented. Validation is complete and has no
//! side effect: nothing is looked up or created here.

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::spec::{KeySpec, KeyUsage, SourceTier};
use crate::unused_fields;
use crate::vocabulary::{Unused, Vocabulary};

/// The JSON body of `POST /api/v1/cckm/aws/upload-key`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadKeyBody {
    pub source_key_tier: Option<String>,
    pub source_key_identifier: Option<String>,
    pub kms: Option<String>,
    pub region: Option<String>,
    /// Spelled `KeyExpiration` in CipherTrust's curl sample and `key_expiration` in its table.
    #[serde(rename = "key_expiration", alias = "KeyExpiration")]
    pub key_expiration: Option<bool>,
    pub aws_param: Option<AwsParamBody>,
    pub external_accounts: Option<Vec<String>>,
    pub key_admins: Option<Vec<String>>,
    pub key_admins_roles: Option<Vec<String>>,
    pub key_users: Option<Vec<String>>,
    pub key_users_roles: Option<Vec<String>>,
    pub policytemplate: Option<String>,
    /// Sent with ImportKeyMaterial (AWS takes it for symmetric keys only).
    pub key_material_description: Option<String>,
    /// CipherTrust's Ansible modules send the expiry here rather than in `aws_param`.
    pub valid_to: Option<String>,
    /// A bridge extension: replicas of the (multi-Region) key made in the same request, each
    /// with the material imported through the token.
    pub replica_regions: Option<Vec<String>>,
    /// A bridge extension: the material is imported to expire after this many days and the
    /// bridge re-imports it before then, for as long as it can (a material lease).
    pub lease_days: Option<u64>,
    /// The same in seconds, for test configurations only (`schedules.allow_seconds`).
    pub lease_secs: Option<u64>,
}

impl Vocabulary for UploadKeyBody {
    fn unused(&self) -> Vec<String> {
        self.aws_param
            .as_ref()
            .map(|p| unused_fields!(p, "aws_param."; CurrentKeyMaterialId))
            .unwrap_or_default()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct AwsParamBody {
    pub Alias: Option<String>,
    pub BypassPolicyLockoutSafetyCheck: Option<bool>,
    #[serde(alias = "KeySpec")]
    pub CustomerMasterKeySpec: Option<String>,
    pub Description: Option<String>,
    pub KeyUsage: Option<String>,
    pub MultiRegion: Option<bool>,
    pub Origin: Option<String>,
    pub Policy: Option<Value>,
    pub Tags: Option<Vec<TagBody>>,
    pub ValidTo: Option<String>,
    /// A field of CipherTrust's key record that its clients echo back; AWS assigns it.
    #[serde(default)]
    pub CurrentKeyMaterialId: Unused,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct TagBody {
    pub TagKey: String,
    #[serde(default)]
    pub TagValue: String,
}

/// A KMS alias, always with its `alias/` prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias(String);

impl Alias {
    /// Accepts `name` or `alias/name`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let name = raw.strip_prefix("alias/").unwrap_or(raw);
        if name.is_empty() {
            return Err("aws_param.Alias: must not be empty".into());
        }
        let full = format!("alias/{name}");
        if full.len() > 256 {
            return Err(
                "aws_param.Alias: at most 256 characters including the alias/ prefix".into(),
            );
        }
        if name.starts_with("aws/") || name == "aws" {
            return Err(
                "aws_param.Alias: the alias/aws/ prefix is reserved for AWS managed keys".into(),
            );
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
        {
            return Err(
                "aws_param.Alias: only letters, digits, '/', '_' and '-' are allowed".into(),
            );
        }
        Ok(Alias(full))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A tag as AWS accepts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// Tag keys the bridge sets itself.
pub const TEMPLATE_TAG: &str = "cckm_policy_template_id";
pub const UPLOAD_TAG: &str = "hsm-bridge-upload-id";
pub const RESERVED_TAGS: [&str; 2] = [TEMPLATE_TAG, UPLOAD_TAG];

fn tag_chars_ok(s: &str) -> bool {
    s.chars().all(|c| {
        c.is_alphanumeric()
            || c.is_whitespace()
            || matches!(c, '_' | '.' | ':' | '/' | '=' | '+' | '-' | '@')
    })
}

/// When the imported material expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Never,
    At(OffsetDateTime),
}

/// The list fields that build a key policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyLists {
    pub external_accounts: Vec<String>,
    pub key_admins: Vec<String>,
    pub key_admins_roles: Vec<String>,
    pub key_users: Vec<String>,
    pub key_users_roles: Vec<String>,
}

impl PolicyLists {
    /// The lists as a body gives them (each may be absent).
    pub fn from_fields(
        external_accounts: Option<Vec<String>>,
        key_admins: Option<Vec<String>>,
        key_admins_roles: Option<Vec<String>>,
        key_users: Option<Vec<String>>,
        key_users_roles: Option<Vec<String>>,
    ) -> Self {
        PolicyLists {
            external_accounts: external_accounts.unwrap_or_default(),
            key_admins: key_admins.unwrap_or_default(),
            key_admins_roles: key_admins_roles.unwrap_or_default(),
            key_users: key_users.unwrap_or_default(),
            key_users_roles: key_users_roles.unwrap_or_default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.external_accounts.is_empty()
            && self.key_admins.is_empty()
            && self.key_admins_roles.is_empty()
            && self.key_users.is_empty()
            && self.key_users_roles.is_empty()
    }

    /// Checks names against IAM's rules; a full ARN is taken as it is.
    pub fn validate(&self, prefix: &str) -> Result<(), String> {
        let iam_name = |field: &str, v: &str| -> Result<(), String> {
            if v.starts_with("arn:") {
                return if v.len() <= 2048 && v.split(':').count() >= 6 {
                    Ok(())
                } else {
                    Err(format!("{prefix}{field}: `{v}` is not a valid ARN"))
                };
            }
            let ok = !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-".contains(c));
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "{prefix}{field}: `{v}` is not a valid IAM name (1-64 of letters, digits and +=,.@_-) or ARN"
                ))
            }
        };
        for (field, list) in [
            ("key_admins", &self.key_admins),
            ("key_admins_roles", &self.key_admins_roles),
            ("key_users", &self.key_users),
            ("key_users_roles", &self.key_users_roles),
        ] {
            for v in list {
                iam_name(field, v)?;
            }
        }
        for a in &self.external_accounts {
            if a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "{prefix}external_accounts: `{a}` is not a 12-digit AWS account id"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum PolicyChoice {
    Default,
    Explicit(String),
    Template(String),
    Lists(PolicyLists),
}

/// The one policy source a request gives (an explicit policy, a template, or the lists), each
/// validated; `None` when it gives none. `field` names the explicit policy in errors.
pub fn choose_policy(
    policy: Option<Value>,
    template: Option<String>,
    lists: PolicyLists,
    field: &str,
) -> Result<Option<PolicyChoice>, String> {
    let template = template.filter(|t| !t.is_empty());
    let given = [policy.is_some(), template.is_some(), !lists.is_empty()]
        .iter()
        .filter(|b| **b)
        .count();
    if given > 1 {
        return Err(format!(
            "{field}, policytemplate and the key_admins/key_users/external_accounts lists are mutually exclusive: give one of them"
        ));
    }
    Ok(if let Some(v) = policy {
        Some(PolicyChoice::Explicit(validate_policy(&v, field)?))
    } else if let Some(t) = template {
        Some(PolicyChoice::Template(t))
    } else if !lists.is_empty() {
        lists.validate("")?;
        Some(PolicyChoice::Lists(lists))
    } else {
        None
    })
}

/// A request that passed every check.
#[derive(Debug, Clone)]
pub struct UploadRequest {
    pub tier: SourceTier,
    pub source: String,
    pub kms: String,
    pub region: String,
    pub spec: KeySpec,
    pub usage: KeyUsage,
    pub alias: Option<Alias>,
    pub description: String,
    pub multi_region: bool,
    pub bypass_lockout: bool,
    pub tags: Vec<Tag>,
    pub expiry: Expiry,
    pub policy: PolicyChoice,
    /// `KeyMaterialDescription` of ImportKeyMaterial (symmetric keys only).
    pub material_description: Option<String>,
    /// The material lease asked for (`lease_days`/`lease_secs`).
    pub lease: Option<Lease>,
}

/// A material lease: how long each import of the material lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub secs: u64,
    /// Given in seconds (allowed in test configurations only).
    pub in_seconds: bool,
}

/// AWS takes a ValidTo at most 365 days ahead.
pub const MAX_LEASE_SECS: u64 = 365 * 86_400;

impl Lease {
    pub fn parse(days: Option<u64>, secs: Option<u64>) -> Result<Option<Lease>, String> {
        match (days, secs) {
            (Some(_), Some(_)) => Err("lease_days and lease_secs: one of them".into()),
            (Some(d), None) if (1..=365).contains(&d) => Ok(Some(Lease {
                secs: d * 86_400,
                in_seconds: false,
            })),
            (Some(d), None) => Err(format!("lease_days: {d} is not 1 to 365")),
            (None, Some(s)) if (3..=MAX_LEASE_SECS).contains(&s) => Ok(Some(Lease {
                secs: s,
                in_seconds: true,
            })),
            (None, Some(s)) => Err(format!("lease_secs: {s} is not 3 to {MAX_LEASE_SECS}")),
            (None, None) => Ok(None),
        }
    }

    /// When the bridge renews material imported at `at`: two thirds into the lease, so a
    /// third of it is left to retry in.
    pub fn renew_at(self, at: OffsetDateTime) -> OffsetDateTime {
        at + time::Duration::seconds((self.secs * 2 / 3).max(1) as i64)
    }
}

pub const MAX_POLICY_BYTES: usize = 32 * 1024;
/// AWS allows 50 tags; the bridge keeps room for the two it sets itself.
pub const MAX_USER_TAGS: usize = 48;

/// Which key specs each tier can deliver: every spec, except that a Data Security Manager
/// holds AES keys only.
pub fn tier_allows(tier: SourceTier, spec: KeySpec) -> bool {
    match tier {
        SourceTier::Local | SourceTier::HsmLuna | SourceTier::ExternalCm => true,
        SourceTier::Dsm => spec == KeySpec::SymmetricDefault,
    }
}

fn required(v: Option<String>, field: &str) -> Result<String, String> {
    match v {
        Some(s) if !s.trim().is_empty() => Ok(s),
        Some(_) => Err(format!("{field}: must not be empty")),
        None => Err(format!("{field}: is required")),
    }
}

impl UploadKeyBody {
    /// The metric labels of an upload: its tier and key spec, or `invalid` (never the caller's
    /// text, which would let anyone grow the label sets).
    pub fn metric_labels(&self) -> (&'static str, &'static str) {
        let tier = match self.source_key_tier.as_deref() {
            None | Some("") => "local",
            Some(t) => SourceTier::parse(t).map_or("invalid", |t| t.as_str()),
        };
        let spec = match self
            .aws_param
            .as_ref()
            .and_then(|p| p.CustomerMasterKeySpec.as_deref())
        {
            None | Some("") => "SYMMETRIC_DEFAULT",
            Some(s) => KeySpec::parse(s).map_or("invalid", |s| s.as_str()),
        };
        (tier, spec)
    }

    /// Validates the whole request at `now`.
    pub fn validate(self, now: OffsetDateTime) -> Result<UploadRequest, String> {
        let tier = match self.source_key_tier.as_deref() {
            None | Some("") => SourceTier::Local,
            Some(t) => SourceTier::parse(t).ok_or_else(|| {
                format!("source_key_tier: `{t}` is not one of local, dsm, hsm-luna, external-cm")
            })?,
        };
        let source = required(self.source_key_identifier, "source_key_identifier")?;
        if source.len() > 1024 {
            return Err("source_key_identifier: at most 1024 characters".into());
        }
        let kms = required(self.kms, "kms")?;
        let region = required(self.region, "region")?;
        if region.len() > 64
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!("region: `{region}` is not a region name"));
        }
        let p = self.aws_param.unwrap_or_default();

        let spec = match p.CustomerMasterKeySpec.as_deref() {
            None => KeySpec::SymmetricDefault,
            Some(s) => KeySpec::parse(s).ok_or_else(|| {
                format!(
                    "aws_param.CustomerMasterKeySpec: `{s}` is not one of {}",
                    KeySpec::ALL.map(|k| k.as_str()).join(", ")
                )
            })?,
        };
        if !tier_allows(tier, spec) {
            return Err(format!(
                "aws_param.CustomerMasterKeySpec: {spec} cannot be uploaded from the {tier} tier \
                 (DSM keys are AES-256 only: use SYMMETRIC_DEFAULT)"
            ));
        }
        let usage = match p.KeyUsage.as_deref() {
            None => spec.default_usage().ok_or_else(|| {
                format!("aws_param.KeyUsage: is required for {spec} (ENCRYPT_DECRYPT or SIGN_VERIFY)")
            })?,
            Some(u) => KeyUsage::parse(u).ok_or_else(|| {
                format!(
                    "aws_param.KeyUsage: `{u}` is not one of ENCRYPT_DECRYPT, SIGN_VERIFY, GENERATE_VERIFY_MAC"
                )
            })?,
        };
        if !spec.allowed_usages().contains(&usage) {
            return Err(format!(
                "aws_param.KeyUsage: {usage} is not allowed for {spec} (allowed: {})",
                spec.allowed_usages()
                    .iter()
                    .map(|u| u.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(o) = p.Origin.as_deref()
            && o != "EXTERNAL"
        {
            return Err(format!(
                "aws_param.Origin: uploaded keys have origin EXTERNAL, not `{o}`"
            ));
        }
        let alias = p.Alias.as_deref().map(Alias::parse).transpose()?;
        let description = p.Description.unwrap_or_default();
        if description.chars().count() > 8192 {
            return Err("aws_param.Description: at most 8192 characters".into());
        }

        let tags = validate_tags(p.Tags.unwrap_or_default(), "aws_param.Tags", MAX_USER_TAGS)?;

        let valid_to = match (p.ValidTo.as_deref(), self.valid_to.as_deref()) {
            (Some(a), Some(b)) if a != b => {
                return Err("aws_param.ValidTo and valid_to disagree: give the expiry once".into());
            }
            (Some(a), _) => Some(a),
            (None, b) => b.filter(|v| !v.is_empty()),
        };
        let expiry = match (self.key_expiration, valid_to) {
            (Some(true), None) => {
                return Err("aws_param.ValidTo: is required when key_expiration is true".into());
            }
            (Some(true), Some(v)) => Expiry::At(parse_valid_to(v, now)?),
            (_, Some(_)) => {
                return Err("aws_param.ValidTo: only allowed when key_expiration is true".into());
            }
            (_, None) => Expiry::Never,
        };
        let lease = Lease::parse(self.lease_days, self.lease_secs)?;
        let expiry = match (lease, expiry) {
            (Some(_), Expiry::At(_)) => {
                return Err(
                    "lease_days: a leased key's expiry is the lease's; give no ValidTo".into(),
                );
            }
            (Some(l), Expiry::Never) => Expiry::At(now + time::Duration::seconds(l.secs as i64)),
            (None, e) => e,
        };

        let lists = PolicyLists::from_fields(
            self.external_accounts,
            self.key_admins,
            self.key_admins_roles,
            self.key_users,
            self.key_users_roles,
        );
        let policy = choose_policy(p.Policy, self.policytemplate, lists, "aws_param.Policy")?
            .unwrap_or(PolicyChoice::Default);

        let material_description = match self.key_material_description {
            Some(d) if d.chars().count() > 256 => {
                return Err("key_material_description: at most 256 characters".into());
            }
            Some(d) if !d.is_empty() && spec == KeySpec::SymmetricDefault => Some(d),
            Some(d) if !d.is_empty() => {
                tracing::debug!(
                    "key_material_description ignored: AWS takes it for symmetric keys only"
                );
                None
            }
            _ => None,
        };

        Ok(UploadRequest {
            tier,
            source,
            kms,
            region,
            spec,
            usage,
            alias,
            description,
            multi_region: p.MultiRegion.unwrap_or(false),
            bypass_lockout: p.BypassPolicyLockoutSafetyCheck.unwrap_or(false),
            tags,
            expiry,
            policy,
            material_description,
            lease,
        })
    }
}

/// Checks tags against AWS's rules and the bridge's reserved keys; `field` names them in errors.
pub fn validate_tags(raw: Vec<TagBody>, field: &str, most: usize) -> Result<Vec<Tag>, String> {
    if raw.len() > most {
        return Err(format!("{field}: at most {most} tags"));
    }
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, t) in raw.into_iter().enumerate() {
        let k = &t.TagKey;
        let n = k.chars().count();
        if n == 0 || n > 128 {
            return Err(format!("{field}[{i}].TagKey: 1 to 128 characters"));
        }
        if k.to_ascii_lowercase().starts_with("aws:") {
            return Err(format!("{field}[{i}].TagKey: the aws: prefix is reserved"));
        }
        if RESERVED_TAGS.contains(&k.as_str()) {
            return Err(format!("{field}[{i}].TagKey: `{k}` is set by the bridge"));
        }
        if !tag_chars_ok(k) {
            return Err(format!(
                "{field}[{i}].TagKey: only letters, digits, spaces and _ . : / = + - @ are allowed"
            ));
        }
        if t.TagValue.chars().count() > 256 {
            return Err(format!("{field}[{i}].TagValue: at most 256 characters"));
        }
        if !tag_chars_ok(&t.TagValue) {
            return Err(format!(
                "{field}[{i}].TagValue: only letters, digits, spaces and _ . : / = + - @ are allowed"
            ));
        }
        if !seen.insert(k.clone()) {
            return Err(format!("{field}[{i}].TagKey: `{k}` appears twice"));
        }
        out.push(Tag {
            key: t.TagKey,
            value: t.TagValue,
        });
    }
    Ok(out)
}

fn parse_valid_to(v: &str, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    parse_valid_to_as(v, now, "aws_param.ValidTo")
}

/// An expiry as AWS takes it: RFC 3339, in the future, at most 365 days ahead.
pub fn parse_valid_to_as(
    v: &str,
    now: OffsetDateTime,
    field: &str,
) -> Result<OffsetDateTime, String> {
    let t = OffsetDateTime::parse(v, &Rfc3339).map_err(|_| {
        format!("{field}: `{v}` is not an RFC 3339 date-time (like 2027-01-31T12:00:00Z)")
    })?;
    if t <= now {
        return Err(format!("{field}: must be in the future"));
    }
    if t > now + time::Duration::days(365) {
        return Err(format!("{field}: must be at most 365 days ahead"));
    }
    Ok(t)
}

/// A policy must be a JSON object of at most 32 KB; it is sent to AWS as its compact text.
pub fn validate_policy(v: &Value, field: &str) -> Result<String, String> {
    let obj = match v {
        Value::Object(o) => o,
        Value::String(s) => {
            // Some clients send the policy as a JSON string.
            let inner: Value = serde_json::from_str(s)
                .map_err(|_| format!("{field}: must be a JSON object (a key policy)"))?;
            return validate_policy(&inner, field);
        }
        _ => return Err(format!("{field}: must be a JSON object (a key policy)")),
    };
    if !obj.contains_key("Statement") {
        return Err(format!("{field}: a key policy needs a Statement"));
    }
    let text = v.to_string();
    if text.len() > MAX_POLICY_BYTES {
        return Err(format!("{field}: at most 32 KB"));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> UploadKeyBody {
        serde_json::from_value(v).expect("body parses")
    }

    fn base() -> Value {
        json!({
            "source_key_tier": "local",
            "source_key_identifier": "k1",
            "kms": "kms",
            "region": "us-east-1",
            "aws_param": {"Alias": "a1"}
        })
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn defaults_are_symmetric_encrypt_never_expires() {
        let r = body(base()).validate(now()).expect("valid");
        assert_eq!(r.spec, KeySpec::SymmetricDefault);
        assert_eq!(r.usage, KeyUsage::EncryptDecrypt);
        assert_eq!(r.expiry, Expiry::Never);
        assert_eq!(r.alias.expect("alias").as_str(), "alias/a1");
        assert_eq!(r.policy, PolicyChoice::Default);
    }

    #[test]
    fn hmac_defaults_to_mac_usage_and_refuses_others() {
        let mut v = base();
        v["aws_param"]["CustomerMasterKeySpec"] = json!("HMAC_384");
        let r = body(v.clone()).validate(now()).expect("valid");
        assert_eq!(r.usage, KeyUsage::GenerateVerifyMac);
        v["aws_param"]["KeyUsage"] = json!("ENCRYPT_DECRYPT");
        assert!(body(v).validate(now()).is_err());
    }

    #[test]
    fn both_expiry_spellings_are_accepted() {
        let t = (now() + time::Duration::days(30))
            .format(&Rfc3339)
            .expect("fmt");
        for key in ["KeyExpiration", "key_expiration"] {
            let mut v = base();
            v[key] = json!(true);
            v["aws_param"]["ValidTo"] = json!(t);
            let r = body(v).validate(now()).expect("valid");
            assert!(matches!(r.expiry, Expiry::At(_)));
        }
    }

    #[test]
    fn valid_to_rules() {
        let mut v = base();
        v["key_expiration"] = json!(true);
        assert!(body(v.clone()).validate(now()).is_err(), "required");
        v["aws_param"]["ValidTo"] = json!("tomorrow");
        assert!(body(v.clone()).validate(now()).is_err(), "rfc3339");
        v["aws_param"]["ValidTo"] = json!("2001-01-01T00:00:00Z");
        assert!(body(v.clone()).validate(now()).is_err(), "future");
        let far = (now() + time::Duration::days(400))
            .format(&Rfc3339)
            .expect("fmt");
        v["aws_param"]["ValidTo"] = json!(far);
        assert!(body(v.clone()).validate(now()).is_err(), "365 days");
        let mut w = base();
        w["aws_param"]["ValidTo"] = json!(
            (now() + time::Duration::days(3))
                .format(&Rfc3339)
                .expect("fmt")
        );
        assert!(body(w).validate(now()).is_err(), "needs the flag");
    }

    #[test]
    fn policy_options_are_exclusive() {
        let mut v = base();
        v["policytemplate"] = json!("t1");
        v["key_users"] = json!(["alice"]);
        assert!(
            body(v)
                .validate(now())
                .unwrap_err()
                .contains("mutually exclusive")
        );
        let mut v = base();
        v["aws_param"]["Policy"] = json!({"Statement": []});
        v["external_accounts"] = json!(["111122223333"]);
        assert!(body(v).validate(now()).is_err());
    }

    #[test]
    fn alias_and_tag_rules() {
        assert!(Alias::parse("alias/aws/x").is_err());
        assert!(Alias::parse("bad alias").is_err());
        assert!(Alias::parse(&"a".repeat(251)).is_err());
        assert!(Alias::parse("ok/name_-1").is_ok());
        let mut v = base();
        v["aws_param"]["Tags"] = json!([{"TagKey": "aws:x", "TagValue": "1"}]);
        assert!(body(v).validate(now()).is_err());
        let mut v = base();
        v["aws_param"]["Tags"] =
            json!([{"TagKey": "a", "TagValue": "x"}, {"TagKey": "a", "TagValue": "y"}]);
        assert!(body(v).validate(now()).is_err());
        let mut v = base();
        v["aws_param"]["Tags"] = json!([{"TagKey": "a", "TagValue": "bad<value>"}]);
        assert!(body(v).validate(now()).is_err());
    }

    #[test]
    fn tier_rules() {
        let mut v = base();
        v["source_key_tier"] = json!("dsm");
        v["aws_param"]["CustomerMasterKeySpec"] = json!("HMAC_256");
        assert!(body(v).validate(now()).is_err());
        let mut v = base();
        v["source_key_tier"] = json!("nope");
        assert!(body(v).validate(now()).is_err());
    }
}
