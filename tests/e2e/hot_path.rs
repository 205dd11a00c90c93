//! The upload's single-call PKCS#11 paths (a buffer of the expected size, no length query)
//! give what the `cryptoki` crate's two-call paths give, on every token family, and still do
//! when the expected size is too small.

use aes_gcm::aes::Aes256;
use aes_gcm::aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType as A};
use hsm_bridge::pkcs11::ops;
use hsm_bridge::pkcs11::profile::OaepHash;
use hsm_bridge::pkcs11::raw::Functions;
use rsa::traits::PublicKeyParts;

use crate::harness::*;

async fn single_calls_agree_with_the_crate(family: Family) {
    let tokens = Tokens::on(family);
    let s = world().session(&tokens.source);
    let raw = Functions::load(&family.module()).expect("the module's function list");
    let value = secret(32);

    let mut short = secret_template(Kind::Aes, "hot-short", true);
    short.extend([
        Attribute::Id(vec![1, 2, 3]),
        Attribute::Value(value.clone()),
    ]);
    let short = s.create_object(&short).expect("C_CreateObject");
    let long_label = "hot-long-".repeat(40);
    let long_id = vec![0xa5u8; 300];
    let mut long = secret_template(Kind::Aes, &long_label, true);
    long.extend([
        Attribute::Id(long_id.clone()),
        Attribute::Value(value.clone()),
    ]);
    let long = s.create_object(&long).expect("C_CreateObject");

    let wanted = [
        A::Class,
        A::KeyType,
        A::ValueLen,
        A::Extractable,
        A::Label,
        A::Id,
    ];
    for h in [short, long] {
        let crate_way = ops::read_facts(&s, h, &wanted).expect("read_facts");
        let once = ops::read_facts_once(&raw, &s, h, &wanted).expect("read_facts_once");
        assert_eq!(format!("{once:?}"), format!("{crate_way:?}"));
    }
    let facts = ops::read_facts_once(&raw, &s, long, &wanted).expect("read_facts_once");
    assert_eq!(facts.label, long_label);
    assert_eq!(facts.id, long_id);
    assert_eq!(facts.value_len, Some(32));
    // A label longer than the room is reported as not fitting, for the caller to fall back.
    assert!(
        raw.attributes_once(&s, long, &[A::Label], 256)
            .expect("C_GetAttributeValue")
            .is_none()
    );
    // A sensitive value is left out, as the crate leaves it out; the rest is read.
    let got = raw
        .attributes_once(&s, short, &[A::Class, A::Value], 256)
        .expect("C_GetAttributeValue")
        .expect("fits");
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(matches!(got[0], Attribute::Class(_)), "{got:?}");

    // The key-check value: one C_Encrypt into 16 bytes, or a retry when given less.
    let mut want = GenericArray::clone_from_slice(&[0u8; 16]);
    Aes256::new(GenericArray::from_slice(&value)).encrypt_block(&mut want);
    for room in [16, 4] {
        let kcv = raw
            .encrypt(&s, &Mechanism::AesEcb, short, &[0u8; 16], room)
            .expect("C_Encrypt");
        assert_eq!(kcv, want.as_slice(), "room {room}");
    }

    // RSA-OAEP (SHA-1, which both families wrap with): one C_WrapKey into a modulus-long
    // buffer, or a retry when given less; what comes out opens with the private key to the
    // source key's value.
    let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("software RSA key");
    let public = private.to_public_key();
    let wrapping = ops::import_rsa_wrapping_key(
        &s,
        &public.n().to_bytes_be(),
        &public.e().to_bytes_be(),
        MechanismType::RSA_PKCS_OAEP,
    )
    .expect("wrapping key");
    for room in [public.size(), 100] {
        let wrapped = ops::oaep_wrap_once(&raw, &s, OaepHash::Sha1, room, wrapping.handle(), short)
            .expect("C_WrapKey");
        assert_eq!(wrapped.len(), public.size(), "room {room}");
        let opened = private
            .decrypt(rsa::Oaep::new::<sha1::Sha1>(), &wrapped)
            .expect("RSA-OAEP decrypt");
        assert_eq!(opened, value, "room {room}");
    }
    drop(wrapping);
    s.destroy_object(short).expect("C_DestroyObject");
    s.destroy_object(long).expect("C_DestroyObject");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_pkcs11_calls_agree_with_the_crate_on_softhsm() {
    single_calls_agree_with_the_crate(Family::SoftHsm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_pkcs11_calls_agree_with_the_crate_on_kryoptic() {
    single_calls_agree_with_the_crate(Family::Kryoptic).await;
}
