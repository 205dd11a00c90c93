//! One configured token: found by label or serial (never by slot number), with a bounded pool
//! of sessions logged in once. Every call runs on the blocking pool, off the async runtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;
use tokio::sync::Semaphore;

use super::error::TokenError;
use super::profile::{LoginUser, Profile};
use super::raw::Functions;
use super::restrictions::Restriction;
use super::selftest::Capabilities;
use crate::config::{TokenConfig, TokenRole};

/// Loads each PKCS#11 module once per process and initialises it once.
#[derive(Default)]
pub struct Modules {
    loaded: Mutex<HashMap<PathBuf, Pkcs11>>,
}

impl Modules {
    pub fn get(&self, path: &Path) -> Result<Pkcs11, TokenError> {
        let mut loaded = self
            .loaded
            .lock()
            .map_err(|_| TokenError::Worker("module registry poisoned".into()))?;
        if let Some(p) = loaded.get(path) {
            return Ok(p.clone());
        }
        let p = Pkcs11::new(path).map_err(|e| TokenError::Library {
            op: "loading the PKCS#11 module",
            message: format!("{}: {e}", path.display()),
        })?;
        match p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(TokenError::ck("C_Initialize")(e)),
        }
        loaded.insert(path.to_owned(), p.clone());
        Ok(p)
    }
}

#[derive(Debug, Clone)]
pub enum Locator {
    Label(String),
    Serial(String),
}

impl std::fmt::Display for Locator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Locator::Label(l) => write!(f, "label \"{l}\""),
            Locator::Serial(s) => write!(f, "serial \"{s}\""),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenIdent {
    pub label: String,
    pub serial: String,
    pub model: String,
    pub manufacturer: String,
}

fn find_slot(pkcs11: &Pkcs11, locator: &Locator) -> Result<(Slot, TokenIdent), TokenError> {
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(TokenError::ck("C_GetSlotList"))?;
    let mut found = Vec::new();
    for slot in slots {
        let info = match pkcs11.get_token_info(slot) {
            Ok(i) => i,
            // A slot whose token vanished between the two calls.
            Err(_) => continue,
        };
        let ident = TokenIdent {
            label: info.label().trim().to_owned(),
            serial: info.serial_number().trim().to_owned(),
            model: info.model().trim().to_owned(),
            manufacturer: info.manufacturer_id().trim().to_owned(),
        };
        let hit = match locator {
            Locator::Label(l) => ident.label == l.trim(),
            Locator::Serial(s) => ident.serial == s.trim(),
        };
        if hit {
            found.push((slot, ident));
        }
    }
    match found.len() {
        0 => Err(TokenError::TokenNotFound(locator.to_string())),
        1 => Ok(found.remove(0)),
        n => Err(TokenError::Refused(format!(
            "{n} tokens have {locator}; use token_serial to choose one"
        ))),
    }
}

pub struct Token {
    pub name: String,
    pub role: TokenRole,
    pub profile: Profile,
    pub module: PathBuf,
    pub kek_label: String,
    inner: Arc<Inner>,
    functions: Arc<Functions>,
    caps: OnceLock<Capabilities>,
    restrictions: OnceLock<Vec<Restriction>>,
}

struct Inner {
    name: String,
    pkcs11: Pkcs11,
    locator: Locator,
    place: Mutex<(Slot, TokenIdent)>,
    pin: SecretString,
    user_type: UserType,
    idle: Mutex<Vec<Session>>,
    permits: Arc<Semaphore>,
    sessions: usize,
    call_timeout: Duration,
    /// Set when the token refused the PIN: no login is ever attempted again (retrying a wrong
    /// PIN can lock or zeroize an HSM role).
    pin_refused: Mutex<Option<String>>,
}

impl Token {
    /// Opens the token of `cfg` (entry `index` of `[[tokens]]`); failures name the config key
    /// an operator has to look at.
    pub fn open(modules: &Modules, cfg: &TokenConfig, index: usize) -> Result<Self, TokenError> {
        let key = |k: &str| format!("config key `tokens[{index}].{k}`");
        let profile = crate::pkcs11::profile::Profile::load(&cfg.profile)
            .map_err(|e| TokenError::Refused(format!("{}: {e}", key("profile"))))?;
        let pin = cfg
            .pin_source()
            .read_string()
            .map_err(|e| TokenError::Refused(format!("{}: {e}", key("pin_file"))))?;
        let pkcs11 = modules
            .get(&cfg.module)
            .map_err(|e| TokenError::Refused(format!("{}: {e}", key("module"))))?;
        let (locator, locator_key) = match (&cfg.token_label, &cfg.token_serial) {
            (_, Some(s)) => (Locator::Serial(s.clone()), "token_serial"),
            (Some(l), None) => (Locator::Label(l.clone()), "token_label"),
            (None, None) => {
                return Err(TokenError::Refused(format!(
                    "{}: token_label or token_serial is required",
                    key("token_label")
                )));
            }
        };
        let functions = Functions::load(&cfg.module)
            .map_err(|e| TokenError::Refused(format!("{}: {e}", key("module"))))?;
        let place = find_slot(&pkcs11, &locator)
            .map_err(|e| TokenError::Refused(format!("{}: {e}", key(locator_key))))?;
        let login = match cfg.login_user.as_deref() {
            Some("crypto-user") => LoginUser::CryptoUser,
            Some(_) => LoginUser::User,
            None => profile.login_user,
        };
        let user_type = match login {
            LoginUser::User => UserType::User,
            LoginUser::CryptoUser => UserType::VendorExtension(0x8000_0001),
        };
        let inner = Arc::new(Inner {
            name: cfg.name.clone(),
            pkcs11,
            locator,
            place: Mutex::new(place),
            pin,
            user_type,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(cfg.sessions)),
            sessions: cfg.sessions,
            call_timeout: Duration::from_secs(cfg.call_timeout_secs),
            pin_refused: Mutex::new(None),
        });
        // Log in now so that a wrong PIN stops the start, not the first request.
        inner.with_session(|_| Ok(()), None).map_err(|e| match e {
            TokenError::PinRefused(why) => {
                TokenError::PinRefused(format!("{why} (see {})", key("pin_file")))
            }
            e => TokenError::Refused(format!("token {}: {e} (see {})", cfg.name, key("pin_file"))),
        })?;
        Ok(Token {
            name: cfg.name.clone(),
            role: cfg.role,
            profile,
            module: cfg.module.clone(),
            kek_label: cfg.kek_label.clone(),
            inner,
            functions: Arc::new(functions),
            caps: OnceLock::new(),
            restrictions: OnceLock::new(),
        })
    }

    pub fn ident(&self) -> TokenIdent {
        self.inner
            .place
            .lock()
            .map(|p| p.1.clone())
            .unwrap_or_else(|p| p.into_inner().1.clone())
    }

    /// The token module's function list, for the calls made without the `cryptoki` crate.
    pub fn functions(&self) -> &Arc<Functions> {
        &self.functions
    }

    pub fn set_capabilities(&self, caps: Capabilities) {
        let _ = self.caps.set(caps);
    }

    pub fn capabilities(&self) -> Option<&Capabilities> {
        self.caps.get()
    }

    pub fn set_restrictions(&self, found: Vec<Restriction>) {
        let _ = self.restrictions.set(found);
    }

    /// What the start-up check found about the restrictions on the bridge's own keys
    /// (bridge token only).
    pub fn restrictions(&self) -> &[Restriction] {
        self.restrictions.get().map(Vec::as_slice).unwrap_or(&[])
    }

    /// How many of the pool's sessions are in use now.
    pub fn sessions_in_use(&self) -> usize {
        self.inner
            .sessions
            .saturating_sub(self.inner.permits.available_permits())
    }

    /// Why the token is out of use for good (until the operator fixes it and restarts): the
    /// token refused the PIN.
    pub fn failure(&self) -> Option<String> {
        self.inner.pin_refused.lock().ok().and_then(|g| g.clone())
    }

    /// Runs `f` with a pooled, logged-in session on the blocking pool, within the token's
    /// call timeout (waiting for a free session included). A call that overruns is answered
    /// with `TokenError::Timeout`; when it returns at last, its session is closed rather than
    /// pooled, and its pool slot is given back only then.
    pub async fn run<T, F>(&self, f: F) -> Result<T, TokenError>
    where
        F: FnOnce(&Session) -> Result<T, TokenError> + Send + 'static,
        T: Send + 'static,
    {
        let inner = self.inner.clone();
        let abandoned = Arc::new(AtomicBool::new(false));
        let flag = abandoned.clone();
        let name = self.name.clone();
        let work = async move {
            let waited = std::time::Instant::now();
            let permit = inner
                .permits
                .clone()
                .acquire_owned()
                .await
                .map_err(|e| TokenError::Worker(e.to_string()))?;
            crate::metrics::get()
                .session_wait_seconds
                .get_or_create(&crate::metrics::TokenLabels { token: name })
                .observe(waited.elapsed().as_secs_f64());
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                inner.with_session(f, Some(&flag))
            })
            .await
            .map_err(|e| TokenError::Worker(e.to_string()))?
        };
        match tokio::time::timeout(self.inner.call_timeout, work).await {
            Ok(result) => result,
            Err(_) => {
                abandoned.store(true, Ordering::SeqCst);
                let secs = self.inner.call_timeout.as_secs();
                tracing::error!(token = %self.name, timeout_secs = secs, "a token call did not return in time; its session will be closed when it does");
                Err(TokenError::Timeout {
                    token: self.name.clone(),
                    secs,
                })
            }
        }
    }

    /// The same, for callers already on a blocking thread (start-up, CLI).
    pub fn run_blocking<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, TokenError>,
    ) -> Result<T, TokenError> {
        self.inner.with_session(f, None)
    }
}

impl Inner {
    fn with_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, TokenError>,
        abandoned: Option<&AtomicBool>,
    ) -> Result<T, TokenError> {
        let session = self.checkout()?;
        super::ops::take_destroy_failure();
        let result = f(&session);
        if abandoned.is_some_and(|a| a.load(Ordering::SeqCst)) {
            tracing::warn!(token = %self.name, "a token call that timed out has returned; its session is closed");
            drop(session);
            return result;
        }
        if super::ops::take_destroy_failure() {
            // Closing the session destroys whatever session objects it still holds.
            drop(session);
            return result;
        }
        match &result {
            Err(e) if e.poisons_session() => {
                drop(session);
                if e.needs_rediscovery() {
                    self.rediscover();
                }
            }
            _ => self.checkin(session),
        }
        result
    }

    fn checkout(&self) -> Result<Session, TokenError> {
        loop {
            let candidate = self.idle.lock().ok().and_then(|mut v| v.pop());
            let Some(s) = candidate else { break };
            match s.get_session_info().map(|i| i.session_state()) {
                Ok(SessionState::RoUser | SessionState::RwUser) => return Ok(s),
                // The token logged the application out behind our back (a reset, an HSM
                // timeout, another login state change): private keys would silently be
                // invisible, so log in again before the session is used.
                Ok(state) => {
                    tracing::warn!(token = %self.name, ?state, "a pooled session is no longer logged in; logging in again");
                    return self.login(s);
                }
                // A session the token closed behind our back is dropped, not reused.
                Err(_) => continue,
            }
        }
        let slot =
            self.place.lock().map(|p| p.0).map_err(|_| {
                TokenError::Worker(format!("token {}: slot state poisoned", self.name))
            })?;
        let session = match self.pkcs11.open_rw_session(slot) {
            Ok(s) => s,
            Err(e) => {
                let err = TokenError::ck("C_OpenSession")(e);
                if matches!(
                    err.rv(),
                    Some(
                        RvError::SlotIdInvalid | RvError::TokenNotPresent | RvError::DeviceRemoved
                    )
                ) {
                    self.rediscover();
                }
                return Err(err);
            }
        };
        self.login(session)
    }

    /// Logs `session` in, unless the token has refused the PIN before.
    fn login(&self, session: Session) -> Result<Session, TokenError> {
        if let Some(why) = self.pin_refused.lock().ok().and_then(|g| g.clone()) {
            return Err(TokenError::PinRefused(why));
        }
        match session.login(self.user_type, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
            Err(CkError::Pkcs11(
                rv @ (RvError::PinIncorrect
                | RvError::PinLocked
                | RvError::PinExpired
                | RvError::PinInvalid
                | RvError::PinLenRange),
                _,
            )) => {
                let why = format!(
                    "token {} refused the PIN ({rv:?}); it is not tried again: fix the PIN file and restart",
                    self.name
                );
                tracing::error!(token = %self.name, rv = ?rv, "the token refused the PIN; no further login will be attempted");
                if let Ok(mut g) = self.pin_refused.lock() {
                    *g = Some(why.clone());
                }
                Err(TokenError::PinRefused(why))
            }
            Err(e) => Err(TokenError::ck("C_Login")(e)),
        }
    }

    fn checkin(&self, session: Session) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(session);
        }
    }

    /// After a device error: forget every idle session and look the token up again, since
    /// its slot id may have changed.
    fn rediscover(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
        match find_slot(&self.pkcs11, &self.locator) {
            Ok(place) => {
                if let Ok(mut p) = self.place.lock() {
                    *p = place;
                }
                tracing::warn!(token = %self.name, "token looked up again after a device error");
            }
            Err(e) => tracing::error!(token = %self.name, error = %e, "token not found again"),
        }
    }
}
