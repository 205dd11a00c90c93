//! `hsm-bridge probe`: opens every configured token, runs its self-test and prints what it
//! proved, so an operator sees what the daemon would use before starting it.

use serde_json::{Value, json};

use crate::config::{Config, TokenRole};
use crate::pkcs11::selftest::{aws_hash, describe_lengths};
use crate::pkcs11::{Token, TokenError, TokenSet};

/// Opens every token and reports each: what it proved and refused, or why it could not be
/// opened. `Ok` only if every token would let the daemon start.
pub fn run(cfg: &Config) -> Result<(Value, bool), TokenError> {
    let probed = TokenSet::probe(cfg)?;
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
    Ok((json!({ "tokens": tokens }), all_ok))
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
    })
}

/// The human-readable form.
pub fn render(report: &Value) -> String {
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
