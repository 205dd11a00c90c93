//! Token faults, driven by the fault-injection module (`softhsm-test/pkcs11-faults`) between
//! the daemon and SoftHSM2: failed calls, a removed token, a hung call, a session logged out
//! behind the daemon's back, a PIN refused mid-run. Each upload during a fault succeeds or is
//! answered with a clean 503; none leaves an enabled key in KMS or an object in the token;
//! the daemon recovers without a restart.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_kms::Client as KmsClient;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::*;

struct Faults {
    control: PathBuf,
    log: PathBuf,
    state: PathBuf,
}

impl Faults {
    fn new(dir: &Path) -> Self {
        let f = Self {
            control: dir.join("faults.control"),
            log: dir.join("faults.log"),
            state: dir.join("faults.state"),
        };
        write_file(&f.control, "");
        f
    }

    fn env(&self) -> Vec<(String, String)> {
        let p = |k: &str, v: &Path| (k.to_owned(), v.display().to_string());
        vec![
            p("PKCS11_FAULTS_MODULE", Path::new(SOFTHSM_MODULE)),
            p("PKCS11_FAULTS_CONTROL", &self.control),
            p("PKCS11_FAULTS_LOG", &self.log),
            p("PKCS11_FAULTS_STATE", &self.state),
        ]
    }

    fn set(&self, rules: &str) {
        write_file(&self.control, rules);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn counter(&self, name: &str) -> u64 {
        let text = std::fs::read_to_string(&self.state).unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the module's state: {text}"))
    }

    /// Waits until the module sees no session object left (a call released from a hang
    /// returns a moment after its rule is lifted).
    async fn wait_no_session_objects(&self, what: &str) {
        let start = Instant::now();
        while self.counter("session_objects") != 0 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{what}: session objects left in the token: {}",
                std::fs::read_to_string(&self.state).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn body(b: &Bridge, alias: &str) -> Value {
    json!({
        "source_key_tier": "hsm-luna",
        "source_key_identifier": "faults-aes",
        "kms": b.kms_name,
        "region": REGION,
        "aws_param": {"Alias": alias, "CustomerMasterKeySpec": "SYMMETRIC_DEFAULT"},
    })
}

/// Every key of the bridge's account is either one of the `enabled` completed uploads or
/// scheduled for deletion.
async fn assert_no_stray_key(kms: &KmsClient, enabled: usize, what: &str) {
    let start = Instant::now();
    loop {
        let keys = kms_keys(kms).await;
        let on = keys.iter().filter(|(_, s)| s == "Enabled").count();
        let others_pending = keys
            .iter()
            .all(|(_, s)| s == "Enabled" || s == "PendingDeletion");
        if on == enabled && others_pending {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{what}: {enabled} enabled keys expected, the rest pending deletion: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Run<'a> {
    b: &'a Bridge,
    kms: KmsClient,
    faults: &'a Faults,
    material: Vec<u8>,
    objects: Vec<(String, u64, u64)>,
    uploaded: usize,
    n: usize,
}

impl Run<'_> {
    fn alias(&mut self) -> String {
        self.n += 1;
        format!("faults/{}", self.n)
    }

    async fn upload_ok(&mut self, what: &str) {
        let alias = self.alias();
        let (s, r) = self.b.upload(body(self.b, &alias)).await;
        assert_eq!(s, StatusCode::CREATED, "{what}: {r}");
        self.uploaded += 1;
        prove_aes(
            &self.kms,
            r["aws_param"]["KeyID"].as_str().expect("KeyID"),
            &self.material,
        )
        .await;
    }

    async fn upload_unavailable(&mut self, what: &str, needle: &str) {
        let alias = self.alias();
        let (s, r) = self.b.upload(body(self.b, &alias)).await;
        assert_error(s, &r, 503, needle);
        assert!(
            !r.to_string().contains("panic"),
            "{what}: a clean answer: {r}"
        );
    }

    /// After a fault: no enabled stray key, no object left in the token, and the next upload
    /// works without a restart.
    async fn recovered(&mut self, what: &str) {
        self.faults.set("");
        self.faults.wait_no_session_objects(what).await;
        assert_no_stray_key(&self.kms, self.uploaded, what).await;
        self.upload_ok(&format!("{what}: the upload after it"))
            .await;
        assert_eq!(
            object_counts(self.b).await,
            self.objects,
            "{what}: the token holds what it held before"
        );
        self.faults.wait_no_session_objects(what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_faults_are_answered_503_and_recovered_from() {
    let tokens = Tokens::new();
    let material = secret(32);
    put_secret(&tokens.source, "faults-aes", Kind::Aes, &material, true);
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new(dir.path());
    let mut b = Bridge::start(
        &tokens,
        Opts {
            module: Some(faults_module()),
            env: faults.env(),
            token_toml: "call_timeout_secs = 3".into(),
            ..Opts::default()
        },
    )
    .await;
    let mut run = Run {
        b: &b,
        kms: b.kms().await,
        faults: &faults,
        material,
        objects: object_counts(&b).await,
        uploaded: 0,
        n: 0,
    };
    run.upload_ok("before any fault").await;

    // Calls that fail once, before CreateKey (finding the source key) and after it (the wrap).
    for (rule, what) in [
        ("C_WrapKey DEVICE_ERROR 1", "a device error in the wrap"),
        (
            "C_WrapKey SESSION_HANDLE_INVALID 1",
            "a session lost in the wrap",
        ),
        // A key found before is checked through its handle (an attribute read), which
        // failing sends the tier to search again: both fail here.
        (
            "C_FindObjectsInit TOKEN_NOT_PRESENT 1\nC_GetAttributeValue TOKEN_NOT_PRESENT 1",
            "the token gone while finding the key",
        ),
    ] {
        faults.set(rule);
        run.upload_unavailable(what, "unavailable").await;
        assert!(
            faults
                .log()
                .contains(&format!("fault {}", rule.split(' ').next().unwrap_or(""))),
            "{what}: the fault was applied: {}",
            faults.log()
        );
        run.recovered(what).await;
    }

    // The token removed for a while: every call fails until it is back.
    faults.set("* TOKEN_NOT_PRESENT");
    run.upload_unavailable("token removed", "unavailable").await;
    run.upload_unavailable("token still removed", "unavailable")
        .await;
    let (s, v) = run.b.get("/api/v1/system/tokens").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["resources"][0]["status"]["state"], "unavailable", "{v}");
    let (s, v) = run.b.get("/healthz").await;
    assert_eq!(
        s,
        StatusCode::OK,
        "a removed token is not a lasting failure: {v}"
    );
    run.recovered("token removed and put back").await;

    // A hung wrap: answered 503 when the token's call timeout passes; when the call
    // returns at last its session is closed, and nothing is left behind.
    faults.set("C_WrapKey hang");
    let started = Instant::now();
    run.upload_unavailable("a hung wrap", "did not answer within 3 s")
        .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(30),
        "answered after the call timeout, not before nor much later: {took:?}"
    );
    // Other requests are served while the hung call holds its session.
    let (s, v) = run.b.get("/api/v1/cckm/aws/keys").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    faults.set("");
    let start = Instant::now();
    while !faults.log().contains("fault C_WrapKey released") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{}",
            faults.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    run.recovered("a hung wrap").await;
    let start = Instant::now();
    while !run
        .b
        .stderr()
        .contains("a token call that timed out has returned")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the returned call's session is closed, not pooled: {}",
            run.b.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A pooled session logged out behind the daemon's back: found out before it is used
    // (private keys would otherwise be invisible), logged in again once, and the upload works.
    let logins = faults.counter("logins");
    faults.set("C_GetSessionInfo logout 1");
    run.upload_ok("a logged-out session").await;
    assert!(faults.log().contains("logout 0x0"), "{}", faults.log());
    assert_eq!(
        faults.counter("logins"),
        logins + 1,
        "exactly one login again: {}",
        faults.log()
    );
    assert!(
        run.b.stderr().contains("no longer logged in"),
        "the daemon says so"
    );
    run.recovered("a logged-out session").await;

    let (uploaded, n) = (run.uploaded, run.n);
    assert!(uploaded >= 7 && n > uploaded);
    b.stop().await;
    assert_no_leak(&b);
}

/// The PIN refused when a logged-out session is logged in again: tried once, never again;
/// uploads are answered 503 and readiness says why, until the operator fixes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_refused_mid_run_is_tried_once_and_reported() {
    let tokens = Tokens::new();
    let material = secret(32);
    put_secret(&tokens.source, "faults-aes", Kind::Aes, &material, true);
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new(dir.path());
    let mut b = Bridge::start(
        &tokens,
        Opts {
            module: Some(faults_module()),
            env: faults.env(),
            with_source: true,
            ..Opts::default()
        },
    )
    .await;
    let kms = b.kms().await;
    let (s, r) = b.upload(body(&b, "pin/ok")).await;
    assert_eq!(s, StatusCode::CREATED, "{r}");
    prove_aes(
        &kms,
        r["aws_param"]["KeyID"].as_str().expect("id"),
        &material,
    )
    .await;

    let logins = faults.counter("logins");
    faults.set("C_GetSessionInfo logout 1\nC_Login 0xa0\n");
    let (s, r) = b.upload(body(&b, "pin/refused")).await;
    assert_error(s, &r, 503, "refused the PIN");
    assert_eq!(
        faults.counter("logins"),
        logins + 1,
        "one login attempt: {}",
        faults.log()
    );
    for i in 0..3 {
        let (s, r) = b.upload(body(&b, &format!("pin/again-{i}"))).await;
        assert_error(s, &r, 503, "refused the PIN");
    }
    let (s, v) = b.get("/healthz").await;
    assert_error(s, &v, 503, "refused the PIN");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|r| r.contains("not tried again")),
        "{v}"
    );
    let (s, v) = b.get("/api/v1/system/tokens").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        v["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .any(|t| t["status"]["state"] == "failed"),
        "{v}"
    );
    assert_eq!(
        faults.counter("logins"),
        logins + 1,
        "no further login attempt, whatever is asked: {}",
        faults.log()
    );
    assert_no_stray_key(&kms, 1, "PIN refused").await;
    b.stop().await;
    assert_no_leak(&b);
}

/// `server.max_active_uploads`: with one turn, an upload that arrives while another is held in
/// the token waits before anything is made in AWS, and goes on when the first is done; both
/// are proven.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_beyond_max_active_uploads_wait_their_turn() {
    let tokens = Tokens::new();
    let material = secret(32);
    put_secret(&tokens.source, "faults-aes", Kind::Aes, &material, true);
    let dir = tempfile::tempdir().expect("tempdir");
    let faults = Faults::new(dir.path());
    let mut env = faults.env();
    env.push(("HSM_BRIDGE__SERVER__MAX_ACTIVE_UPLOADS".into(), "1".into()));
    let b = Bridge::start(
        &tokens,
        Opts {
            module: Some(faults_module()),
            env,
            token_toml: "call_timeout_secs = 60".into(),
            ..Opts::default()
        },
    )
    .await;
    let kms = b.kms().await;
    let gauges = |text: &str| {
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<i64>().ok())
                .unwrap_or_else(|| panic!("no {name} in {text}"))
        };
        (
            value("hsm_bridge_uploads_active"),
            value("hsm_bridge_uploads_waiting"),
        )
    };
    let wait_for = |want: (i64, i64), what: &'static str| {
        let b = &b;
        async move {
            let start = Instant::now();
            loop {
                let text = b.metrics_text().await;
                if gauges(&text) == want {
                    return;
                }
                assert!(start.elapsed() < Duration::from_secs(20), "{what}: {text}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    faults.set("C_WrapKey hang");
    let (first, second, ()) = tokio::join!(
        b.upload(body(&b, "turns/first")),
        async {
            while !faults.log().contains("fault C_WrapKey hang") {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            b.upload(body(&b, "turns/second")).await
        },
        async {
            wait_for((1, 1), "one upload held in the token, one waiting").await;
            assert_eq!(
                kms_key_count(&kms).await,
                1,
                "the waiting upload has made nothing in AWS"
            );
            faults.set("");
        },
    );
    for (s, r) in [first, second] {
        assert_eq!(s, StatusCode::CREATED, "{r}");
        prove_aes(
            &kms,
            r["aws_param"]["KeyID"].as_str().expect("KeyID"),
            &material,
        )
        .await;
    }
    wait_for((0, 0), "no turn held after the uploads").await;
    b.finish().await;
}
