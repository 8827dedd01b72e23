//! `heyblue`: the Hey Blue! server and its tools.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use heyblue::config::Settings;
use heyblue::geo::ZipTable;
use heyblue::http::auth::Auth;
use heyblue::protocol::Role;

#[derive(Parser)]
#[command(name = "heyblue", version, about = "Hey Blue! real-time server")]
struct Cli {
    /// Overlay config file (on top of the embedded config/default.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server.
    Serve {
        /// Listen address, e.g. 127.0.0.1:8080.
        #[arg(long)]
        bind: Option<String>,
        /// sqlite:// or postgres:// URL.
        #[arg(long)]
        database_url: Option<String>,
        /// Join the cluster at this NATS URL (nats://HOST:PORT); without it the node runs alone.
        #[arg(long)]
        cluster_url: Option<String>,
        /// This node's member id in the cluster.
        #[arg(long)]
        node_id: Option<String>,
        /// The URL phones and other nodes reach this node at (http://HOST:PORT).
        #[arg(long)]
        advertise_url: Option<String>,
        /// PEM certificate chain: serve HTTPS and WSS (with --tls-key).
        #[arg(long)]
        tls_cert: Option<String>,
        /// PEM private key of --tls-cert.
        #[arg(long)]
        tls_key: Option<String>,
    },
    /// Create or update the database schema, then exit.
    Migrate {
        /// sqlite:// or postgres:// URL.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Import officers, retailers, offers or charities from a CSV or JSON file (the same
    /// path as POST /admin/v1/import/{kind}); prints the report as JSON.
    Import {
        /// officers, retailers, offers or charities.
        kind: String,
        /// The file: CSV with a header row, or a JSON array (by extension, else sniffed).
        file: PathBuf,
        /// sqlite:// or postgres:// URL.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Award every account the trophies the configured rules give it and it does not hold
    /// (after the rules changed); prints the accounts evaluated and the trophies awarded.
    /// A running server publishes their events.
    Trophies {
        /// `replay`.
        #[arg(value_parser = ["replay"])]
        action: String,
        /// sqlite:// or postgres:// URL.
        #[arg(long)]
        database_url: Option<String>,
    },
    /// Print a signed development token.
    Token {
        /// officer, citizen or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Account id.
        #[arg(long)]
        sub: String,
        /// Display name.
        #[arg(long)]
        name: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "officer" => Ok(Role::Officer),
        "citizen" => Ok(Role::Citizen),
        "admin" => Ok(Role::Admin),
        "retailer" => Ok(Role::Retailer),
        _ => Err("role is officer, citizen, admin or retailer".into()),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            // A configuration that cannot be used is a usage error: exit 2, naming the key.
            eprintln!("heyblue: configuration: {e}");
            std::process::exit(2);
        }
    };
    match cli.cmd {
        Cmd::Token {
            role,
            sub,
            name,
            ttl,
        } => {
            let auth = Auth::new(settings.auth.jwt_secret.expose());
            println!(
                "{}",
                auth.mint(role, &sub, name.as_deref(), Duration::from_secs(ttl))
            );
            Ok(())
        }
        Cmd::Migrate { database_url } => {
            let url = database_url.unwrap_or(settings.database.url);
            tokio::runtime::Runtime::new()?.block_on(async {
                let store = heyblue::store::Store::connect(&url).await?;
                store.migrate().await?;
                store.close().await?;
                println!("migrated {}", heyblue::server::redact(&url));
                anyhow::Ok(())
            })
        }
        Cmd::Trophies {
            action: _,
            database_url,
        } => {
            let url = database_url.unwrap_or(settings.database.url);
            tokio::runtime::Runtime::new()?.block_on(async {
                let store = heyblue::store::Store::connect(&url).await?;
                store.migrate().await?;
                let replayed = store.replay_trophies(&settings.trophies.rules).await;
                store.close().await?;
                let (accounts, awarded) = replayed?;
                println!(
                    "{}",
                    serde_json::json!({"accounts": accounts, "awarded": awarded})
                );
                anyhow::Ok(())
            })
        }
        Cmd::Import {
            kind,
            file,
            database_url,
        } => {
            let kind = heyblue::import::Kind::parse(&kind)
                .context("kind is officers, retailers, offers or charities")?;
            let body =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let csv = match file.extension().and_then(|e| e.to_str()) {
                Some("csv") => Some(true),
                Some("json") => Some(false),
                _ => None,
            };
            let url = database_url.unwrap_or(settings.database.url);
            tokio::runtime::Runtime::new()?.block_on(async {
                let store = heyblue::store::Store::connect(&url).await?;
                store.migrate().await?;
                let limits = heyblue::import::ImportLimits::from_settings(&settings.limits);
                let report = store
                    .import_file(kind, body.into(), csv, limits, None)
                    .await;
                store.close().await?;
                let report = report?.map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                println!("{}", serde_json::to_string_pretty(&report)?);
                anyhow::Ok(())
            })
        }
        Cmd::Serve {
            bind,
            database_url,
            cluster_url,
            node_id,
            advertise_url,
            tls_cert,
            tls_key,
        } => {
            if let Some(c) = tls_cert {
                settings.server.tls_cert = c;
            }
            if let Some(k) = tls_key {
                settings.server.tls_key = k;
            }
            if let Some(b) = bind {
                settings.server.bind = b;
            }
            if let Some(u) = database_url {
                settings.database.url = u;
            }
            if let Some(u) = cluster_url {
                settings.cluster.nats_url = u;
            }
            if let Some(n) = node_id {
                settings.cluster.node_id = n;
            }
            if let Some(u) = advertise_url {
                settings.cluster.advertise_url = u;
            }
            if !settings.cluster.node_id.is_empty() {
                settings.server.node_id = settings.cluster.node_id.clone();
            }
            // Flags can make a valid file invalid (a cluster URL beside an SQLite store).
            if let Err(e) = settings.validate() {
                eprintln!("heyblue: configuration: {e}");
                std::process::exit(2);
            }
            // Logs on stderr: stdout carries the one `listening on` line scripts read.
            let logs = tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                );
            if settings.log.format == "json" {
                logs.json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .init();
            } else {
                logs.init();
            }
            tokio::runtime::Runtime::new()?.block_on(serve(settings))
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    raise_fd_limit();
    let zips = Arc::new(ZipTable::embedded());
    tracing::info!(zips = zips.len(), "zip table loaded");
    let running = heyblue::server::start(settings, zips).await?;
    // One line on stdout with the bound address (`--bind 127.0.0.1:0` picks a free port;
    // scripts and tests read it here instead of guessing a free port beforehand).
    let scheme = if running.ctx().settings.server.tls_cert.is_empty() {
        "http"
    } else {
        "https"
    };
    println!("listening on {scheme}://{}", running.addr);
    shutdown_signal().await;
    tracing::info!("shutdown signal: closing sessions");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for SIGINT: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Every socket is a file descriptor: take the hard limit as the soft one.
fn raise_fd_limit() {
    match rlimit::Resource::NOFILE.get() {
        Ok((soft, hard)) if soft < hard => match rlimit::Resource::NOFILE.set(hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(soft, "cannot raise the open-file limit: {e}"),
        },
        Ok((soft, _)) => tracing::info!(limit = soft, "open-file limit"),
        Err(e) => tracing::warn!("cannot read the open-file limit: {e}"),
    }
}
