//! The key actions of CipherTrust Manager's CCKM (`POST /api/v1/cckm/aws/keys/{id}/<action>`):
//! their bodies as CipherTrust documents them, and their validated form. Like the upload
//! request, validation is complete and has no side effect.

use serde::Deserialize;
use serde_json::Value;
use time::OffsetDateTime;

use super::request::{
    Alias, Expiry, PolicyChoice, PolicyLists, RESERVED_TAGS, Tag, TagBody, choose_policy,
    parse_valid_to_as, validate_tags,
};
use super::spec::SourceTier;
use crate::unused_fields;
use crate::vocabulary::{Unused, Vocabulary};

/// The AWS tag limit; the bridge's upload tag counts among them.
const MAX_TAGS: usize = 50;

/// A validated key action.
#[derive(Debug, Clone)]
pub enum Action {
    Refresh,
    Enable,
    Disable,
    ScheduleDeletion {
        days: i32,
    },
    CancelDeletion,
    DeleteMaterial,
    ImportMaterial(ImportMaterial),
    AddAlias(Alias),
    DeleteAlias(Alias),
    AddTags(Vec<Tag>),
    RemoveTags(Vec<String>),
    UpdateDescription(String),
    Policy {
        choice: PolicyChoice,
        bypass_lockout: bool,
    },
}

#[derive(Debug, Clone)]
pub struct ImportMaterial {
    /// Absent: the tier and source of the upload.
    pub tier: Option<SourceTier>,
    pub source: Option<String>,
    pub expiry: Expiry,
    pub description: Option<String>,
}

impl Action {
    /// CipherTrust's name of the action.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Refresh => "refresh",
            Action::Enable => "enable",
            Action::Disable => "disable",
            Action::ScheduleDeletion { .. } => "schedule-deletion",
            Action::CancelDeletion => "cancel-deletion",
            Action::DeleteMaterial => "delete-material",
            Action::ImportMaterial(_) => "import-material",
            Action::AddAlias(_) => "add-alias",
            Action::DeleteAlias(_) => "delete-alias",
            Action::AddTags(_) => "add-tags",
            Action::RemoveTags(_) => "remove-tags",
            Action::UpdateDescription(_) => "update-description",
            Action::Policy { .. } => "policy",
        }
    }

    /// Why AWS would refuse this action on a key in `key_state`, if it would.
    pub fn refused_in(&self, key_state: &str) -> Option<String> {
        let pending_deletion = key_state == "PendingDeletion";
        let why = match (self, key_state) {
            (Action::Refresh, _) => return None,
            (Action::CancelDeletion, s) if s != "PendingDeletion" => {
                format!("the key is {s}, not pending deletion")
            }
            (Action::CancelDeletion, _) => return None,
            (_, _) if pending_deletion => {
                "the key is pending deletion: cancel-deletion first".to_owned()
            }
            (Action::Enable | Action::Disable, "PendingImport") => {
                "the key has no material (PendingImport): import-material first".to_owned()
            }
            (Action::DeleteMaterial, "PendingImport") => {
                "the key has no material to delete (PendingImport)".to_owned()
            }
            (Action::ScheduleDeletion { .. }, _) => return None,
            (_, "Unavailable" | "Creating" | "Updating") => {
                format!("the key is {key_state}")
            }
            _ => return None,
        };
        Some(why)
    }
}

/// `key_expiration` and `valid_to` of a body that imports material, as one expiry.
pub fn expiry_of(
    key_expiration: Option<bool>,
    valid_to: Option<&str>,
    now: OffsetDateTime,
) -> Result<Expiry, String> {
    Ok(match (key_expiration, valid_to.filter(|v| !v.is_empty())) {
        (Some(true), None) => {
            return Err("valid_to: is required when key_expiration is true".into());
        }
        (Some(true), Some(v)) | (None, Some(v)) => {
            Expiry::At(parse_valid_to_as(v, now, "valid_to")?)
        }
        (Some(false), Some(_)) => {
            return Err("valid_to: only allowed when key_expiration is true".into());
        }
        (_, None) => Expiry::Never,
    })
}

/// The body of actions that take none (`{}` or nothing).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoBody {}

impl Vocabulary for NoBody {}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteMaterialBody {
    /// AWS's newer API names one version of the material; the bridge's keys have one.
    #[serde(default)]
    pub key_material_id: Unused,
}

impl Vocabulary for DeleteMaterialBody {
    fn unused(&self) -> Vec<String> {
        unused_fields!(self, ""; key_material_id)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleDeletionBody {
    pub days: Option<i64>,
}

impl Vocabulary for ScheduleDeletionBody {}

impl ScheduleDeletionBody {
    pub fn validate(self) -> Result<Action, String> {
        match self.days {
            Some(d) if (7..=30).contains(&d) => Ok(Action::ScheduleDeletion { days: d as i32 }),
            Some(d) => Err(format!("days: {d} is not a waiting period of 7 to 30 days")),
            None => Err("days: is required (7 to 30)".into()),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AliasBody {
    pub alias: Option<String>,
}

impl Vocabulary for AliasBody {}

impl AliasBody {
    fn alias(self) -> Result<Alias, String> {
        let a = self
            .alias
            .filter(|a| !a.is_empty())
            .ok_or("alias: is required")?;
        Alias::parse(&a).map_err(|e| e.replacen("aws_param.Alias", "alias", 1))
    }

    pub fn add(self) -> Result<Action, String> {
        self.alias().map(Action::AddAlias)
    }

    pub fn delete(self) -> Result<Action, String> {
        self.alias().map(Action::DeleteAlias)
    }
}

/// A tag as `add-tags` takes it: CipherTrust's `tag_key`/`tag_value`, or AWS's spelling.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagIn {
    #[serde(alias = "TagKey")]
    pub tag_key: String,
    #[serde(default, alias = "TagValue")]
    pub tag_value: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddTagsBody {
    pub tags: Option<Vec<TagIn>>,
}

impl Vocabulary for AddTagsBody {}

impl AddTagsBody {
    pub fn validate(self) -> Result<Action, String> {
        let tags = self
            .tags
            .filter(|t| !t.is_empty())
            .ok_or("tags: at least one tag")?;
        let raw = tags
            .into_iter()
            .map(|t| TagBody {
                TagKey: t.tag_key,
                TagValue: t.tag_value,
            })
            .collect();
        validate_tags(raw, "tags", MAX_TAGS - 1).map(Action::AddTags)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveTagsBody {
    pub tags: Option<Vec<String>>,
}

impl Vocabulary for RemoveTagsBody {}

impl RemoveTagsBody {
    pub fn validate(self) -> Result<Action, String> {
        let keys = self
            .tags
            .filter(|t| !t.is_empty())
            .ok_or("tags: at least one tag key")?;
        for (i, k) in keys.iter().enumerate() {
            if RESERVED_TAGS.contains(&k.as_str()) {
                return Err(format!(
                    "tags[{i}]: `{k}` is set by the bridge and cannot be removed"
                ));
            }
            if k.is_empty() || k.chars().count() > 128 {
                return Err(format!("tags[{i}]: 1 to 128 characters"));
            }
        }
        Ok(Action::RemoveTags(keys))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DescriptionBody {
    pub description: Option<String>,
}

impl Vocabulary for DescriptionBody {}

impl DescriptionBody {
    pub fn validate(self) -> Result<Action, String> {
        let d = self.description.ok_or("description: is required")?;
        if d.chars().count() > 8192 {
            return Err("description: at most 8192 characters".into());
        }
        Ok(Action::UpdateDescription(d))
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct PolicyBody {
    #[serde(alias = "Policy")]
    pub policy: Option<Value>,
    pub policytemplate: Option<String>,
    pub external_accounts: Option<Vec<String>>,
    pub key_admins: Option<Vec<String>>,
    pub key_admins_roles: Option<Vec<String>>,
    pub key_users: Option<Vec<String>>,
    pub key_users_roles: Option<Vec<String>>,
    pub BypassPolicyLockoutSafetyCheck: Option<bool>,
}

impl Vocabulary for PolicyBody {}

impl PolicyBody {
    pub fn validate(self) -> Result<Action, String> {
        let lists = PolicyLists::from_fields(
            self.external_accounts,
            self.key_admins,
            self.key_admins_roles,
            self.key_users,
            self.key_users_roles,
        );
        let choice = choose_policy(self.policy, self.policytemplate, lists, "policy")?
            .ok_or(
                "give exactly one of policy, policytemplate or the key_admins/key_users/external_accounts lists",
            )?;
        Ok(Action::Policy {
            choice,
            bypass_lockout: self.BypassPolicyLockoutSafetyCheck.unwrap_or(false),
        })
    }
}

/// `import-material`: the same material again, wrapped in the token.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportMaterialBody {
    pub source_key_tier: Option<String>,
    pub source_key_identifier: Option<String>,
    #[serde(alias = "KeyExpiration")]
    pub key_expiration: Option<bool>,
    #[serde(alias = "ValidTo")]
    pub valid_to: Option<String>,
    /// `EXISTING_KEY_MATERIAL` (the default): re-import. New material is a rotation.
    pub import_type: Option<String>,
    pub key_material_description: Option<String>,
    #[serde(default)]
    pub key_material_id: Unused,
}

impl Vocabulary for ImportMaterialBody {
    fn unused(&self) -> Vec<String> {
        unused_fields!(self, ""; key_material_id)
    }
}

impl ImportMaterialBody {
    pub fn validate(self, now: OffsetDateTime) -> Result<Action, String> {
        let tier = match self.source_key_tier.as_deref() {
            None | Some("") => None,
            Some(t) => Some(SourceTier::parse(t).ok_or_else(|| {
                format!("source_key_tier: `{t}` is not one of local, dsm, hsm-luna, external-cm")
            })?),
        };
        let source = self.source_key_identifier.filter(|s| !s.trim().is_empty());
        if source.as_ref().is_some_and(|s| s.len() > 1024) {
            return Err("source_key_identifier: at most 1024 characters".into());
        }
        match self.import_type.as_deref() {
            None | Some("") | Some("EXISTING_KEY_MATERIAL") => {}
            Some("NEW_KEY_MATERIAL") => {
                return Err(
                    "import_type: NEW_KEY_MATERIAL is a rotation of the material, which import-material does not do; it re-imports the key's own material (EXISTING_KEY_MATERIAL)"
                        .into(),
                );
            }
            Some(t) => {
                return Err(format!(
                    "import_type: `{t}` is not EXISTING_KEY_MATERIAL or NEW_KEY_MATERIAL"
                ));
            }
        }
        let expiry = expiry_of(self.key_expiration, self.valid_to.as_deref(), now)?;
        let description = match self.key_material_description {
            Some(d) if d.chars().count() > 256 => {
                return Err("key_material_description: at most 256 characters".into());
            }
            d => d.filter(|d| !d.is_empty()),
        };
        Ok(Action::ImportMaterial(ImportMaterial {
            tier,
            source,
            expiry,
            description,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn deletion_windows_are_7_to_30_days() {
        for (d, ok) in [(6, false), (7, true), (30, true), (31, false), (-1, false)] {
            let b = ScheduleDeletionBody { days: Some(d) };
            assert_eq!(b.validate().is_ok(), ok, "{d}");
        }
        assert!(ScheduleDeletionBody { days: None }.validate().is_err());
    }

    #[test]
    fn actions_aws_would_refuse_are_known_by_state() {
        assert!(Action::Enable.refused_in("PendingImport").is_some());
        assert!(Action::Enable.refused_in("Disabled").is_none());
        assert!(Action::CancelDeletion.refused_in("Enabled").is_some());
        assert!(
            Action::CancelDeletion
                .refused_in("PendingDeletion")
                .is_none()
        );
        assert!(Action::DeleteMaterial.refused_in("PendingImport").is_some());
        let import = ImportMaterialBody::default()
            .validate(now())
            .expect("defaults");
        assert!(import.refused_in("PendingDeletion").is_some());
        assert!(import.refused_in("PendingImport").is_none());
        assert!(
            Action::ScheduleDeletion { days: 7 }
                .refused_in("PendingDeletion")
                .is_some()
        );
        assert!(Action::Refresh.refused_in("PendingDeletion").is_none());
    }

    #[test]
    fn the_upload_tag_cannot_be_removed_or_set() {
        let b: RemoveTagsBody =
            serde_json::from_value(json!({"tags": ["hsm-bridge-upload-id"]})).expect("body");
        assert!(b.validate().is_err());
        let b: AddTagsBody = serde_json::from_value(
            json!({"tags": [{"tag_key": "hsm-bridge-upload-id", "tag_value": "x"}]}),
        )
        .expect("body");
        assert!(b.validate().is_err());
        let b: AddTagsBody =
            serde_json::from_value(json!({"tags": [{"TagKey": "team", "TagValue": "a"}]}))
                .expect("AWS spelling");
        assert!(b.validate().is_ok());
    }

    #[test]
    fn policy_takes_exactly_one_source() {
        let b: PolicyBody = serde_json::from_value(json!({})).expect("body");
        assert!(b.validate().is_err());
        let b: PolicyBody =
            serde_json::from_value(json!({"policy": {"Statement": []}, "key_users": ["alice"]}))
                .expect("body");
        assert!(b.validate().is_err());
        let b: PolicyBody = serde_json::from_value(json!({"key_users": ["alice"]})).expect("body");
        assert!(matches!(
            b.validate(),
            Ok(Action::Policy {
                choice: PolicyChoice::Lists(_),
                ..
            })
        ));
    }

    #[test]
    fn import_material_expiry_rules() {
        let t = (now() + time::Duration::days(10))
            .format(&time::format_description::well_known::Rfc3339)
            .expect("fmt");
        let b: ImportMaterialBody =
            serde_json::from_value(json!({"key_expiration": true, "valid_to": t})).expect("body");
        assert!(matches!(
            b.validate(now()),
            Ok(Action::ImportMaterial(ImportMaterial {
                expiry: Expiry::At(_),
                ..
            }))
        ));
        let b: ImportMaterialBody =
            serde_json::from_value(json!({"key_expiration": true})).expect("body");
        assert!(b.validate(now()).is_err());
        let b: ImportMaterialBody =
            serde_json::from_value(json!({"import_type": "NEW_KEY_MATERIAL"})).expect("body");
        assert!(b.validate(now()).is_err());
    }
}
