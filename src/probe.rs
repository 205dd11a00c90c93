//! `hsm-bridge probe`: opens every configured token, runs its self-test and prints what it
//! proved, so an operator sees what the daemon would use before starting it.

use std::sync::Arc;

use crate::store::Store;
use serde_json::{Value, json};

use crate::cckm::spec::KeySpec;
use crate::config::{Config, DsmConfig, DsmWrapping, ExternalCmConfig, TokenRole};
use crate::extcm::CmClient;
use crate::kmip::KmipClient;
use crate::pkcs11::selftest::{aws_hash, describe_lengths};
use crate::pkcs11::{Token, TokenError, TokenSet, keys, ops, raw, restrictions};
use crate::tiers::Tier;
use crate::tiers::dsm::{Dsm, DsmTier};
use crate::tiers::external_cm::{self, ExternalCmTier};

/// Opens every token and reports each: what it proved and refused, or why it could not be
/// opened; then each external CM and DSM. The flag is true only if everything would work.
pub async fn run(cfg: &Config) -> Result<(Value, bool), TokenError> {
    let c = cfg.clone();
    let probed = tokio::task::spawn_blocking(move || TokenSet::probe(&c))
        .await
        .map_err(|e| TokenError::Worker(e.to_string()))??;
    let vault_name = cfg.vault_token().name.clone();
    let mut all_ok = true;
    let tokens: Vec<Value> = probed
        .iter()
        .map(|p| match &p.token {
            Err(e) => {
                all_ok = false;
                json!({"name": p.name, "error": e.to_string()})
            }
            Ok(t) => {
                let verdict = t.verdict();
                all_ok &= verdict.is_ok();
                report(t, t.name == vault_name, verdict.err())
            }
        })
        .collect();
    let bridge = probed
        .iter()
        .find(|p| p.name == vault_name)
        .and_then(|p| p.token.as_ref().ok())
        .cloned();
    let transport = match &bridge {
        Some(b) => transport_pem(b).await.ok().flatten(),
        None => None,
    };
    let (remote, remote_ok) = remotes(cfg, bridge).await;
    let (store, store_ok) = store(cfg).await;
    Ok((
        json!({
            "store": store,
            "tokens": tokens,
            "transport_public_key": transport.as_ref().map(|t| &t.0),
            "transport_public_key_fingerprint": transport.as_ref().map(|t| &t.1),
            "external_cm": remote["external_cm"],
            "dsm": remote["dsm"],
        }),
        all_ok && remote_ok && store_ok,
    ))
}

fn report(t: &Token, holds_vault: bool, problem: Option<String>) -> Value {
    let ident = t.ident();
    let caps = t.capabilities();
    let kek = if holds_vault {
        let label = t.kek_label.clone();
        let present = t
            .run_blocking(|s| crate::pkcs11::ops::find_kek(s, &label))
            .map(|k| k.is_some())
            .unwrap_or(false);
        Some(json!({"label": t.kek_label, "present": present}))
    } else {
        None
    };
    let restrictions = if holds_vault {
        let tries = restrictions::Tries {
            storage: caps.and_then(|c| c.storage.as_ref()).map(|st| st.mechanism),
            oaep: caps.and_then(|c| c.best_oaep()),
        };
        match raw::Functions::load(&t.module)
            .and_then(|raw| t.run_blocking(|s| restrictions::check(s, &raw, &t.kek_label, &tries)))
        {
            Ok(found) => json!(found),
            Err(e) => json!({"error": e.to_string()}),
        }
    } else {
        Value::Null
    };
    json!({
        "name": t.name,
        "role": match t.role { TokenRole::Bridge => "bridge", TokenRole::Source => "source" },
        "module": t.module.display().to_string(),
        "profile": t.profile.family,
        "label": ident.label,
        "serial": ident.serial,
        "model": ident.model,
        "manufacturer": ident.manufacturer,
        "problem": problem,
        "proven": caps.map(|c| c.summary()),
        "wrap_methods": caps.map(|c| c.oaep.iter().map(|h| format!("RSAES_OAEP_{}", aws_hash(*h))).collect::<Vec<_>>()),
        "vault_storage": caps.and_then(|c| c.storage.as_ref()).map(|s| json!({
            "mechanism": s.mechanism.name(),
            "exact_lengths": describe_lengths(&s.exact_lengths),
        })),
        "findings": caps.map(|c| &c.findings),
        "private_keys": caps.map(|c| c.private_findings.iter().map(|(k, f)| json!({
            "key_type": k.name(),
            "aws_wrapping_algorithm": c.private.get(k).and_then(|m| m.first()).map(|m| format!("RSA_AES_KEY_WRAP_{}", aws_hash(m.hash()))),
            "vault_storage": c.private_storage.contains(k),
            "methods": f,
        })).collect::<Vec<_>>()),
        "vault_kek": kek,
        "key_restrictions": restrictions,
    })
}

/// The human-readable form.
/// The store: its backend, schema version, and the bridges sharing it heard from lately.
async fn store(cfg: &Config) -> (Value, bool) {
    let backend = cfg.store.backend_name();
    let at = cfg.store.describe();
    let membership = crate::background::cluster::Membership::from_config(&cfg.cluster);
    let location = match cfg.store.location() {
        Ok(l) => l,
        Err(e) => return (json!({"backend": backend, "at": at, "error": e}), false),
    };
    match Store::inspect(location, membership.alive_since()).await {
        Ok(None) => (
            json!({"backend": backend, "at": at, "schema_version": null,
                   "note": "not created yet: the daemon creates it at start"}),
            true,
        ),
        Ok(Some(i)) => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let members: Vec<Value> = i
                .members
                .iter()
                .map(|n| {
                    json!({"node": n.node_id, "host": n.host, "version": n.version,
                           "started_at": n.started_at, "seen_seconds_ago": (now - n.seen_unix).max(0)})
                })
                .collect();
            let newer = i.schema_version > crate::store::SCHEMA_VERSION;
            (
                json!({"backend": backend, "at": at, "schema_version": i.schema_version,
                       "schema_version_of_this_bridge": crate::store::SCHEMA_VERSION,
                       "members": members, "vault_kek_check": i.kek_check,
                       "this_node": membership.node_id}),
                !newer,
            )
        }
        Err(e) => (
            json!({"backend": backend, "at": at, "error": e.to_string()}),
            false,
        ),
    }
}

fn render_store(report: &Value) -> String {
    let s = &report["store"];
    let mut out = format!(
        "store: {} ({})",
        s["backend"].as_str().unwrap_or(""),
        s["at"].as_str().unwrap_or("")
    );
    if let Some(e) = s["error"].as_str() {
        out.push_str(&format!(": NOT USABLE: {e}\n"));
        return out;
    }
    match s["schema_version"].as_u64() {
        Some(v) => out.push_str(&format!(
            ", schema version {v} (this bridge: {})\n",
            s["schema_version_of_this_bridge"]
        )),
        None => out.push_str(&format!(": {}\n", s["note"].as_str().unwrap_or(""))),
    }
    if let Some(k) = s["vault_kek_check"].as_str() {
        out.push_str(&format!("  vault KEK check value: {k}\n"));
    }
    let members = s["members"].as_array().cloned().unwrap_or_default();
    if !members.is_empty() {
        out.push_str("  cluster members seen recently:\n");
        for m in members {
            out.push_str(&format!(
                "    {} on {} (version {}, started {}), seen {} s ago\n",
                m["node"].as_str().unwrap_or(""),
                m["host"].as_str().unwrap_or(""),
                m["version"].as_str().unwrap_or(""),
                m["started_at"].as_str().unwrap_or(""),
                m["seen_seconds_ago"]
            ));
        }
    }
    out
}

pub fn render(report: &Value) -> String {
    let mut out = render_store(report);
    out.push_str(&render_tokens(report));
    out.push_str(&render_remotes(report));
    if let Some(pem) = report["transport_public_key"].as_str() {
        out.push_str(
            "transport public key of the bridge token (for wrapped exports to this bridge):\n",
        );
        out.push_str(pem);
        if let Some(f) = report["transport_public_key_fingerprint"].as_str() {
            out.push_str(&format!(
                "fingerprint (for export.allowed_wrapping_keys): {f}\n"
            ));
        }
    }
    out
}

fn render_tokens(report: &Value) -> String {
    let mut out = String::new();
    for t in report["tokens"].as_array().into_iter().flatten() {
        if let Some(e) = t["error"].as_str() {
            out.push_str(&format!(
                "token {}: NOT USABLE: {e}\n",
                t["name"].as_str().unwrap_or("")
            ));
            continue;
        }
        out.push_str(&format!(
            "token {} ({}, profile {}): label \"{}\", serial {}, {} {}\n",
            t["name"].as_str().unwrap_or(""),
            t["role"].as_str().unwrap_or(""),
            t["profile"].as_str().unwrap_or(""),
            t["label"].as_str().unwrap_or(""),
            t["serial"].as_str().unwrap_or(""),
            t["manufacturer"].as_str().unwrap_or(""),
            t["model"].as_str().unwrap_or(""),
        ));
        out.push_str(&format!(
            "  module: {}\n",
            t["module"].as_str().unwrap_or("")
        ));
        let methods: Vec<&str> = t["wrap_methods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out.push_str(&format!(
            "  AWS wrap methods proven: {}\n",
            if methods.is_empty() {
                "none".to_owned()
            } else {
                methods.join(", ")
            }
        ));
        if let Some(s) = t["vault_storage"].as_object() {
            out.push_str(&format!(
                "  vault storage: {} ({})\n",
                s["mechanism"].as_str().unwrap_or(""),
                s["exact_lengths"].as_str().unwrap_or("")
            ));
        }
        if let Some(k) = t["vault_kek"].as_object() {
            out.push_str(&format!(
                "  vault KEK \"{}\": {}\n",
                k["label"].as_str().unwrap_or(""),
                if k["present"].as_bool() == Some(true) {
                    "present"
                } else {
                    "not created yet (the daemon creates it at its first start)"
                }
            ));
        }
        if let Some(rows) = t["key_restrictions"].as_array() {
            out.push_str("  restrictions on the bridge's own keys:\n");
            for r in rows {
                out.push_str(&format!(
                    "    [{}] {} {}: {}\n",
                    r["state"].as_str().unwrap_or(""),
                    r["key"].as_str().unwrap_or(""),
                    r["attribute"].as_str().unwrap_or(""),
                    r["detail"].as_str().unwrap_or("")
                ));
            }
        } else if let Some(e) = t["key_restrictions"]["error"].as_str() {
            out.push_str(&format!("  restrictions on the bridge's own keys: {e}\n"));
        }
        out.push_str(&private_table(&t["private_keys"]));
        out.push_str("  self-test:\n");
        for f in t["findings"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "    [{}] {}: {}\n",
                if f["proven"].as_bool() == Some(true) {
                    "proven"
                } else {
                    "refused"
                },
                f["method"].as_str().unwrap_or(""),
                f["detail"].as_str().unwrap_or("")
            ));
        }
    }
    out
}

/// Key type by wrap method: what each private key type can be exported with.
fn private_table(rows: &Value) -> String {
    let rows: Vec<&Value> = rows.as_array().into_iter().flatten().collect();
    let mut methods: Vec<String> = Vec::new();
    for r in &rows {
        for m in r["methods"].as_array().into_iter().flatten() {
            let name = m["method"].as_str().unwrap_or("").to_owned();
            if !methods.contains(&name) {
                methods.push(name);
            }
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from("  private keys, by wrap method (AWS RSA_AES_KEY_WRAP):\n");
    for (i, m) in methods.iter().enumerate() {
        out.push_str(&format!("    [{}] {m}\n", i + 1));
    }
    out.push_str(&format!("    {:<14}", "key type"));
    for i in 0..methods.len() {
        out.push_str(&format!(" {:<8}", format!("[{}]", i + 1)));
    }
    out.push_str(" uses\n");
    let mut notes = Vec::new();
    for r in rows {
        let kind = r["key_type"].as_str().unwrap_or("");
        out.push_str(&format!("    {kind:<14}"));
        let found: Vec<&Value> = r["methods"].as_array().into_iter().flatten().collect();
        for m in &methods {
            let cell = match found
                .iter()
                .find(|f| f["method"].as_str() == Some(m.as_str()))
            {
                Some(f) if f["proven"].as_bool() == Some(true) => "proven",
                Some(f) => {
                    notes.push(format!(
                        "{kind}, {m}: {}",
                        f["detail"].as_str().unwrap_or("")
                    ));
                    "refused"
                }
                None => "-",
            };
            out.push_str(&format!(" {cell:<8}"));
        }
        out.push_str(&format!(
            " {}\n",
            r["aws_wrapping_algorithm"]
                .as_str()
                .unwrap_or("none: uploads refused")
        ));
    }
    for n in notes {
        out.push_str(&format!("      {n}\n"));
    }
    out
}

/// Whether each external CM and DSM answers, and whether the configured wrapping works end to
/// end: a throwaway key is created there, fetched wrapped, unwrapped in the bridge token, and
/// deleted again, where the server allows it.
pub async fn remotes(cfg: &Config, bridge: Option<Arc<Token>>) -> (Value, bool) {
    let mut all_ok = true;
    let mut cms = Vec::new();
    for (i, c) in cfg.external_cm.iter().enumerate() {
        let (v, ok) = probe_cm(c, i, bridge.as_ref()).await;
        all_ok &= ok;
        cms.push(v);
    }
    let mut dsms = Vec::new();
    for (i, d) in cfg.dsm.iter().enumerate() {
        let (v, ok) = probe_dsm(d, i, bridge.as_ref()).await;
        all_ok &= ok;
        dsms.push(v);
    }
    (json!({"external_cm": cms, "dsm": dsms}), all_ok)
}

async fn transport_pem(bridge: &Token) -> Result<Option<(String, String)>, String> {
    bridge
        .run(|s| {
            ops::transport_spki_der(s)
                .map(|d| d.map(|d| (keys::spki_pem(&d), keys::spki_fingerprint(&d))))
        })
        .await
        .map_err(|e| e.to_string())
}

/// Checks an external CM as an upload would use it: authentication, then (with a bridge token
/// holding a transport key) a throwaway AES key created on the CM and resolved by the
/// external-cm tier itself (metadata, wrapped export, unwrap in the token), then deleted.
async fn probe_cm(
    cfg: &ExternalCmConfig,
    index: usize,
    bridge: Option<&Arc<Token>>,
) -> (Value, bool) {
    let mut steps = Vec::new();
    let client = match CmClient::new(cfg, index) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            return (
                json!({"name": cfg.name, "url": cfg.url, "error": e.to_string()}),
                false,
            );
        }
    };
    if let Err(e) = client.check().await {
        return (
            json!({"name": cfg.name, "url": cfg.url, "error": e.to_string()}),
            false,
        );
    }
    steps.push("authenticated".to_owned());
    let Some(bridge) = bridge else {
        return (
            json!({"name": cfg.name, "url": cfg.url, "steps": steps}),
            true,
        );
    };
    let hash = bridge
        .capabilities()
        .and_then(|c| c.unwrap.as_ref())
        .and_then(|u| external_cm::preferred_oaep(&u.oaep));
    let (Some(hash), Ok(Some(_))) = (hash, transport_pem(bridge).await) else {
        steps.push("wrapping not checked: the bridge token has no transport key yet or proved no OAEP unwrap".into());
        return (
            json!({"name": cfg.name, "url": cfg.url, "steps": steps}),
            true,
        );
    };
    let name = format!("hsm-bridge-probe-{}", uuid::Uuid::new_v4());
    let created = match client
        .create_key(&json!({"name": name, "algorithm": "aes", "size": 256}))
        .await
    {
        Ok(v) => v,
        Err(e) => {
            steps.push(format!("wrapping not checked end to end: the CM did not let the bridge create a throwaway key ({e})"));
            return (
                json!({"name": cfg.name, "url": cfg.url, "steps": steps}),
                true,
            );
        }
    };
    let id = created["id"].as_str().unwrap_or(&name).to_owned();
    let tier = ExternalCmTier::new(vec![client.clone()], bridge.clone());
    let outcome = tier
        .resolve(&format!("{}:{id}", cfg.name), KeySpec::SymmetricDefault)
        .await
        .map(|_| ());
    let ok = outcome.is_ok();
    steps.push(match outcome {
        Ok(()) => format!(
            "a throwaway AES key was exported wrapped (RSA-OAEP {hash}) and unwrapped in token {}",
            bridge.name
        ),
        Err(e) => format!("end-to-end wrapping FAILED: {e}"),
    });
    if let Err(e) = client.delete_key(&id).await {
        steps.push(format!(
            "the throwaway key `{name}` could not be deleted: {e}"
        ));
    }
    (
        json!({"name": cfg.name, "url": cfg.url, "steps": steps, "ok": ok}),
        ok,
    )
}

/// Checks a DSM as an upload would use it: the TLS connection and the configured KEK or
/// transport key, then (with a bridge token) a throwaway AES-256 key created on the DSM and
/// resolved by the dsm tier itself (Get Attributes, wrapped Get, unwrap in the token), then
/// destroyed.
async fn probe_dsm(cfg: &DsmConfig, index: usize, bridge: Option<&Arc<Token>>) -> (Value, bool) {
    let addr = format!("{}:{}", cfg.host, cfg.port);
    let refused = |e: String| {
        (
            json!({"name": cfg.name, "address": addr, "error": e}),
            false,
        )
    };
    let client = match KmipClient::new(cfg, index) {
        Ok(c) => c,
        Err(e) => return refused(e.to_string()),
    };
    let mut steps = Vec::new();
    let (what, wanted) = match cfg.wrapping {
        DsmWrapping::AesKw => ("KEK", cfg.kek_name.clone().unwrap_or_default()),
        DsmWrapping::RsaOaep => (
            "transport key",
            cfg.transport_key_name.clone().unwrap_or_default(),
        ),
    };
    match client.locate_by_name(&wanted).await {
        Ok(found) if found.len() == 1 => {
            steps.push(format!("connected; {what} `{wanted}` found"));
        }
        Ok(found) => {
            return refused(format!(
                "{} objects are named `{wanted}`; exactly one {what} is expected",
                found.len()
            ));
        }
        Err(e) => return refused(e.to_string()),
    }
    let Some(bridge) = bridge else {
        return (
            json!({"name": cfg.name, "address": addr, "steps": steps}),
            true,
        );
    };
    let name = format!("hsm-bridge-probe-{}", uuid::Uuid::new_v4());
    let uid = match client.create_aes(&name).await {
        Ok(u) => u,
        Err(e) => {
            steps.push(format!("wrapping not checked end to end: the DSM did not let the bridge create a throwaway key ({e})"));
            return (
                json!({"name": cfg.name, "address": addr, "steps": steps}),
                true,
            );
        }
    };
    let dsm = Arc::new(Dsm {
        client,
        cfg: cfg.clone(),
    });
    let tier = DsmTier::new(vec![dsm.clone()], bridge.clone());
    let outcome = tier
        .resolve(&format!("{}:{uid}", cfg.name), KeySpec::SymmetricDefault)
        .await
        .map(|_| ());
    let ok = outcome.is_ok();
    steps.push(match outcome {
        Ok(()) => format!(
            "a throwaway AES key was fetched wrapped and unwrapped in token {}",
            bridge.name
        ),
        Err(e) => format!("end-to-end wrapping FAILED: {e}"),
    });
    if let Err(e) = dsm.client.destroy(&uid).await {
        steps.push(format!(
            "the throwaway key `{name}` could not be destroyed: {e}"
        ));
    }
    (
        json!({"name": cfg.name, "address": addr, "steps": steps, "ok": ok}),
        ok,
    )
}

/// The remote sources in text.
pub fn render_remotes(report: &Value) -> String {
    let mut out = String::new();
    for (kind, list) in [
        ("external CM", &report["external_cm"]),
        ("DSM", &report["dsm"]),
    ] {
        for r in list.as_array().into_iter().flatten() {
            let name = r["name"].as_str().unwrap_or("");
            let at = r["url"].as_str().or(r["address"].as_str()).unwrap_or("");
            if let Some(e) = r["error"].as_str() {
                out.push_str(&format!("{kind} {name} ({at}): NOT USABLE: {e}\n"));
                continue;
            }
            out.push_str(&format!("{kind} {name} ({at}):\n"));
            for s in r["steps"].as_array().into_iter().flatten() {
                out.push_str(&format!("  {}\n", s.as_str().unwrap_or("")));
            }
        }
    }
    out
}
