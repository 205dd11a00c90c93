//! Real parts for the end-to-end tests: SoftHSM2 tokens in a temporary directory, LocalStack's
//! KMS on loopback, and the `hsm-bridge` daemon started on port 0. Nothing is mocked; a missing
//! part fails the run loudly.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_kms::Client as KmsClient;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use hsm_bridge::pkcs11::keys::{Curve, PrivateKind, PrivateMaterial};
use reqwest::StatusCode;
use serde_json::{Value, json};

pub const BIN: &str = env!("CARGO_BIN_EXE_hsm-bridge");
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const USER_PIN: &str = "1234-user-pin";
pub const SO_PIN: &str = "5678-so-pin";
pub const REGION: &str = "us-east-1";
pub const OTHER_REGION: &str = "eu-west-1";

/// The two token families the suites run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    SoftHsm,
    Kryoptic,
}

impl Family {
    pub fn profile(self) -> &'static str {
        match self {
            Family::SoftHsm => "softhsm2",
            Family::Kryoptic => "kryoptic",
        }
    }

    pub fn module(self) -> PathBuf {
        match self {
            Family::SoftHsm => PathBuf::from(SOFTHSM_MODULE),
            Family::Kryoptic => kryoptic_module(),
        }
    }
}

/// The fault-injection module (`softhsm-test/pkcs11-faults`), built by the test command
/// before the tests run.
pub fn faults_module() -> PathBuf {
    let path = std::env::var_os("HSM_BRIDGE_FAULTS_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(format!("{REPO}/target/debug/libpkcs11_faults.so")));
    assert!(
        path.exists(),
        "the PKCS#11 fault-injection module {} is missing: build it with `cargo build -p pkcs11-faults` (softhsm-test/run-tests.sh does)",
        path.display()
    );
    path
}

pub fn kryoptic_module() -> PathBuf {
    std::env::var_os("HSM_BRIDGE_KRYOPTIC_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(format!(
                "{REPO}/.work/kryoptic-target/release/libkryoptic_pkcs11.so"
            ))
        })
}

/// One loaded PKCS#11 module of the test process.
pub struct Lib {
    pub family: Family,
    pub pkcs11: Pkcs11,
    init_lock: Mutex<()>,
}

/// Slots declared for kryoptic: each test token takes a free one.
const KRYOPTIC_SLOTS: u64 = 96;

/// What the whole test process shares: one SoftHSM2 and one kryoptic configuration (each
/// test gets its own tokens in them), one KMS emulator (each test gets its own AWS account).
pub struct World {
    pub dir: tempfile::TempDir,
    pub softhsm_conf: PathBuf,
    pub kryoptic_conf: PathBuf,
    pub softhsm: Lib,
    pub kryoptic: Lib,
    pub kms_endpoint: String,
    emulator: Mutex<(Child, ChildStdin)>,
    counter: AtomicU64,
    /// Every piece of key material a test gave to a token or the daemon.
    secrets: Mutex<Vec<Vec<u8>>>,
}

static WORLD: OnceLock<Result<World, String>> = OnceLock::new();

/// The world's directory is never dropped (it lives in a static): remove those of test
/// processes that are gone.
fn remove_stale_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("hsm-bridge-e2e-") else {
            continue;
        };
        let pid: Option<i32> = rest.split('-').next().and_then(|p| p.parse().ok());
        // SAFETY: kill(pid, 0) only asks whether the process exists.
        if pid.is_some_and(|p| unsafe { libc::kill(p, 0) } != 0) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Sets a shared part up once; if that fails, every test that needs it fails at once with
/// the same reason.
fn once<T>(
    cell: &'static OnceLock<Result<T, String>>,
    what: &str,
    build: impl FnOnce() -> T,
) -> &'static T {
    match cell.get_or_init(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(build)).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "unknown failure".to_owned())
        })
    }) {
        Ok(v) => v,
        Err(why) => panic!("{what} could not be set up: {why}"),
    }
}

pub fn world() -> &'static World {
    once(&WORLD, "the test world", build_world)
}

fn load(family: Family) -> Lib {
    let pkcs11 = Pkcs11::new(family.module())
        .unwrap_or_else(|e| panic!("load {}: {e}", family.module().display()));
    pkcs11
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("C_Initialize");
    Lib {
        family,
        pkcs11,
        init_lock: Mutex::new(()),
    }
}

fn build_world() -> World {
    assert!(
        Path::new(SOFTHSM_MODULE).exists(),
        "SoftHSM2 is not installed ({SOFTHSM_MODULE} missing): run softhsm-test/install-deps.sh"
    );
    assert!(
        kryoptic_module().exists(),
        "kryoptic is not built ({} missing): run softhsm-test/build-kryoptic.sh",
        kryoptic_module().display()
    );
    remove_stale_runs();
    let dir = tempfile::Builder::new()
        .prefix(&format!("hsm-bridge-e2e-{}-", std::process::id()))
        .tempdir()
        .expect("tempdir");
    let tokens = dir.path().join("softhsm-tokens");
    std::fs::create_dir_all(&tokens).expect("token dir");
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
            tokens.display()
        ),
    )
    .expect("softhsm2.conf");
    let kdir = dir.path().join("kryoptic");
    std::fs::create_dir_all(&kdir).expect("kryoptic dir");
    let kconf = dir.path().join("kryoptic.conf");
    let slots: String = (1..=KRYOPTIC_SLOTS)
        .map(|n| {
            format!(
                "[[slots]]\nslot = {n}\ndbtype = \"sqlite\"\ndbargs = \"{}/slot-{n}.sql\"\n\n",
                kdir.display()
            )
        })
        .collect();
    std::fs::write(&kconf, slots).expect("kryoptic.conf");
    // SAFETY: set once, inside this OnceLock initialiser, before the modules are loaded;
    // the other test threads wait on the same OnceLock and read nothing meanwhile.
    unsafe {
        std::env::set_var("SOFTHSM2_CONF", &conf);
        std::env::set_var("KRYOPTIC_CONF", &kconf);
    }
    let softhsm = load(Family::SoftHsm);
    let kryoptic = load(Family::Kryoptic);

    let port = free_port();
    let emu_dir = dir.path().join("kms-emulator");
    std::fs::create_dir_all(&emu_dir).expect("emulator dir");
    let (child, stdin) = run_ready(
        "kms-emulator.sh",
        port,
        &emu_dir,
        "the KMS emulator did not start (is it installed? run softhsm-test/install-deps.sh)",
    );
    World {
        dir,
        softhsm_conf: conf,
        kryoptic_conf: kconf,
        softhsm,
        kryoptic,
        kms_endpoint: format!("http://127.0.0.1:{port}"),
        emulator: Mutex::new((child, stdin)),
        counter: AtomicU64::new(0),
        secrets: Mutex::new(Vec::new()),
    }
}

impl Lib {
    /// Initialises a new token on a free slot and sets its user PIN.
    fn init_token(&self, label: &str) {
        let _g = self.init_lock.lock().unwrap_or_else(|p| p.into_inner());
        let free = self
            .pkcs11
            .get_slots_with_token()
            .expect("slots")
            .into_iter()
            .find(|s| {
                self.pkcs11
                    .get_token_info(*s)
                    .map(|i| !i.token_initialized())
                    .unwrap_or(false)
            })
            .unwrap_or_else(|| panic!("a free {:?} slot", self.family));
        self.pkcs11
            .init_token(free, &AuthPin::from(SO_PIN.to_owned()), label)
            .expect("C_InitToken");
        let s = self.pkcs11.open_rw_session(free).expect("session");
        s.login(UserType::So, Some(&AuthPin::from(SO_PIN.to_owned())))
            .expect("SO login");
        s.init_pin(&AuthPin::from(USER_PIN.to_owned()))
            .expect("C_InitPIN");
        s.logout().expect("logout");
    }

    fn slot(&self, label: &str) -> Option<Slot> {
        self.pkcs11
            .get_slots_with_token()
            .expect("slots")
            .into_iter()
            .find(|s| {
                self.pkcs11
                    .get_token_info(*s)
                    .map(|i| i.token_initialized() && i.label() == label)
                    .unwrap_or(false)
            })
    }
}

impl World {
    pub fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::SeqCst)
    }

    /// A fresh 12-digit AWS account: LocalStack keeps each account's keys apart.
    pub fn new_account(&self) -> String {
        let n = self.next();
        format!("{:06}{:06}", std::process::id() % 1_000_000, 100_000 + n)
    }

    pub fn lib(&self, family: Family) -> &Lib {
        match family {
            Family::SoftHsm => &self.softhsm,
            Family::Kryoptic => &self.kryoptic,
        }
    }

    /// A logged-in session on a token of this process (labels are unique across families).
    pub fn session(&self, label: &str) -> Session {
        let (lib, slot) = [&self.softhsm, &self.kryoptic]
            .into_iter()
            .find_map(|l| l.slot(label).map(|s| (l, s)))
            .unwrap_or_else(|| panic!("token {label} not found"));
        let s = lib.pkcs11.open_rw_session(slot).expect("session");
        match s.login(UserType::User, Some(&AuthPin::from(USER_PIN.to_owned()))) {
            Ok(()) => {}
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::UserAlreadyLoggedIn,
                _,
            )) => {}
            Err(e) => panic!("login: {e}"),
        }
        s
    }
}

/// A bridge token and a source token of one test, of one family.
pub struct Tokens {
    pub bridge: String,
    pub source: String,
    pub family: Family,
}

impl Tokens {
    pub fn new() -> Self {
        Self::on(Family::SoftHsm)
    }

    pub fn on(family: Family) -> Self {
        let w = world();
        let n = w.next();
        let t = Tokens {
            bridge: format!("bridge-{n}"),
            source: format!("source-{n}"),
            family,
        };
        w.lib(family).init_token(&t.bridge);
        w.lib(family).init_token(&t.source);
        t
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Aes,
    Hmac,
}

/// The token-object template both test secret helpers start from.
pub fn secret_template(kind: Kind, label: &str, extractable: bool) -> Vec<Attribute> {
    let mut t = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(if kind == Kind::Aes {
            KeyType::AES
        } else {
            KeyType::GENERIC_SECRET
        }),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(extractable),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    if kind == Kind::Aes {
        t.extend([Attribute::Encrypt(true), Attribute::Decrypt(true)]);
    } else {
        t.extend([Attribute::Sign(true), Attribute::Verify(true)]);
    }
    t
}

/// A secret key with known value in a token (as an HSM administrator would import one).
pub fn put_secret(
    token: &str,
    label: &str,
    kind: Kind,
    value: &[u8],
    extractable: bool,
) -> Vec<u8> {
    let s = world().session(token);
    let id: [u8; 8] = rand::random();
    let mut t = secret_template(kind, label, extractable);
    t.extend([Attribute::Id(id.to_vec()), Attribute::Value(value.to_vec())]);
    s.create_object(&t).expect("C_CreateObject");
    id.to_vec()
}

/// A secret key generated inside a token; its value is never seen by the test.
pub fn generate_secret(token: &str, label: &str, kind: Kind, len: usize) {
    let s = world().session(token);
    let mut t = secret_template(kind, label, true);
    t.push(Attribute::ValueLen((len as u64).into()));
    let mech = if kind == Kind::Aes {
        Mechanism::AesKeyGen
    } else {
        Mechanism::GenericSecretKeyGen
    };
    s.generate_key(&mech, &t).expect("C_GenerateKey");
}

pub fn find_one(s: &Session, label: &str) -> ObjectHandle {
    let found = s
        .find_objects(&[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])
        .expect("find");
    assert_eq!(found.len(), 1, "exactly one key labelled {label}");
    found[0]
}

/// The token's own HMAC of `msg` with the key labelled `label`.
pub fn token_hmac(token: &str, label: &str, spec: &str, msg: &[u8]) -> Vec<u8> {
    let s = world().session(token);
    let k = find_one(&s, label);
    let mech = match spec {
        "HMAC_224" => Mechanism::Sha224Hmac,
        "HMAC_256" => Mechanism::Sha256Hmac,
        "HMAC_384" => Mechanism::Sha384Hmac,
        _ => Mechanism::Sha512Hmac,
    };
    s.sign(&mech, k, msg).expect("C_Sign HMAC")
}

/// The token decrypts a KMS ciphertext (LocalStack: key id | IV | tag | AES-GCM body).
pub fn token_decrypt_kms_ciphertext(token: &str, label: &str, blob: &[u8]) -> Vec<u8> {
    let s = world().session(token);
    let k = find_one(&s, label);
    let mut iv = blob[36..52].to_vec();
    let tag = &blob[52..68];
    let mut body = blob[68..].to_vec();
    body.extend_from_slice(tag);
    let params =
        cryptoki::mechanism::aead::GcmParams::new(&mut iv, &[], 128u64.into()).expect("GCM params");
    let plain = s
        .decrypt(&Mechanism::AesGcm(params), k, &body)
        .expect("C_Decrypt AES-GCM");
    unpad(&plain)
}

/// Proves that the KMS key `kms_key` holds the vault key `key_id` without its value ever
/// leaving the token: the test unwraps the stored blob under the bridge token's KEK into a
/// session key of its own (sensitive, as the KEK's unwrap template demands), then the token
/// decrypts a KMS ciphertext (AES) or recomputes a KMS MAC (HMAC) with it.
pub async fn prove_vault_key_in_token(
    bridge: &Bridge,
    tokens: &Tokens,
    key_id: &str,
    kms: &KmsClient,
    kms_key: &str,
    spec: &str,
) {
    let conn = rusqlite::Connection::open_with_flags(
        &bridge.db_path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open store");
    let (blob, mech, kind): (Vec<u8>, i64, String) = conn
        .query_row(
            "SELECT wrapped, wrap_mechanism, kind FROM vault_keys WHERE id = ?1",
            [key_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("vault row");
    let aes = kind == "aes";
    let s = world().session(&tokens.bridge);
    let kek = find_one(&s, "hsm-bridge-vault-kek");
    let mech = hsm_bridge::pkcs11::mechanism_ext::RawMechanism::new(mech as u64);
    let t = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(if aes {
            KeyType::AES
        } else {
            KeyType::GENERIC_SECRET
        }),
        Attribute::Token(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Decrypt(aes),
        Attribute::Sign(!aes),
    ];
    let h = s
        .unwrap_key(&mech.without_params(), kek, &blob, &t)
        .expect("C_UnwrapKey");
    let msg = random_bytes(41);
    if aes {
        let ct = kms_ciphertext(kms, kms_key, &msg).await;
        let mut iv = ct[36..52].to_vec();
        let mut body = ct[68..].to_vec();
        body.extend_from_slice(&ct[52..68]);
        let params = cryptoki::mechanism::aead::GcmParams::new(&mut iv, &[], 128u64.into())
            .expect("GCM params");
        let plain = s
            .decrypt(&Mechanism::AesGcm(params), h, &body)
            .expect("the token decrypts the KMS ciphertext with the vault key");
        assert_eq!(unpad(&plain), msg, "KMS encrypted under the vault key");
    } else {
        let mac = kms_mac(kms, kms_key, spec, &msg).await;
        let mech = match spec {
            "HMAC_224" => Mechanism::Sha224Hmac,
            "HMAC_256" => Mechanism::Sha256Hmac,
            "HMAC_384" => Mechanism::Sha384Hmac,
            _ => Mechanism::Sha512Hmac,
        };
        assert_eq!(
            s.sign(&mech, h, &msg).expect("C_Sign HMAC"),
            mac,
            "KMS MACs with the vault key"
        );
    }
    s.destroy_object(h).expect("destroy");
}

fn unpad(p: &[u8]) -> Vec<u8> {
    let n = *p.last().expect("padded") as usize;
    assert!((1..=16).contains(&n) && p[p.len() - n..].iter().all(|b| *b as usize == n));
    p[..p.len() - n].to_vec()
}

/// Far above AWS's defaults: the emulator enforces none.
const GENEROUS_QUOTAS: &str = "{ GetParametersForImport = 200, CreateKey = 200, ImportKeyMaterial = 200, CreateAlias = 200, UpdateAlias = 200, ReplicateKey = 200, ScheduleKeyDeletion = 200, PutKeyPolicy = 200, TagResource = 200, EnableKey = 200, DisableKey = 200, DeleteImportedKeyMaterial = 200, DeleteAlias = 200, UntagResource = 200, UpdateKeyDescription = 200, CancelKeyDeletion = 200, RotateKeyOnDemand = 200 }";

/// Options of one daemon.
#[derive(Clone)]
pub struct Opts {
    /// Where the daemon sends KMS calls (a fault proxy, say); the emulator by default.
    pub kms_endpoint: Option<String>,
    pub wrapping_key_spec: &'static str,
    pub cleanup_interval_secs: u64,
    pub with_source: bool,
    pub extra_toml: String,
    /// Replaces the `[server]` keys (except address_file).
    pub server_toml: Option<String>,
    /// AWS credentials from a named profile in ~/.aws instead of the environment.
    pub aws_profile: bool,
    /// More environment for the daemon (configuration overrides, say).
    pub env: Vec<(String, String)>,
    /// The SDK's attempts per AWS call (`[[kms]].max_attempts`).
    pub max_attempts: u32,
    /// The PKCS#11 module of every `[[tokens]]` entry (the fault-injection module, say)
    /// instead of the family's own.
    pub module: Option<PathBuf>,
    /// More keys for every `[[tokens]]` entry.
    pub token_toml: String,
    /// `[[kms]].request_quotas` (a TOML inline table) instead of the tests' generous one.
    pub request_quotas: Option<String>,
    /// `[[kms]].operation_timeout_secs`.
    pub operation_timeout_secs: u64,
    /// The keys of `[store]` instead of a SQLite file of the daemon's own.
    pub store_toml: Option<String>,
    /// The `[[kms]]` identity (account, name, id) of another bridge, so that two bridges
    /// sharing a store name one KMS connection.
    pub same_kms_as: Option<(String, String, String)>,
}

impl Opts {
    /// The defaults, with KMS calls sent through `proxy` (a fault or recording proxy).
    pub fn through(proxy: &crate::proxy::FaultProxy) -> Self {
        Self {
            kms_endpoint: Some(proxy.url.clone()),
            ..Self::default()
        }
    }
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            kms_endpoint: None,
            wrapping_key_spec: "RSA_2048",
            cleanup_interval_secs: 60,
            with_source: true,
            extra_toml: String::new(),
            server_toml: None,
            aws_profile: false,
            env: Vec::new(),
            max_attempts: 1,
            module: None,
            token_toml: String::new(),
            request_quotas: None,
            operation_timeout_secs: 10,
            store_toml: None,
            same_kms_as: None,
        }
    }
}

pub struct Bridge {
    pub dir: tempfile::TempDir,
    /// The PostgreSQL store (URL, password file) when `Opts::store_toml` names one.
    pub postgres: Option<(String, PathBuf)>,
    pub config: PathBuf,
    pub db_path: PathBuf,
    pub url: String,
    pub account: String,
    pub kms_name: String,
    pub kms_id: String,
    pub jwt_secret: Vec<u8>,
    pub token: String,
    child: Option<Child>,
    http: reqwest::Client,
    env_credentials: bool,
    pub env: Vec<(String, String)>,
}

pub const ISSUER: &str = "hsm-bridge-tests";
pub const GROUP: &str = "CCKM Admins";

impl Bridge {
    pub async fn start(tokens: &Tokens, opts: Opts) -> Bridge {
        let mut b = Self::prepare(tokens, opts);
        b.launch().await;
        b
    }

    /// The KMS connection identity, for `Opts::same_kms_as`.
    pub fn kms_identity(&self) -> (String, String, String) {
        (
            self.account.clone(),
            self.kms_name.clone(),
            self.kms_id.clone(),
        )
    }

    /// Writes the daemon's files without starting it.
    pub fn prepare(tokens: &Tokens, opts: Opts) -> Bridge {
        let w = world();
        let dir = tempfile::Builder::new()
            .prefix("bridge-")
            .tempdir_in(w.dir.path())
            .expect("tempdir");
        let d = dir.path();
        write_private(&d.join("pin"), USER_PIN);
        // A secret file's trailing newlines are not part of the secret: none at the end here.
        let mut jwt_secret = random_bytes(48);
        if let Some(last) = jwt_secret.last_mut()
            && matches!(*last, b'\n' | b'\r')
        {
            *last = b'x';
        }
        remember(&jwt_secret);
        write_private(&d.join("jwt.key"), &jwt_secret);
        let (account, kms_name, kms_id) = opts.same_kms_as.clone().unwrap_or_else(|| {
            (
                w.new_account(),
                format!("kms-{}", w.next()),
                uuid::Uuid::new_v4().to_string(),
            )
        });
        let endpoint = opts
            .kms_endpoint
            .clone()
            .unwrap_or_else(|| w.kms_endpoint.clone());
        let module = opts
            .module
            .clone()
            .unwrap_or_else(|| tokens.family.module());
        let source = if opts.with_source {
            format!(
                r#"
[[tokens]]
name = "luna"
module = "{module}"
token_label = "{src}"
pin_file = "{d}/pin"
profile = "{profile}"
role = "source"
{token_toml}
"#,
                src = tokens.source,
                d = d.display(),
                module = module.display(),
                profile = tokens.family.profile(),
                token_toml = opts.token_toml,
            )
        } else {
            String::new()
        };
        let config = format!(
            r#"
[server]
{server}
address_file = "{d}/address"

[auth]
issuer = "{ISSUER}"
jwt_secret_file = "{d}/jwt.key"
allowed_groups = ["{GROUP}", "admin"]

[store]
{store}

[logging]
level = "info,hsm_bridge=debug"
detailed_errors = true

[cleanup]
interval_secs = {cleanup}

[[tokens]]
name = "bridge"
module = "{module}"
token_label = "{bridge}"
pin_file = "{d}/pin"
profile = "{profile}"
role = "bridge"
{token_toml}
{source}
[[kms]]
name = "{kms_name}"
id = "{kms_id}"
account_id = "{account}"
regions = ["{REGION}", "{OTHER_REGION}"]
endpoint_url = "{endpoint}"
wrapping_key_spec = "{wks}"
max_attempts = {max_attempts}
operation_timeout_secs = {op_timeout}
# The emulator enforces no quotas: the tests' bridges allow more than AWS's defaults, so that
# a suite does not wait on the pacing of calls nothing would throttle.
request_quotas = {quotas}
{aws_profile}
{extra}
"#,
            d = d.display(),
            server = opts
                .server_toml
                .clone()
                .unwrap_or_else(|| "listen = \"127.0.0.1:0\"\nplaintext = true".to_owned()),
            cleanup = opts.cleanup_interval_secs,
            store = opts
                .store_toml
                .clone()
                .unwrap_or_else(|| format!("path = \"{}/state/hsm-bridge.db\"", d.display())),
            bridge = tokens.bridge,
            module = module.display(),
            token_toml = opts.token_toml,
            profile = tokens.family.profile(),
            wks = opts.wrapping_key_spec,
            max_attempts = opts.max_attempts,
            aws_profile = if opts.aws_profile {
                "profile = \"bridge\""
            } else {
                ""
            },
            extra = opts.extra_toml,
            op_timeout = opts.operation_timeout_secs,
            quotas = opts
                .request_quotas
                .clone()
                .unwrap_or_else(|| GENEROUS_QUOTAS.to_owned()),
        );
        if opts.aws_profile {
            std::fs::create_dir_all(d.join(".aws")).expect(".aws");
            std::fs::write(
                d.join(".aws/credentials"),
                format!("[bridge]\naws_access_key_id = {account}\naws_secret_access_key = test\n"),
            )
            .expect("credentials");
        }
        let config_path = d.join("hsm-bridge.toml");
        std::fs::write(&config_path, config).expect("config");
        let token = mint_cli(&config_path, "alice", &[GROUP]);
        let toml_value = |key: &str| {
            opts.store_toml.as_deref().and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix(&format!("{key} = \"")))
                    .map(|v| v.trim_end_matches('"').to_owned())
            })
        };
        let postgres = toml_value("url").zip(toml_value("password_file").map(PathBuf::from));
        Bridge {
            postgres,
            db_path: d.join("state/hsm-bridge.db"),
            config: config_path,
            url: String::new(),
            account,
            kms_name,
            kms_id,
            jwt_secret,
            token,
            child: None,
            env_credentials: !opts.aws_profile,
            env: opts.env.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .danger_accept_invalid_certs(opts.server_toml.is_some())
                .build()
                .expect("http client"),
            dir,
        }
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(name))
            .expect("log file")
    }

    /// `hsm-bridge serve` with this daemon's configuration and nothing of the test's
    /// environment but PATH.
    fn serve_command(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("SOFTHSM2_CONF", &world().softhsm_conf)
            .env("KRYOPTIC_CONF", &world().kryoptic_conf)
            .env("AWS_EC2_METADATA_DISABLED", "true");
        cmd
    }

    pub async fn launch(&mut self) {
        let addr_file = self.dir.path().join("address");
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = self.serve_command();
        if self.env_credentials {
            cmd.env("AWS_ACCESS_KEY_ID", &self.account)
                .env("AWS_SECRET_ACCESS_KEY", "test");
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(self.log_file("daemon.out"))
            .stderr(self.log_file("daemon.err"))
            .spawn()
            .expect("start hsm-bridge");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Ok(a) = std::fs::read_to_string(&addr_file)
                && a.ends_with('\n')
            {
                self.url = a.trim().to_owned();
                break;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "hsm-bridge exited with {status} before listening:\n{}",
                    self.stderr()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "hsm-bridge did not listen within 60 s:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the daemon and expects it to refuse to start: its exit code and stderr.
    pub async fn launch_refused(&mut self) -> (i32, String) {
        let mut cmd = self.serve_command();
        cmd.env("NO_COLOR", "1").stdin(Stdio::null());
        let out = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::task::spawn_blocking(move || cmd.output())
                .await
                .expect("join")
        })
        .await
        .expect("the daemon should have refused to start within 60 s")
        .expect("run hsm-bridge");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.err")).unwrap_or_default()
    }

    pub fn logs(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for f in ["daemon.out", "daemon.err"] {
            all.extend(std::fs::read(self.dir.path().join(f)).unwrap_or_default());
        }
        all
    }

    /// SIGTERM and wait: the daemon must stop cleanly.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            loop {
                if let Ok(Some(status)) = c.try_wait() {
                    assert!(
                        status.success(),
                        "hsm-bridge exited with {status} on SIGTERM"
                    );
                    break;
                }
                if start.elapsed() > Duration::from_secs(20) {
                    let _ = c.kill();
                    panic!("hsm-bridge did not stop within 20 s of SIGTERM");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Runs the CLI with this daemon's configuration and environment.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("SOFTHSM2_CONF", &world().softhsm_conf)
            .env("KRYOPTIC_CONF", &world().kryoptic_conf)
            .env("RUST_LOG", "error")
            .env("NO_COLOR", "1")
            .output()
            .expect("hsm-bridge");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// SIGKILL: the daemon dies wherever it is.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The end of every test: stop the daemon cleanly and check it leaked no key material.
    pub async fn finish(mut self) {
        self.stop().await;
        assert_no_leak(&self);
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        bearer: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut rq = self.http.request(method, format!("{}{path}", self.url));
        if let Some(t) = bearer {
            rq = rq.bearer_auth(t);
        }
        if let Some(b) = body {
            rq = rq.json(b);
        }
        let resp = rq.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("non-JSON answer ({status}): {text}"))
        };
        (status, v)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body), Some(&self.token))
            .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None, Some(&self.token))
            .await
    }

    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        bearer: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut rq = self
            .http
            .request(method, format!("{}{path}", self.url))
            .body(body);
        if let Some(ct) = content_type {
            rq = rq.header("content-type", ct);
        }
        if let Some(t) = bearer {
            rq = rq.bearer_auth(t);
        }
        let resp = rq.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `GET /metrics` as a reader: the Prometheus text.
    pub async fn metrics_text(&self) -> String {
        let resp = self
            .http
            .get(format!("{}/metrics", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.text().await.expect("body")
    }

    /// A KMS client for this daemon's account, straight to the emulator.
    pub async fn kms(&self) -> KmsClient {
        kms_client(&self.account, REGION).await
    }

    pub async fn kms_in(&self, region: &str) -> KmsClient {
        kms_client(&self.account, region).await
    }

    /// Creates a vault key by importing known material.
    pub async fn vault_import(&self, name: &str, algorithm: &str, material: &[u8]) -> String {
        let (s, v) = self
            .post(
                "/api/v1/vault/keys2",
                &json!({"name": name, "algorithm": algorithm, "material": hex::encode(material)}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "vault import: {v}");
        v["id"].as_str().expect("id").to_owned()
    }

    pub async fn upload(&self, body: Value) -> (StatusCode, Value) {
        self.post("/api/v1/cckm/aws/upload-key", &body).await
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Writes a secret file as an operator would: readable by its owner only (the daemon refuses
/// secret files its group or others may read).
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).expect("secret file");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// `[[users]]` entries for peers of the bridge: (name, password, groups).
pub fn peers_toml(peers: &[(&str, &str, &[&str])]) -> String {
    let mut out = String::new();
    for (name, password, groups) in peers {
        out.push_str(&format!(
            "\n[[users]]\nname = \"{name}\"\npassword_hash = \"{}\"\ngroups = {}\n",
            hash_password(password),
            serde_json::to_string(groups).expect("groups")
        ));
    }
    out
}

/// A peer token: the password grant of `POST /api/v1/auth/tokens`.
pub async fn peer_token(b: &Bridge, user: &str, password: &str) -> String {
    let (s, r) = b
        .call(
            reqwest::Method::POST,
            "/api/v1/auth/tokens",
            Some(&json!({"grant_type": "password", "username": user, "password": password})),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "password grant for {user}: {r}");
    r["jwt"].as_str().expect("jwt").to_owned()
}

/// An Argon2 hash of `pw` from `hsm-bridge hash-password`, for `[[users]]`.
pub fn hash_password(pw: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(BIN)
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("hash-password");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{pw}\n").as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

pub fn mint_cli(config: &Path, user: &str, groups: &[&str]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("token")
        .arg("--config")
        .arg(config)
        .arg("--user")
        .arg(user);
    for g in groups {
        cmd.arg("--group").arg(g);
    }
    let out = cmd.output().expect("hsm-bridge token");
    assert!(
        out.status.success(),
        "token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_owned()
}

pub async fn kms_client(account: &str, region: &str) -> KmsClient {
    let creds = aws_credential_types::Credentials::new(account, "test", None, None, "tests");
    let conf = aws_sdk_kms::config::Builder::new()
        .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new(region.to_owned()))
        .endpoint_url(&world().kms_endpoint)
        .credentials_provider(creds)
        .build();
    KmsClient::from_conf(conf)
}

/// Every key of the account in the region, with its state.
pub async fn kms_keys(kms: &KmsClient) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let keys = kms.list_keys().limit(1000).send().await.expect("ListKeys");
    for k in keys.keys() {
        let id = k.key_id().expect("key id").to_owned();
        let d = kms
            .describe_key()
            .key_id(&id)
            .send()
            .await
            .expect("DescribeKey");
        let st = d
            .key_metadata()
            .and_then(|m| m.key_state())
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default();
        out.push((id, st));
    }
    out
}

pub async fn kms_key_count(kms: &KmsClient) -> usize {
    kms.list_keys()
        .limit(1000)
        .send()
        .await
        .expect("ListKeys")
        .keys()
        .len()
}

pub fn random_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

/// Random key material, remembered so that every daemon's logs and store are checked for it.
pub fn secret(n: usize) -> Vec<u8> {
    let v = random_bytes(n);
    remember(&v);
    v
}

/// Remembers material a test learned (a generated key it read back through the token).
pub fn remember(v: &[u8]) {
    world()
        .secrets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(v.to_vec());
}

/// Proves the KMS key holds `material`: a KMS ciphertext decrypts with it.
pub async fn prove_aes(kms: &KmsClient, key_id: &str, material: &[u8]) {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let plain = random_bytes(37);
    let ct = kms
        .encrypt()
        .key_id(key_id)
        .plaintext(aws_sdk_kms::primitives::Blob::new(plain.clone()))
        .send()
        .await
        .expect("KMS Encrypt");
    let blob = ct.ciphertext_blob().expect("ciphertext").as_ref().to_vec();
    assert_eq!(
        &blob[..36],
        key_id.as_bytes(),
        "LocalStack ciphertext starts with the key id"
    );
    type Gcm16 = aes_gcm::AesGcm<aes_gcm::aes::Aes256, aes_gcm::aead::consts::U16>;
    let cipher = Gcm16::new_from_slice(material).expect("AES-256 key");
    let mut body = blob[68..].to_vec();
    body.extend_from_slice(&blob[52..68]);
    let out = cipher
        .decrypt(
            aes_gcm::Nonce::<aes_gcm::aead::consts::U16>::from_slice(&blob[36..52]),
            Payload {
                msg: &body,
                aad: &[],
            },
        )
        .expect("the KMS ciphertext must decrypt with the source key");
    assert_eq!(unpad(&out), plain, "KMS encrypted under the source key");
}

pub async fn kms_ciphertext(kms: &KmsClient, key_id: &str, plain: &[u8]) -> Vec<u8> {
    kms.encrypt()
        .key_id(key_id)
        .plaintext(aws_sdk_kms::primitives::Blob::new(plain.to_vec()))
        .send()
        .await
        .expect("KMS Encrypt")
        .ciphertext_blob()
        .expect("ciphertext")
        .as_ref()
        .to_vec()
}

pub async fn kms_mac(kms: &KmsClient, key_id: &str, spec: &str, msg: &[u8]) -> Vec<u8> {
    let alg = match spec {
        "HMAC_224" => "HMAC_SHA_224",
        "HMAC_256" => "HMAC_SHA_256",
        "HMAC_384" => "HMAC_SHA_384",
        _ => "HMAC_SHA_512",
    };
    kms.generate_mac()
        .key_id(key_id)
        .mac_algorithm(aws_sdk_kms::types::MacAlgorithmSpec::from(alg))
        .message(aws_sdk_kms::primitives::Blob::new(msg.to_vec()))
        .send()
        .await
        .expect("KMS GenerateMac")
        .mac()
        .expect("mac")
        .as_ref()
        .to_vec()
}

pub fn soft_hmac(spec: &str, key: &[u8], msg: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    macro_rules! mac {
        ($h:ty) => {{
            let mut m = <Hmac<$h> as Mac>::new_from_slice(key).expect("hmac key");
            m.update(msg);
            m.finalize().into_bytes().to_vec()
        }};
    }
    match spec {
        "HMAC_224" => mac!(sha2::Sha224),
        "HMAC_256" => mac!(sha2::Sha256),
        "HMAC_384" => mac!(sha2::Sha384),
        _ => mac!(sha2::Sha512),
    }
}

/// Proves the KMS HMAC key holds `material`.
pub async fn prove_hmac(kms: &KmsClient, key_id: &str, spec: &str, material: &[u8]) {
    let msg = random_bytes(64);
    let theirs = kms_mac(kms, key_id, spec, &msg).await;
    assert_eq!(
        theirs,
        soft_hmac(spec, material, &msg),
        "KMS MAC equals the source key's MAC"
    );
}

/// Asserts the error body shape and status.
pub fn assert_error(status: StatusCode, body: &Value, want: u16, needle: &str) {
    assert_eq!(status.as_u16(), want, "status for {body}");
    assert!(body["code"].is_u64(), "code in {body}");
    assert!(
        body["codeDesc"]
            .as_str()
            .is_some_and(|s| s.starts_with("NCERR")),
        "codeDesc in {body}"
    );
    assert!(
        body["requestID"].as_str().is_some_and(|s| s.len() >= 32),
        "requestID in {body}"
    );
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(
        msg.to_lowercase().contains(&needle.to_lowercase()),
        "message `{msg}` should mention `{needle}`"
    );
}

/// After the daemon stopped: no key material any test used appears in its logs or its store
/// files, in raw, hex or base64 form.
pub fn assert_no_leak(bridge: &Bridge) {
    let secrets = world()
        .secrets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut haystacks: Vec<(String, Vec<u8>)> = vec![("logs".into(), bridge.logs())];
    match &bridge.postgres {
        // Everything the store holds, as pg_dump writes it (bytes in hex).
        Some((url, password)) => {
            let out = Command::new("pg_dump")
                .arg("--data-only")
                .arg(url)
                .env(
                    "PGPASSWORD",
                    std::fs::read_to_string(password).expect("password").trim(),
                )
                .output()
                .expect("pg_dump");
            assert!(
                out.status.success(),
                "pg_dump: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            haystacks.push((format!("the store at {url}"), out.stdout));
        }
        None => {
            for entry in
                std::fs::read_dir(bridge.db_path.parent().expect("state dir")).expect("state dir")
            {
                let p = entry.expect("entry").path();
                haystacks.push((
                    p.display().to_string(),
                    std::fs::read(&p).unwrap_or_default(),
                ));
            }
        }
    }
    let logs = bridge.logs();
    for pin in [USER_PIN, SO_PIN] {
        assert!(
            !logs.windows(pin.len()).any(|w| w == pin.as_bytes()),
            "a PIN appears in the logs"
        );
    }
    for (name, hay) in &haystacks {
        assert_no_material_in(name, hay, &secrets);
    }
}

/// None of `secrets` appears in `hay`, raw, hex or base64.
pub fn assert_no_material_in(name: &str, hay: &[u8], secrets: &[Vec<u8>]) {
    use base64::Engine;
    for s in secrets {
        assert!(s.len() >= 16, "only real key material is checked");
        let forms = [
            s.clone(),
            hex::encode(s).into_bytes(),
            hex::encode_upper(s).into_bytes(),
            base64::engine::general_purpose::STANDARD
                .encode(s)
                .into_bytes(),
        ];
        for f in &forms {
            assert!(
                !hay.windows(f.len()).any(|w| w == f.as_slice()),
                "key material found in {name}"
            );
        }
    }
}

/// Every piece of key material the tests used so far.
pub fn remembered() -> Vec<Vec<u8>> {
    world()
        .secrets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

pub fn write_file(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(text.as_bytes()).expect("write");
}

/// A fresh private key made by OpenSSL, as PKCS#8 DER; its secret parts are remembered for
/// the leak checks.
pub fn openssl_key(kind: PrivateKind) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("dir");
    let raw = dir.path().join("k.der");
    let p8 = dir.path().join("k8.der");
    let mut keygen = Command::new("openssl");
    keygen.arg("genpkey");
    match (kind.rsa_bits(), kind.curve()) {
        (Some(bits), _) => {
            keygen.args([
                "-algorithm",
                "RSA",
                "-pkeyopt",
                &format!("rsa_keygen_bits:{bits}"),
            ]);
        }
        (None, Some(c)) => {
            let name = match c {
                Curve::P256 => "P-256",
                Curve::P384 => "P-384",
                Curve::P521 => "P-521",
                Curve::Secp256k1 => "secp256k1",
            };
            keygen.args([
                "-algorithm",
                "EC",
                "-pkeyopt",
                &format!("ec_paramgen_curve:{name}"),
            ]);
        }
        _ => unreachable!("every kind is RSA or EC"),
    }
    let out = keygen
        .args(["-outform", "DER", "-out"])
        .arg(&raw)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("openssl")
        .args([
            "pkcs8", "-topk8", "-nocrypt", "-inform", "DER", "-outform", "DER", "-in",
        ])
        .arg(&raw)
        .arg("-out")
        .arg(&p8)
        .output()
        .expect("openssl pkcs8");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let der = std::fs::read(&p8).expect("key");
    remember(&der);
    match PrivateMaterial::from_pkcs8_der(&der).expect("openssl key parses") {
        PrivateMaterial::Rsa(k) => {
            use rsa::traits::PrivateKeyParts;
            remember(&k.d().to_bytes_be());
        }
        PrivateMaterial::Ec { scalar, .. } => remember(&scalar),
    }
    der
}

pub fn material(der: &[u8]) -> PrivateMaterial {
    PrivateMaterial::from_pkcs8_der(der).expect("PKCS#8")
}

pub fn pkcs8_pem(der: &[u8]) -> String {
    pkcs8::der::pem::encode_string("PRIVATE KEY", pkcs8::LineEnding::LF, der).expect("pem")
}

/// A private key with known value in a token (as an HSM administrator would import one).
pub fn put_private(token: &str, label: &str, der: &[u8], extractable: bool) -> Vec<u8> {
    let m = material(der);
    let kind = m.kind().expect("kind");
    let s = world().session(token);
    let id: [u8; 8] = rand::random();
    let mut t = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(kind.key_type()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(extractable),
        Attribute::Sign(true),
        Attribute::Decrypt(kind.rsa_bits().is_some()),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    t.extend(m.components());
    s.create_object(&t)
        .unwrap_or_else(|e| panic!("C_CreateObject ({kind}): {e}"));
    id.to_vec()
}

/// An EC private key in a token with exactly this CKA_VALUE (a raw scalar, of any length).
pub fn put_ec_value(token: &str, label: &str, kind: PrivateKind, value: &[u8]) {
    let curve = kind.curve().expect("an EC kind");
    let s = world().session(token);
    let t = vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(kind.key_type()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(true),
        Attribute::Sign(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::EcParams(curve.ec_params().to_vec()),
        Attribute::Value(value.to_vec()),
    ];
    s.create_object(&t)
        .unwrap_or_else(|e| panic!("C_CreateObject ({kind}): {e}"));
}

/// The key in KMS is the source key: same public key, and a KMS signature verifies with it
/// (for an RSA encryption key: KMS decrypts what the source key's public half encrypted;
/// LocalStack's Encrypt is symmetric whatever the key, so the other direction proves nothing).
pub async fn prove_private(kms: &KmsClient, key_id: &str, usage: &str, source: &PrivateMaterial) {
    use aws_sdk_kms::primitives::Blob;
    let spki = source.public_spki_der().expect("spki");
    let theirs = kms
        .get_public_key()
        .key_id(key_id)
        .send()
        .await
        .expect("KMS GetPublicKey");
    assert_eq!(
        theirs.public_key().expect("public key").as_ref(),
        spki.as_slice(),
        "KMS holds the source key's public key"
    );
    if usage == "ENCRYPT_DECRYPT" {
        use rsa::pkcs8::DecodePublicKey;
        let msg = random_bytes(57);
        let public = rsa::RsaPublicKey::from_public_key_der(&spki).expect("rsa spki");
        let ct = public
            .encrypt(
                &mut rand::thread_rng(),
                rsa::Oaep::new::<sha2::Sha256>(),
                &msg,
            )
            .expect("OAEP encrypt");
        let out = kms
            .decrypt()
            .key_id(key_id)
            .encryption_algorithm(aws_sdk_kms::types::EncryptionAlgorithmSpec::RsaesOaepSha256)
            .ciphertext_blob(Blob::new(ct))
            .send()
            .await
            .expect("KMS Decrypt");
        assert_eq!(
            out.plaintext().expect("plaintext").as_ref(),
            msg.as_slice(),
            "KMS decrypts what the source key's public half encrypted"
        );
        return;
    }
    prove_signature(kms, key_id, &spki, source.kind().expect("kind")).await;
}

/// A KMS signature verifies with `spki`, the source key's public key.
pub async fn prove_signature(kms: &KmsClient, key_id: &str, spki: &[u8], kind: PrivateKind) {
    use aws_sdk_kms::primitives::Blob;
    let msg = random_bytes(57);
    let alg = match kind.curve() {
        None => "RSASSA_PKCS1_V1_5_SHA_256",
        Some(Curve::P384) => "ECDSA_SHA_384",
        Some(Curve::P521) => "ECDSA_SHA_512",
        Some(_) => "ECDSA_SHA_256",
    };
    let sig = kms
        .sign()
        .key_id(key_id)
        .message(Blob::new(msg.clone()))
        .message_type(aws_sdk_kms::types::MessageType::Raw)
        .signing_algorithm(aws_sdk_kms::types::SigningAlgorithmSpec::from(alg))
        .send()
        .await
        .expect("KMS Sign");
    let sig = sig.signature().expect("signature").as_ref().to_vec();
    verify(spki, kind, &msg, &sig);
}

fn verify(spki: &[u8], kind: PrivateKind, msg: &[u8], sig: &[u8]) {
    use p256::pkcs8::DecodePublicKey;
    use signature::Verifier;
    match kind.curve() {
        None => {
            let k = rsa::RsaPublicKey::from_public_key_der(spki).expect("rsa spki");
            let vk = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(k);
            let s = rsa::pkcs1v15::Signature::try_from(sig).expect("signature");
            vk.verify(msg, &s)
                .expect("the KMS signature verifies with the source public key");
        }
        Some(curve) => {
            let ok = match curve {
                Curve::P256 => p256::ecdsa::VerifyingKey::from_public_key_der(spki)
                    .expect("p256")
                    .verify(msg, &p256::ecdsa::Signature::from_der(sig).expect("der"))
                    .is_ok(),
                Curve::P384 => p384::ecdsa::VerifyingKey::from_public_key_der(spki)
                    .expect("p384")
                    .verify(msg, &p384::ecdsa::Signature::from_der(sig).expect("der"))
                    .is_ok(),
                Curve::P521 => {
                    let pk = p521::PublicKey::from_public_key_der(spki).expect("p521");
                    let vk = p521::ecdsa::VerifyingKey::from_affine(*pk.as_affine()).expect("vk");
                    vk.verify(msg, &p521::ecdsa::Signature::from_der(sig).expect("der"))
                        .is_ok()
                }
                Curve::Secp256k1 => k256::ecdsa::VerifyingKey::from_public_key_der(spki)
                    .expect("k256")
                    .verify(msg, &k256::ecdsa::Signature::from_der(sig).expect("der"))
                    .is_ok(),
            };
            assert!(ok, "the KMS signature verifies with the source public key");
        }
    }
}

/// What the token's objects look like to the daemon: (token objects, session objects).
pub async fn object_counts(b: &Bridge) -> Vec<(String, u64, u64)> {
    let (s, v) = b.get("/api/v1/system/tokens").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().expect("name").to_owned(),
                t["objects"]["token"].as_u64().expect("token objects"),
                t["objects"]["session"].as_u64().expect("session objects"),
            )
        })
        .collect()
}

/// PyKMIP on loopback, standing in for a Data Security Manager; started on first use.
pub struct Kmip {
    pub port: u16,
    pub dir: PathBuf,
    _server: Mutex<(Child, ChildStdin)>,
}

static KMIP: OnceLock<Result<Kmip, String>> = OnceLock::new();

pub fn kmip() -> &'static Kmip {
    let w = world();
    once(&KMIP, "the KMIP server", || {
        let port = free_port();
        let dir = w.dir.path().join("kmip");
        std::fs::create_dir_all(&dir).expect("kmip dir");
        let (child, stdin) = run_ready(
            "kmip-server.sh",
            port,
            &dir,
            "the KMIP server did not start (is PyKMIP installed? run softhsm-test/install-deps.sh)",
        );
        Kmip {
            port,
            dir,
            _server: Mutex::new((child, stdin)),
        }
    })
}

/// Runs `softhsm-test/SCRIPT run PORT DIR` and waits for its "ready"; the script stops its
/// server when our end of its stdin closes (when this process ends).
fn run_ready(script: &str, port: u16, dir: &Path, failure: &str) -> (Child, ChildStdin) {
    let mut child = Command::new("bash")
        .arg(format!("{REPO}/softhsm-test/{script}"))
        .arg("run")
        .arg(port.to_string())
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {script}: {e}"));
    let stdin = child.stdin.take().expect("stdin");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("script output");
    assert_eq!(line.trim(), "ready", "{failure}; see {}", dir.display());
    (child, stdin)
}

impl Kmip {
    /// Registers and activates a symmetric key of known value; returns its unique identifier.
    pub fn register(&self, name: &str, algorithm: &str, value: &[u8], kek: bool) -> String {
        let d = self.dir.display().to_string();
        let mut cmd = Command::new("bash");
        cmd.arg(format!("{REPO}/softhsm-test/kmip-server.sh"))
            .arg("tool")
            .arg("127.0.0.1")
            .arg(self.port.to_string())
            .arg(format!("{d}/client.pem"))
            .arg(format!("{d}/client.key"))
            .arg(format!("{d}/ca.pem"))
            .arg("register")
            .arg(name)
            .arg(algorithm)
            .arg(hex::encode(value));
        if kek {
            cmd.arg("kek");
        }
        let out = cmd.output().expect("kmip-tool");
        assert!(
            out.status.success(),
            "kmip-tool: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_owned()
    }

    /// The `[[dsm]]` section for a bridge that reaches this server.
    pub fn dsm_toml(&self, name: &str, kek_name: &str, kek_label: &str, port: u16) -> String {
        let d = self.dir.display();
        format!(
            r#"
[[dsm]]
name = "{name}"
host = "127.0.0.1"
port = {port}
client_cert_file = "{d}/client.pem"
client_key_file = "{d}/client.key"
ca_file = "{d}/ca.pem"
wrapping = "aes-kw"
kek_name = "{kek_name}"
kek_label = "{kek_label}"
timeout_secs = 10
"#
        )
    }
}

/// A key-encryption key of known value in a token (it may unwrap, never leave).
pub fn put_kek(token: &str, label: &str, value: &[u8]) {
    let s = world().session(token);
    s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Value(value.to_vec()),
    ])
    .expect("C_CreateObject (KEK)");
}
