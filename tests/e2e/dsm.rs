//! The `dsm` tier against PyKMIP (KMIP over TLS with client certificates): an AES-256 key is
//! fetched wrapped under a KEK present in both the server and the bridge token, unwrapped in
//! the token and uploaded; everything else is refused clearly with nothing reaching AWS.

use reqwest::StatusCode;
use serde_json::json;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsm_aes_keys_upload_wrapped_and_everything_else_is_refused() {
    let k = kmip();
    let n = world().next();
    let kek_name = format!("kek-{n}");
    let kek = secret(32);
    k.register(&kek_name, "aes", &kek, true);
    let aes = secret(32);
    let aes_name = format!("payments-{n}");
    let aes_uid = k.register(&aes_name, "aes", &aes, false);
    let aes2 = secret(32);
    let aes2_uid = k.register(&format!("second-{n}"), "aes", &aes2, false);
    k.register(&format!("short-{n}"), "aes", &secret(16), false);
    k.register(&format!("tdes-{n}"), "tdes", &secret(24), false);

    let tokens = Tokens::new();
    // The same KEK in the bridge token, and a KEK with the same label but another value for
    // a second DSM entry that names the same server.
    put_kek(&tokens.bridge, "dsm-kek", &kek);
    put_kek(&tokens.bridge, "wrong-kek", &secret(32));
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let extra = [
        k.dsm_toml("dsm", &kek_name, "dsm-kek", k.port),
        k.dsm_toml("wrongkek", &kek_name, "wrong-kek", k.port),
        k.dsm_toml("down", &kek_name, "dsm-kek", closed),
    ]
    .concat();
    let kms_wire = crate::proxy::FaultProxy::start().await;
    let b = Bridge::start(
        &tokens,
        Opts {
            extra_toml: extra,
            kms_endpoint: Some(kms_wire.url.clone()),
            ..Default::default()
        },
    )
    .await;
    let kms = b.kms().await;
    let body = |ident: &str, alias: &str| {
        json!({"source_key_tier": "dsm", "source_key_identifier": ident, "kms": b.kms_name,
               "region": REGION, "aws_param": {"Alias": alias}})
    };

    // By Name, pinned to one DSM, and by Unique Identifier.
    let from = kms_wire.seen().len();
    let (s, r) = b
        .upload(body(&format!("dsm:{aes_name}"), "dsm-by-name"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    crate::proxy::assert_upload_calls(&kms_wire.seen()[from..], "dsm");
    assert_eq!(r["key_source"], "dsm");
    assert_eq!(r["local_key_id"], aes_uid.as_str());
    prove_aes(&kms, r["aws_param"]["KeyID"].as_str().expect("id"), &aes).await;
    let (s, r) = b
        .upload(body(&format!("dsm:{aes2_uid}"), "dsm-by-uid"))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    prove_aes(&kms, r["aws_param"]["KeyID"].as_str().expect("id"), &aes2).await;
    let created = kms_key_count(&kms).await;

    let refusals = [
        (
            body(&format!("dsm:tdes-{n}"), "x"),
            400,
            "Triple DES key; DSM uploads are AES only",
        ),
        (
            body(&format!("dsm:short-{n}"), "x"),
            400,
            "is AES-128; SYMMETRIC_DEFAULT takes AES-256",
        ),
        (body("dsm:no-such-key", "x"), 404, "has no key"),
        (
            body(&format!("dsm:{kek_name}"), "x"),
            400,
            "is the KEK this bridge shares with the DSM; it is never uploaded",
        ),
        (
            body(&format!("wrongkek:{aes_name}"), "x"),
            502,
            "does not unwrap under the bridge token's KEK",
        ),
        (body(&format!("down:{aes_name}"), "x"), 503, "cannot reach"),
        (
            json!({"source_key_tier": "dsm", "source_key_identifier": aes_name, "kms": b.kms_name, "region": REGION,
                   "aws_param": {"CustomerMasterKeySpec": "HMAC_256"}}),
            400,
            "DSM keys are AES-256 only",
        ),
    ];
    for (req, status, needle) in refusals {
        let (s, r) = b.upload(req).await;
        assert_error(s, &r, status, needle);
    }
    assert_eq!(
        kms_key_count(&kms).await,
        created,
        "no key reached KMS for a refusal"
    );
    b.finish().await;
}
