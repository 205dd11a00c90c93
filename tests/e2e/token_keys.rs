//! The bridge's own keys carry the restrictions the token supports: the vault KEK, the
//! transport key pair and the audit MAC key cannot be modified, (KEK, transport key) may
//! only be used with the mechanism the bridge uses them with and only unwrap keys as
//! sensitive; the token refuses anything else, and the daemon's own check and `probe` say so.

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;

use crate::harness::*;

/// CKA_MODIFIABLE, and CKA_ALLOWED_MECHANISMS as far as the `cryptoki` crate can name them
/// (it cannot decode 0x210B, kryoptic's RFC 5649 wrap: then `Some(vec![])`).
fn attrs(s: &Session, h: ObjectHandle) -> (Option<bool>, Option<Vec<MechanismType>>) {
    let modifiable = s
        .get_attributes(h, &[AttributeType::Modifiable])
        .expect("C_GetAttributeValue")
        .into_iter()
        .find_map(|a| match a {
            Attribute::Modifiable(m) => Some(m),
            _ => None,
        });
    let allowed = match s.get_attributes(h, &[AttributeType::AllowedMechanisms]) {
        Ok(got) => got.into_iter().find_map(|a| match a {
            Attribute::AllowedMechanisms(v) => Some(v),
            _ => None,
        }),
        Err(cryptoki::error::Error::NotSupported) => Some(Vec::new()),
        Err(e) => panic!("C_GetAttributeValue: {e}"),
    };
    (modifiable, allowed)
}

fn find(s: &Session, class: ObjectClass, label: &str) -> ObjectHandle {
    let found = s
        .find_objects(&[
            Attribute::Class(class),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .expect("find");
    assert_eq!(found.len(), 1, "one {label} ({class:?})");
    found[0]
}

async fn restricted(family: Family) {
    let tokens = Tokens::on(family);
    let b = Bridge::start(&tokens, Opts::default()).await;
    let s = world().session(&tokens.bridge);

    let kek = find(&s, ObjectClass::SECRET_KEY, "hsm-bridge-vault-kek");
    let (modifiable, allowed) = attrs(&s, kek);
    assert_eq!(
        modifiable,
        Some(false),
        "{family:?}: the KEK cannot be modified"
    );
    let allowed = allowed.expect("the KEK names its mechanisms");
    assert!(allowed.len() <= 1, "{family:?}: one mechanism: {allowed:?}");
    // Honoured: an RFC 3394 wrap (not the KEK's mechanism) of a session key is refused.
    let victim = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32u64.into()),
                Attribute::Extractable(true),
                Attribute::Sensitive(true),
            ],
        )
        .expect("a session key");
    assert!(
        s.wrap_key(&Mechanism::AesKeyWrap, kek, victim).is_err(),
        "{family:?}: the token refuses the KEK with another mechanism"
    );
    s.destroy_object(victim).expect("destroy");

    for class in [ObjectClass::PUBLIC_KEY, ObjectClass::PRIVATE_KEY] {
        let h = find(&s, class, "hsm-bridge-transport");
        let (modifiable, allowed) = attrs(&s, h);
        assert_eq!(modifiable, Some(false), "{family:?} {class:?}");
        assert_eq!(
            allowed,
            Some(vec![MechanismType::RSA_PKCS_OAEP]),
            "{family:?} {class:?}"
        );
    }
    let mac = find(&s, ObjectClass::SECRET_KEY, "hsm-bridge-audit-mac");
    let got = s
        .get_attributes(mac, &[AttributeType::Extractable, AttributeType::Sign])
        .expect("attributes");
    assert!(got.contains(&Attribute::Extractable(false)), "{got:?}");
    assert!(got.contains(&Attribute::Sign(true)), "{got:?}");

    // CKA_UNWRAP_TEMPLATE: the transport private key unwraps only as sensitive, checked here
    // with a key the test wraps itself.
    let (public, private) = (
        find(&s, ObjectClass::PUBLIC_KEY, "hsm-bridge-transport"),
        find(&s, ObjectClass::PRIVATE_KEY, "hsm-bridge-transport"),
    );
    let victim = s
        .generate_key(
            &Mechanism::AesKeyGen,
            &[
                Attribute::Token(false),
                Attribute::ValueLen(32u64.into()),
                Attribute::Extractable(true),
                Attribute::Sensitive(false),
            ],
        )
        .expect("a session key");
    let oaep = Mechanism::RsaPkcsOaep(cryptoki::mechanism::rsa::PkcsOaepParams::new(
        MechanismType::SHA1,
        cryptoki::mechanism::rsa::PkcsMgfType::MGF1_SHA1,
        cryptoki::mechanism::rsa::PkcsOaepSource::empty(),
    ));
    let blob = s.wrap_key(&oaep, public, victim).expect("OAEP wrap");
    s.destroy_object(victim).expect("destroy");
    let template = |sensitive: bool| {
        [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(cryptoki::object::KeyType::AES),
            Attribute::Token(false),
            Attribute::Sensitive(sensitive),
            Attribute::Extractable(true),
        ]
    };
    assert!(
        s.unwrap_key(&oaep, private, &blob, &template(false))
            .is_err(),
        "{family:?}: the transport key refuses to unwrap a key as not sensitive"
    );
    let k = s
        .unwrap_key(&oaep, private, &blob, &template(true))
        .expect("as sensitive it unwraps");
    s.destroy_object(k).expect("destroy");

    // The daemon's own check says the same, for every restriction of both keys.
    let (st, v) = b.get("/api/v1/system/tokens").await;
    assert_eq!(st, reqwest::StatusCode::OK, "{v}");
    let found = v["resources"][0]["key_restrictions"]
        .as_array()
        .expect("key_restrictions")
        .clone();
    println!("{family:?}: {found:#?}");
    assert_eq!(found.len(), 7, "{family:?}: {found:?}");
    for r in &found {
        assert_eq!(r["state"], "honoured", "{family:?}: {r}");
    }
    // And `probe` shows it.
    let (code, out, err) = b.cli(&["probe"]);
    assert_eq!(code, 0, "{out}\n{err}");
    for line in [
        "[honoured] vault KEK CKA_UNWRAP_TEMPLATE={CKA_SENSITIVE=true}",
        "[honoured] vault KEK CKA_MODIFIABLE=false",
        "[honoured] vault KEK CKA_ALLOWED_MECHANISMS",
        "[honoured] transport private key CKA_UNWRAP_TEMPLATE={CKA_SENSITIVE=true}",
        "[honoured] transport public key CKA_ALLOWED_MECHANISMS",
    ] {
        assert!(out.contains(line), "{family:?}: `{line}` in {out}");
    }

    // The bridge still does its work with them: an upload through the vault.
    let material = secret(32);
    let key = b.vault_import("restricted", "aes", &material).await;
    let (st, r) = b
        .upload(
            serde_json::json!({"source_key_identifier": key, "kms": b.kms_name,
                                   "region": REGION}),
        )
        .await;
    assert_eq!(st, reqwest::StatusCode::CREATED, "{r}");
    prove_aes(
        &b.kms().await,
        r["aws_param"]["KeyID"].as_str().expect("KeyID"),
        &material,
    )
    .await;
    b.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_keys_are_restricted_on_softhsm() {
    restricted(Family::SoftHsm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_keys_are_restricted_on_kryoptic() {
    restricted(Family::Kryoptic).await;
}
