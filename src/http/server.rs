//! The daemon: builds the state from the configuration, opens and self-tests the tokens,
//! listens (TLS with rustls, or plain HTTP on loopback when configured), reports readiness to
//! systemd, runs the cleaner, and shuts down gracefully on SIGTERM/SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;

use super::app;
use super::auth::Authenticator;
use super::state::AppState;
use crate::background::cleanup::Cleaner;
use crate::cckm::upload::{LiveAttempts, Uploader};
use crate::config::Config;
use crate::extcm::CmClient;
use crate::http::auth::Issuer;
use crate::http::auth_tokens::TokenService;
use crate::kmip::KmipClient;
use crate::kms::KmsRegistry;
use crate::pkcs11::TokenSet;
use crate::secrets::SecretSource;
use crate::store::Store;
use crate::tiers::Tiers;
use crate::tiers::dsm::{Dsm, DsmTier};
use crate::tiers::external_cm::ExternalCmTier;
use crate::tiers::hsm_luna::HsmLunaTier;
use crate::tiers::local::LocalTier;
use crate::vault::Vault;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Setup(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
    /// A token refused its PIN: restarting would only try the same PIN again.
    #[error("{0}")]
    PinRefused(String),
}

impl ServeError {
    /// The exit status: 78 (EX_CONFIG) when a restart cannot help (the unit's
    /// `RestartPreventExitStatus=78`), 1 otherwise.
    pub fn exit_status(&self) -> u8 {
        match self {
            ServeError::PinRefused(_) => 78,
            _ => 1,
        }
    }
}

fn tls_config(cfg: &Config) -> Result<rustls::ServerConfig, ServeError> {
    let (Some(cert), Some(key)) = (&cfg.server.tls_cert_file, &cfg.server.tls_key_file) else {
        return Err(ServeError::Setup(
            "config key `server.tls_cert_file`: required unless server.plaintext = true".into(),
        ));
    };
    let cert_pem = std::fs::read(cert).map_err(|e| {
        ServeError::Setup(format!(
            "config key `server.tls_cert_file`: cannot read {}: {e}",
            cert.display()
        ))
    })?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::Setup(format!("config key `server.tls_cert_file`: {e}")))?;
    if certs.is_empty() {
        return Err(ServeError::Setup(
            "config key `server.tls_cert_file`: no certificate in the file".into(),
        ));
    }
    let key_pem = SecretSource::new(key.to_string_lossy().into_owned())
        .read_bytes()
        .map_err(|e| ServeError::Setup(format!("config key `server.tls_key_file`: {e}")))?;
    let key = rustls_pemfile::private_key(&mut key_pem.expose_secret().as_slice())
        .map_err(|e| ServeError::Setup(format!("config key `server.tls_key_file`: {e}")))?
        .ok_or_else(|| {
            ServeError::Setup("config key `server.tls_key_file`: no private key in the file".into())
        })?;
    let mut sc = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ServeError::Setup(format!("config key `server.tls_key_file`: {e}")))?;
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(sc)
}

/// Keeps PINs and unwrapped secrets out of core dumps and away from same-user ptrace.
fn forbid_dumps() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) only changes this process's dumpable flag.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if rc != 0 {
        tracing::warn!("could not mark the process non-dumpable");
    }
}

/// The `store_meta` entry holding the vault KEK's check value.
const KEK_CHECK: &str = "vault_kek_check";

pub async fn serve(cfg: Config) -> Result<(), ServeError> {
    forbid_dumps();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tls = if cfg.server.plaintext {
        None
    } else {
        Some(tls_config(&cfg)?)
    };
    let auth =
        Authenticator::from_config(&cfg.auth).map_err(|e| ServeError::Setup(e.to_string()))?;
    let location = cfg.store.location().map_err(ServeError::Setup)?;
    let store = Store::open_at(location)
        .await
        .map_err(|e| ServeError::Setup(format!("{}: {e}", cfg.store.describe())))?;
    let kek_check = store
        .call(|c| crate::store::cluster::meta(c, KEK_CHECK))
        .await
        .map_err(|e| ServeError::Setup(format!("{}: {e}", cfg.store.describe())))?;
    let token_cfg = cfg.clone();
    let expected = kek_check.clone();
    let tokens =
        tokio::task::spawn_blocking(move || TokenSet::open(&token_cfg, expected.as_deref()))
            .await
            .map_err(|e| ServeError::Setup(e.to_string()))?
            .map_err(|e| match e {
                crate::pkcs11::TokenError::PinRefused(why) => ServeError::PinRefused(why),
                e => ServeError::Setup(e.to_string()),
            })?;
    // The first bridge to start records its KEK's check value; every later start (of any
    // bridge of the store) must match it.
    if let Some(have) = tokens.kek_check().map(str::to_owned) {
        let h = have.clone();
        let held = store
            .call(move |c| crate::store::cluster::meta_set_once(c, KEK_CHECK, &h))
            .await
            .map_err(|e| ServeError::Setup(format!("{}: {e}", cfg.store.describe())))?;
        if held != have {
            return Err(ServeError::Setup(format!(
                "token {}: its KEK is not the one the store's vault keys are wrapped under (check value {have}, the store holds {held}): give every bridge of the store the same KEK",
                tokens.vault().name
            )));
        }
        tracing::info!(kek_check = %have, "vault KEK matches the store");
    }
    let tokens = Arc::new(tokens);
    // A member of the cluster from here on: its store and its KEK are the cluster's.
    let membership = crate::background::cluster::Membership::from_config(&cfg.cluster);
    // One process per node name: on a shared store a second live one is refused.
    if store.dialect() == crate::store::Dialect::Postgres {
        membership
            .join(&store)
            .await
            .map_err(|e| ServeError::Setup(format!("{}: {e}", cfg.store.describe())))?;
    } else {
        membership
            .beat(&store)
            .await
            .map_err(|e| ServeError::Setup(format!("{}: {e}", cfg.store.describe())))?;
    }
    tracing::info!(node = %membership.node_id, backend = cfg.store.backend_name(), "store open");
    tokio::spawn(membership.clone().beat_forever(store.clone()));
    let cms = cfg
        .external_cm
        .iter()
        .enumerate()
        .map(|(i, c)| CmClient::new(c, i).map(Arc::new))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    let dsms = cfg
        .dsm
        .iter()
        .enumerate()
        .map(|(i, d)| {
            KmipClient::new(d, i).map(|client| {
                Arc::new(Dsm {
                    client,
                    cfg: d.clone(),
                })
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    let issuer = if cfg.users.is_empty() {
        None
    } else {
        Some(Issuer::from_config(&cfg.auth).map_err(|e| ServeError::Setup(e.to_string()))?)
    };
    let token_service = Arc::new(TokenService::new(
        issuer,
        cfg.users.clone(),
        cfg.auth.token_ttl_secs,
        cfg.auth.refresh_token_ttl_secs,
        crate::http::login_guard::LoginGuard::new(
            cfg.auth.lockout_after_failures,
            Duration::from_secs(cfg.auth.lockout_secs),
        ),
    ));
    let kms = Arc::new(KmsRegistry::new(&cfg.kms));
    let vault = Arc::new(Vault::new(tokens.vault().clone(), store.clone()));
    let live = LiveAttempts::default();
    let uploader = Arc::new(Uploader {
        kms: kms.clone(),
        store: store.clone(),
        tiers: Tiers {
            local: LocalTier::new(vault.clone()),
            hsm_luna: HsmLunaTier::new(tokens.sources().cloned().collect()),
            external_cm: ExternalCmTier::new(cms, tokens.vault().clone()),
            dsm: DsmTier::new(dsms, tokens.vault().clone()),
        },
        live: live.clone(),
        detailed_errors: cfg.logging.detailed_errors,
        allow_seconds: cfg.schedules.allow_seconds,
        node_id: membership.node_id.clone(),
        active: tokio::sync::Semaphore::new(cfg.server.max_active_uploads.max(1)),
    });
    let keys = Arc::new(crate::cckm::manage::KeyManager {
        uploader: uploader.clone(),
        vault: vault.clone(),
        schedules: cfg.schedules.clone(),
    });
    let sync = Arc::new(crate::background::sync::Synchronizer::new(
        keys.clone(),
        store.clone(),
        cfg.sync.keys_per_second,
        (cfg.sync.interval_secs > 0).then(|| Duration::from_secs(cfg.sync.interval_secs)),
        membership.clone(),
    ));
    tokio::spawn(sync.clone().run_forever());
    tokio::spawn(
        crate::background::schedules::Scheduler {
            keys: keys.clone(),
            cfg: cfg.schedules.clone(),
            store: store.clone(),
            membership: membership.clone(),
        }
        .run_forever(),
    );
    {
        let retention = Duration::from_secs(cfg.vault.deleted_retention_secs);
        tokio::spawn(crate::background::purge_deleted_vault_keys(
            vault.clone(),
            retention,
            retention.clamp(Duration::from_secs(1), Duration::from_secs(3600)),
        ));
    }
    let auditor = crate::audit::Auditor::new(
        store.clone(),
        tokens.vault().clone(),
        membership.node_id.clone(),
    );
    auditor
        .event(
            "hsm-bridge",
            "configuration-load",
            "success",
            "",
            serde_json::json!({
                "path": cfg.loaded_from.as_ref().map(|l| l.path.display().to_string()),
                "sha256": cfg.loaded_from.as_ref().map(|l| l.sha256.clone()),
                "tokens": cfg.tokens.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
                "kms": cfg.kms.iter().map(|k| k.name.clone()).collect::<Vec<_>>(),
            }),
        )
        .await;
    tokio::spawn(
        auditor
            .clone()
            .seal_forever(Duration::from_secs(cfg.audit.seal_interval_secs)),
    );
    let upload_jobs = Arc::new(crate::background::upload_jobs::JobRunner {
        uploader: uploader.clone(),
        store: store.clone(),
        cfg: cfg.jobs.clone(),
        auditor: auditor.clone(),
        wake: Arc::new(tokio::sync::Notify::new()),
        membership: membership.clone(),
    });
    tokio::spawn(upload_jobs.clone().run_forever());
    let state = AppState {
        auth: Arc::new(auth),
        auditor: auditor.clone(),
        uploader,
        keys,
        sync,
        upload_jobs,
        vault,
        store: store.clone(),
        kms: kms.clone(),
        tokens,
        token_service,
        export: Arc::new(cfg.export_policy()),
        detailed_errors: cfg.logging.detailed_errors,
    };
    if let Some(addr) = cfg.server.metrics_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Listen { addr, source })?;
        let bound = listener.local_addr()?;
        tracing::info!(addr = %bound, "metrics listening (loopback, no token)");
        let metrics_app = crate::http::metrics::loopback_app(state.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, metrics_app).await {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    let router = app(
        state,
        cfg.server.max_body_bytes,
        Duration::from_secs(cfg.server.request_timeout_secs),
    );

    let listener =
        std::net::TcpListener::bind(cfg.server.listen).map_err(|source| ServeError::Listen {
            addr: cfg.server.listen,
            source,
        })?;
    let addr = listener.local_addr()?;

    let cleaner = Cleaner {
        kms,
        store,
        live,
        membership: membership.clone(),
        interval: Duration::from_secs(cfg.cleanup.interval_secs),
        detailed_errors: cfg.logging.detailed_errors,
    };
    tokio::spawn(cleaner.run_forever());

    // Handlers in place before anyone is told the daemon listens: a SIGTERM right after
    // readiness must stop it gracefully, not by the signal's default action.
    let signals = shutdown_signals();
    let scheme = if tls.is_some() { "https" } else { "http" };
    if let Some(f) = &cfg.server.address_file {
        std::fs::write(f, format!("{scheme}://{addr}\n"))?;
    }
    tracing::info!(%addr, scheme, "listening");
    {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "hsm-bridge listening on {scheme}://{addr}");
        let _ = out.flush();
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        wait_for_signal(signals).await;
        tracing::info!("shutting down");
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
        shutdown.graceful_shutdown(Some(Duration::from_secs(10)));
    });
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    let header_timeout = Duration::from_secs(cfg.server.header_read_timeout_secs);
    let limit = crate::http::limits::LimitAcceptor::new(cfg.server.max_connections, header_timeout);
    let mut server = axum_server::from_tcp(listener)?;
    // HTTP/1 only: the protocol sniffing of the auto builder waits for a first byte before
    // any timeout runs, which would let an idle connection stay open for ever.
    let builder = server.http_builder();
    *builder = builder.clone().http1_only();
    builder
        .http1()
        .header_read_timeout(header_timeout)
        .max_headers(100);
    match tls {
        Some(sc) => {
            let rc = axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(sc));
            let tls = axum_server::tls_rustls::RustlsAcceptor::new(rc)
                .handshake_timeout(header_timeout)
                .acceptor(limit);
            server.acceptor(tls).handle(handle).serve(service).await?
        }
        None => server.acceptor(limit).handle(handle).serve(service).await?,
    }
    if let Err(e) = auditor.seal().await {
        tracing::error!(error = %e, "could not seal the audit log at shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}

type Signals = Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>;

fn shutdown_signals() -> Signals {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(term), Ok(int)) => Some((term, int)),
        _ => None,
    }
}

async fn wait_for_signal(signals: Signals) {
    let Some((mut term, mut int)) = signals else {
        // Without signal handlers the process still ends on SIGTERM's default action.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
