use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hsm_bridge::config::Config;

/// Uploads keys into AWS KMS while their plaintext never leaves a PKCS#11 token.
#[derive(Parser)]
#[command(name = "hsm-bridge", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: self-test the tokens, then serve the API.
    Serve {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Open every configured token, run its self-test and print what it proved.
    Probe {
        #[arg(long, short)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a Bearer token signed with the configured key.
    Token {
        #[arg(long, short)]
        config: PathBuf,
        /// The subject (user name) of the token.
        #[arg(long)]
        user: String,
        /// A group the token carries in `cust.groups` (repeat for several).
        #[arg(long = "group", required = true)]
        groups: Vec<String>,
        /// Lifetime in seconds (default: auth.token_ttl_secs).
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Check the configuration and exit.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Read a password on standard input and print its Argon2id hash for `[[users]]`.
    HashPassword,
    /// Submit a bulk upload job (JSON: `items`, or `selector` and `targets`) to the running
    /// daemon; with --follow, show its progress until it ends. Exits non-zero if an item failed
    /// or the job was cancelled.
    UploadJob {
        #[arg(long, short)]
        config: PathBuf,
        /// The job, as `POST /api/v1/cckm/aws/upload-jobs` takes it.
        #[arg(long)]
        file: PathBuf,
        /// Show a progress bar with rate and ETA until the job ends.
        #[arg(long)]
        follow: bool,
        /// The daemon's address (default: server.address_file, else server.listen).
        #[arg(long)]
        url: Option<String>,
        /// The CA that signed the daemon's certificate (default: server.tls_cert_file).
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The user named in the token (and the audit log).
        #[arg(long, default_value = "hsm-bridge-cli")]
        user: String,
    },
    /// The audit log.
    Audit {
        #[command(subcommand)]
        action: AuditCommand,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the whole hash chain and every seal (with the bridge token's MAC key); names the
    /// first entry that was altered or removed. Exits non-zero if the trail is broken.
    Verify {
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("hsm-bridge: {e}");
        ExitCode::from(2)
    })
}

fn init_logging(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.logging.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.logging.json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// glibc gives each thread that allocates its own arena (up to eight per core), each kept
/// at its high-water mark: with the blocking pool's threads that is most of the daemon's
/// memory under load. Two arenas serve a daemon whose threads mostly wait.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("hsm-bridge: cannot start the runtime: {e}");
            ExitCode::FAILURE
        })
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg);
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(hsm_bridge::http::server::serve(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("hsm-bridge: {e}");
                    ExitCode::from(e.exit_status())
                }
            }
        }
        Command::Probe { config, json } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg);
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            match rt.block_on(hsm_bridge::probe::run(&cfg)) {
                Ok((report, all_ok)) => {
                    if json {
                        println!("{report:#}");
                    } else {
                        print!("{}", hsm_bridge::probe::render(&report));
                    }
                    if all_ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("hsm-bridge: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Token {
            config,
            user,
            groups,
            ttl,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let ttl = ttl.unwrap_or(cfg.auth.token_ttl_secs);
            match hsm_bridge::http::auth::mint(&cfg.auth, &user, &groups, ttl) {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hsm-bridge: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Audit {
            action: AuditCommand::Verify { config },
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg);
            match hsm_bridge::audit::verify_configured(&cfg) {
                Ok(hsm_bridge::audit::Verdict::Intact {
                    entries,
                    seals,
                    last_sealed,
                    others,
                }) => {
                    println!(
                        "audit trail intact: {entries} entries, {seals} seals{}",
                        last_sealed
                            .map(|s| format!(", the last one over entry {s}"))
                            .unwrap_or_default()
                    );
                    if others > 0 {
                        println!(
                            "{others} of the seals were made by other bridges of the store: their MACs are checked by `audit verify` on those bridges (each with its own node_name)"
                        );
                    }
                    ExitCode::SUCCESS
                }
                Ok(hsm_bridge::audit::Verdict::Broken { seq, why }) => {
                    println!("audit trail BROKEN at entry {seq}: {why}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("hsm-bridge: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::UploadJob {
            config,
            file,
            follow,
            url,
            ca,
            user,
        } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(code) => return code,
            };
            let args = hsm_bridge::client::UploadJobArgs {
                file: &file,
                follow,
                url: url.as_deref(),
                ca: ca.as_deref(),
                user: &user,
            };
            match rt.block_on(hsm_bridge::client::upload_job(&cfg, args)) {
                Ok(job) => {
                    let n = |k: &str| job[k].as_u64().unwrap_or(0);
                    println!(
                        "upload job {}: {}, {} completed, {} failed, {} cancelled of {}",
                        job["id"].as_str().unwrap_or_default(),
                        job["status"].as_str().unwrap_or_default(),
                        n("completed"),
                        n("failed"),
                        n("cancelled"),
                        n("total")
                    );
                    if follow && (n("failed") > 0 || job["status"] == "cancelled") {
                        ExitCode::FAILURE
                    } else {
                        ExitCode::SUCCESS
                    }
                }
                Err(e) => {
                    eprintln!("hsm-bridge: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::HashPassword => {
            use argon2::PasswordHasher;
            use argon2::password_hash::SaltString;
            use zeroize::Zeroize;
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() || line.trim_end().is_empty() {
                eprintln!("hsm-bridge: give the password on standard input");
                return ExitCode::from(2);
            }
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            let hashed = argon2::Argon2::default()
                .hash_password(line.trim_end_matches(['\n', '\r']).as_bytes(), &salt)
                .map(|h| h.to_string());
            line.zeroize();
            match hashed {
                Ok(h) => {
                    println!("{h}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("hsm-bridge: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { config } => match load(&config) {
            Ok(_) => {
                println!("hsm-bridge: {} is valid", config.display());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
    }
}
