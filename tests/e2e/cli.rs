//! The command line: help, configuration errors, probe, token, and TLS serving.

use std::process::Command;

use crate::harness::*;

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("SOFTHSM2_CONF", &world().softhsm_conf)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run hsm-bridge");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_describes_every_command() {
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    for c in [
        "serve",
        "probe",
        "token",
        "check-config",
        "upload-job",
        "audit",
    ] {
        assert!(out.contains(c), "--help lists {c}: {out}");
    }
    for c in ["serve", "probe", "token", "upload-job"] {
        let (code, out, _) = run(&[c, "--help"], &[]);
        assert_eq!(code, 0, "{c} --help");
        assert!(out.contains("--config"), "{c} --help: {out}");
    }
}

fn good_config(dir: &std::path::Path, tokens: &Tokens) -> String {
    write_private(&dir.join("pin"), USER_PIN);
    write_private(&dir.join("jwt"), random_bytes(40));
    format!(
        r#"[server]
listen = "127.0.0.1:0"
plaintext = true

[auth]
issuer = "x"
jwt_secret_file = "{d}/jwt"
allowed_groups = ["admin"]

[store]
path = "{d}/db/hsm-bridge.db"

[[tokens]]
name = "bridge"
module = "{SOFTHSM_MODULE}"
token_label = "{b}"
pin_file = "{d}/pin"
profile = "softhsm2"
role = "bridge"

[[tokens]]
name = "luna"
module = "{SOFTHSM_MODULE}"
token_label = "{s}"
pin_file = "{d}/pin"
profile = "softhsm2"
role = "source"

[[kms]]
name = "kms"
id = "kms-id"
account_id = "000000000000"
regions = ["us-east-1"]
"#,
        d = dir.display(),
        b = tokens.bridge,
        s = tokens.source
    )
}

#[test]
fn a_bad_config_exits_non_zero_with_one_line_naming_the_key() {
    let tokens = Tokens::new();
    let dir = tempfile::tempdir().expect("dir");
    let good = good_config(dir.path(), &tokens);
    let path = dir.path().join("c.toml");
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            good.replace("plaintext = true", "plaintext = true\ncolour = \"red\""),
            vec![],
            "colour",
        ),
        (good.replace("issuer = \"x\"\n", ""), vec![], "auth"),
        (
            good.replace("127.0.0.1:0", "not-an-address"),
            vec![],
            "server.listen",
        ),
        (
            good.replace("127.0.0.1:0", "0.0.0.0:8443"),
            vec![],
            "server.plaintext",
        ),
        (
            good.replace("role = \"bridge\"", "role = \"primary\""),
            vec![],
            "tokens[0].role",
        ),
        (
            good.replace("000000000000", "12"),
            vec![],
            "kms[0].account_id",
        ),
        (
            good.clone(),
            vec![("HSM_BRIDGE__TOKENS__1__SESSIONS", "many")],
            "tokens[1].sessions",
        ),
        (
            good.clone(),
            vec![("HSM_BRIDGE__AUTH__ALLOWED_GROUPS", "[]")],
            "auth.allowed_groups",
        ),
        (
            good.clone(),
            vec![("HSM_BRIDGE__KMS__0__ENDPOINT_URL", "http://10.1.2.3:4566")],
            "kms[0].endpoint_url",
        ),
        (
            good.clone(),
            vec![("HSM_BRIDGE__SERVER__METRICS_LISTEN", "0.0.0.0:9464")],
            "server.metrics_listen",
        ),
        (
            good.clone(),
            vec![(
                "HSM_BRIDGE__TOKENS__0__PIN_FILE",
                "credential:../../etc/shadow",
            )],
            "tokens[0].pin_file",
        ),
    ];
    for (text, env, key) in cases {
        std::fs::write(&path, text).expect("write");
        let (code, out, err) = run(
            &["check-config", "--config", path.to_str().expect("path")],
            &env,
        );
        assert_ne!(code, 0, "refused: {key}");
        assert!(out.is_empty(), "nothing on stdout: {out}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains(key), "names {key}: {err}");
    }
    // A PIN file its group may read is refused, by check-config and at start, in one line.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&path, &good).expect("write");
        let pin = dir.path().join("pin");
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        for cmd in ["check-config", "serve"] {
            let (code, _, err) = run(&[cmd, "--config", path.to_str().expect("path")], &[]);
            assert_ne!(code, 0, "{cmd}");
            assert_eq!(err.trim_end().lines().count(), 1, "{cmd}: one line: {err}");
            assert!(
                err.contains("tokens[0].pin_file") && err.contains("readable"),
                "{cmd}: {err}"
            );
        }
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let (code, _, err) = run(&["serve", "--config", "/nonexistent/hsm-bridge.toml"], &[]);
    assert_ne!(code, 0);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    // The environment overrides keys of the file (here: a wrong PIN path breaks the start).
    std::fs::write(&path, &good).expect("write");
    let (code, out, _) = run(
        &["check-config", "--config", path.to_str().expect("path")],
        &[],
    );
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = run(
        &["probe", "--config", path.to_str().expect("path")],
        &[("HSM_BRIDGE__TOKENS__0__PIN_FILE", "/nonexistent/pin")],
    );
    assert_ne!(code, 0);
    assert!(
        out.contains("NOT USABLE")
            && out.contains("tokens[0].pin_file")
            && out.contains("/nonexistent/pin"),
        "{out}"
    );
}

#[test]
fn the_example_configuration_is_valid() {
    let example = format!("{REPO}/systemd/hsm-bridge.toml.example");
    let (code, out, err) = run(&["check-config", "--config", &example], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("is valid"));
}

#[test]
fn probe_prints_each_token_and_the_methods_it_proved() {
    let tokens = Tokens::new();
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, good_config(dir.path(), &tokens)).expect("write");
    let (code, out, err) = run(&["probe", "--config", path.to_str().expect("path")], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("token bridge (bridge, profile softhsm2)"),
        "{out}"
    );
    assert!(
        out.contains("token luna (source, profile softhsm2)"),
        "{out}"
    );
    assert!(
        out.contains("AWS wrap methods proven: RSAES_OAEP_SHA_1"),
        "{out}"
    );
    assert!(
        out.contains("[refused] RSA-OAEP SHA-256"),
        "SoftHSM2 2.6.1 refuses SHA-256: {out}"
    );
    assert!(
        out.contains("only lengths that are a multiple of 8 bytes"),
        "{out}"
    );
    let (code, json_out, _) = run(
        &["probe", "--config", path.to_str().expect("path"), "--json"],
        &[],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&json_out).expect("json");
    assert_eq!(
        v["tokens"][0]["wrap_methods"],
        serde_json::json!(["RSAES_OAEP_SHA_1"])
    );

    // A wrong PIN: probe says so for that token, and a daemon does not start.
    write_private(&dir.path().join("pin"), "wrong-pin");
    let (code, out, _) = run(&["probe", "--config", path.to_str().expect("path")], &[]);
    assert_ne!(code, 0);
    assert!(
        out.contains("refused the PIN") && out.contains("PinIncorrect"),
        "{out}"
    );
    // The daemon stops with 78, which the unit does not restart (a retry would try the same
    // PIN again), and says why in one line.
    let (code, _, err) = run(&["serve", "--config", path.to_str().expect("path")], &[]);
    assert_eq!(code, 78, "{err}");
    let last = err.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("hsm-bridge: "),
        "the reason ends the output: {err}"
    );
    assert_eq!(
        err.matches("the token refused the PIN").count(),
        2,
        "one login attempt per token (two tokens use this PIN file): {err}"
    );
    assert!(
        last.contains("PinIncorrect")
            && last.contains("not tried again")
            && last.contains("tokens[0].pin_file"),
        "{err}"
    );
    let unit = std::fs::read_to_string(format!("{REPO}/systemd/hsm-bridge.service")).expect("unit");
    assert!(
        unit.lines()
            .any(|l| l.trim() == "RestartPreventExitStatus=78"),
        "{unit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_serves_https_with_rustls() {
    let tokens = Tokens::new();
    let certs = tempfile::tempdir().expect("dir");
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-addext",
            "extendedKeyUsage=serverAuth",
        ])
        .arg("-keyout")
        .arg(certs.path().join("key.pem"))
        .arg("-out")
        .arg(certs.path().join("cert.pem"))
        .output()
        .expect("openssl");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            certs.path().join("key.pem"),
            std::fs::Permissions::from_mode(0o600),
        )
        .expect("chmod");
    }
    let b = Bridge::start(
        &tokens,
        Opts {
            server_toml: Some(format!(
                "listen = \"127.0.0.1:0\"\ntls_cert_file = \"{d}/cert.pem\"\ntls_key_file = \"{d}/key.pem\"",
                d = certs.path().display()
            )),
            ..Default::default()
        },
    )
    .await;
    assert!(b.url.starts_with("https://"), "{}", b.url);
    let ca = reqwest::Certificate::from_pem(
        &std::fs::read(certs.path().join("cert.pem")).expect("cert"),
    )
    .expect("cert");
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let resp = client
        .get(format!("{}/api/v1/vault/keys2", b.url))
        .bearer_auth(&b.token)
        .send()
        .await
        .expect("https request");
    assert_eq!(resp.status(), 200);
    let plain = b.url.replace("https://", "http://");
    let r = reqwest::Client::new()
        .get(format!("{plain}/healthz"))
        .send()
        .await;
    assert!(
        r.map(|r| !r.status().is_success()).unwrap_or(true),
        "no plain HTTP on a TLS port"
    );
    b.finish().await;
}
