//! Key policies: the default one, and the one built from the list fields with the usual
//! sections (root account, key administrators, key users, persistent resource grants,
//! external accounts).

use serde_json::{Value, json};

use super::request::PolicyLists;
use super::spec::{KeySpec, KeyUsage, SpecFamily};

pub fn default_policy(account_id: &str) -> Value {
    json!({
        "Version": "2012-10-17",
        "Id": "key-default-1",
        "Statement": [root_statement(account_id)]
    })
}

fn root_statement(account_id: &str) -> Value {
    json!({
        "Sid": "Enable IAM User Permissions",
        "Effect": "Allow",
        "Principal": {"AWS": format!("arn:aws:iam::{account_id}:root")},
        "Action": "kms:*",
        "Resource": "*"
    })
}

fn principal(account_id: &str, kind: &str, name: &str) -> String {
    if name.starts_with("arn:") {
        name.to_owned()
    } else {
        format!("arn:aws:iam::{account_id}:{kind}/{name}")
    }
}

const ADMIN_ACTIONS: &[&str] = &[
    "kms:Create*",
    "kms:Describe*",
    "kms:Enable*",
    "kms:List*",
    "kms:Put*",
    "kms:Update*",
    "kms:Revoke*",
    "kms:Disable*",
    "kms:Get*",
    "kms:Delete*",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
    "kms:ImportKeyMaterial",
    "kms:DeleteImportedKeyMaterial",
    "kms:RotateKeyOnDemand",
];

fn use_actions(spec: KeySpec, usage: KeyUsage) -> Vec<&'static str> {
    match (spec.family(), usage) {
        (SpecFamily::Symmetric, _) => vec![
            "kms:Encrypt",
            "kms:Decrypt",
            "kms:ReEncrypt*",
            "kms:GenerateDataKey*",
            "kms:DescribeKey",
        ],
        (SpecFamily::Hmac, _) => vec!["kms:GenerateMac", "kms:VerifyMac", "kms:DescribeKey"],
        (_, KeyUsage::SignVerify) => vec![
            "kms:Sign",
            "kms:Verify",
            "kms:GetPublicKey",
            "kms:DescribeKey",
        ],
        (_, _) => vec![
            "kms:Encrypt",
            "kms:Decrypt",
            "kms:ReEncrypt*",
            "kms:GetPublicKey",
            "kms:DescribeKey",
        ],
    }
}

/// The policy the list fields describe. External accounts are users of the key (by their
/// root principal), with the same grant rights as the key users.
pub fn from_lists(account_id: &str, lists: &PolicyLists, spec: KeySpec, usage: KeyUsage) -> Value {
    let mut statements = vec![root_statement(account_id)];
    let admins: Vec<String> = lists
        .key_admins
        .iter()
        .map(|n| principal(account_id, "user", n))
        .chain(
            lists
                .key_admins_roles
                .iter()
                .map(|n| principal(account_id, "role", n)),
        )
        .collect();
    if !admins.is_empty() {
        statements.push(json!({
            "Sid": "Allow access for Key Administrators",
            "Effect": "Allow",
            "Principal": {"AWS": admins},
            "Action": ADMIN_ACTIONS,
            "Resource": "*"
        }));
    }
    let users: Vec<String> = lists
        .key_users
        .iter()
        .map(|n| principal(account_id, "user", n))
        .chain(
            lists
                .key_users_roles
                .iter()
                .map(|n| principal(account_id, "role", n)),
        )
        .chain(
            lists
                .external_accounts
                .iter()
                .map(|a| format!("arn:aws:iam::{a}:root")),
        )
        .collect();
    if !users.is_empty() {
        statements.push(json!({
            "Sid": "Allow use of the key",
            "Effect": "Allow",
            "Principal": {"AWS": users},
            "Action": use_actions(spec, usage),
            "Resource": "*"
        }));
        statements.push(json!({
            "Sid": "Allow attachment of persistent resources",
            "Effect": "Allow",
            "Principal": {"AWS": users},
            "Action": ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"],
            "Resource": "*",
            "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}}
        }));
    }
    json!({
        "Version": "2012-10-17",
        "Id": "key-consolepolicy-3",
        "Statement": statements
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_policy_has_the_usual_sections() {
        let lists = PolicyLists {
            key_admins: vec!["alice".into()],
            key_users_roles: vec!["app".into()],
            external_accounts: vec!["111122223333".into()],
            ..Default::default()
        };
        let p = from_lists(
            "000000000000",
            &lists,
            KeySpec::SymmetricDefault,
            KeyUsage::EncryptDecrypt,
        );
        let sids: Vec<&str> = p["Statement"]
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|s| s["Sid"].as_str())
            .collect();
        assert_eq!(
            sids,
            [
                "Enable IAM User Permissions",
                "Allow access for Key Administrators",
                "Allow use of the key",
                "Allow attachment of persistent resources"
            ]
        );
        let users = &p["Statement"][2]["Principal"]["AWS"];
        assert!(
            users
                .to_string()
                .contains("arn:aws:iam::000000000000:role/app")
        );
        assert!(users.to_string().contains("arn:aws:iam::111122223333:root"));
        assert_eq!(
            p["Statement"][1]["Principal"]["AWS"][0],
            "arn:aws:iam::000000000000:user/alice"
        );
    }

    #[test]
    fn hmac_users_get_mac_actions() {
        let lists = PolicyLists {
            key_users: vec!["bob".into()],
            ..Default::default()
        };
        let p = from_lists(
            "000000000000",
            &lists,
            KeySpec::Hmac256,
            KeyUsage::GenerateVerifyMac,
        );
        assert!(p.to_string().contains("kms:GenerateMac"));
        assert!(!p.to_string().contains("kms:Encrypt"));
    }
}
