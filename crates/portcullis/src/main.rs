//! `portcullis`: the gateway (`serve`) and its admin CLI.
#![forbid(unsafe_code)]

mod admin_api;
mod balance;
mod cli;
mod config;
mod echo;
mod fetch;
mod gateway;
mod h1;
mod metrics;
mod proxy;
mod server;
mod sign_cli;
mod sink;
mod webhook_cli;
mod webhook_send;
mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the request path allocates many small, short-lived buffers (headers, bodies,
/// futures); glibc's malloc spent ~8 % of the gateway's CPU on them in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Portcullis: one binary that authenticates every caller of a REST API.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the gateway.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, env = "PORTCULLIS_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on (overrides `listen` in the file).
        #[arg(long, env = "PORTCULLIS_LISTEN")]
        listen: Option<SocketAddr>,
        /// Data directory (overrides `data_dir` in the file).
        #[arg(long, env = "PORTCULLIS_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Check the configuration and exit.
        #[arg(long)]
        check: bool,
    },
    /// Manage API keys through the admin API.
    Keys {
        #[command(flatten)]
        conn: cli::Conn,
        #[command(subcommand)]
        cmd: cli::KeysCmd,
    },
    /// Show the routes in force through the admin API.
    Routes {
        #[command(flatten)]
        conn: cli::Conn,
        #[command(subcommand)]
        cmd: cli::RoutesCmd,
    },
    /// Show the upstream groups and their targets' health through the admin API.
    Upstreams {
        #[command(flatten)]
        conn: cli::Conn,
        #[command(subcommand)]
        cmd: cli::UpstreamsCmd,
    },
    /// Register and manage OAuth clients through the admin API.
    Clients {
        #[command(flatten)]
        conn: cli::Conn,
        #[command(subcommand)]
        cmd: cli::ClientsCmd,
    },
    /// Issue and manage HMAC request-signing credentials through the admin API.
    Hmac {
        #[command(flatten)]
        conn: cli::Conn,
        #[command(subcommand)]
        cmd: cli::HmacCmd,
    },
    /// Show and rotate the keys tokens are signed with, through the admin API.
    SigningKeys {
        #[command(flatten)]
        conn: cli::Conn,
        #[command(subcommand)]
        cmd: cli::SigningKeysCmd,
    },
    /// Read and verify the audit trail through the admin API.
    Audit {
        #[command(flatten)]
        conn: cli::Conn,
        #[command(subcommand)]
        cmd: cli::AuditCmd,
    },
    /// Print the headers that sign a request (hmac, sigv4 or http_signature).
    Sign(sign_cli::SignArgs),
    /// Sign a request, send it and print the answer's body (exit 1 unless 2xx).
    Request(sign_cli::RequestArgs),
    /// Sign or verify a webhook (Stripe, GitHub, Standard Webhooks), and manage the
    /// endpoints Portcullis delivers its own events to (through the admin API).
    Webhook {
        #[command(subcommand)]
        cmd: sign_cli::WebhookCmd,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: log files and collectors get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // On one core (or when pinned to one), a single-threaded runtime avoids the work-stealing
    // machinery and its wake-ups between threads that have nothing to steal.
    let one_core = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_core {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<bool, String> = rt.block_on(async {
        match cli.cmd {
            Cmd::Serve {
                config,
                listen,
                data_dir,
                check,
            } => {
                let overrides = server::Overrides {
                    config,
                    listen,
                    data_dir,
                };
                let (cfg, digest) = server::load_config(&overrides).map_err(|e| e.0)?;
                if check {
                    // Files the configuration names are part of it.
                    proxy::Proxy::new(&cfg.proxy)?;
                    println!(
                        "configuration OK: {} routes, {} upstreams",
                        cfg.routes.len(),
                        cfg.upstreams.len()
                    );
                    return Ok(true);
                }
                server::serve(cfg, overrides, digest)
                    .await
                    .map(|()| true)
                    .map_err(|e| e.0)
            }
            Cmd::Keys { conn, cmd } => cli::keys(&conn, cmd).await.map(|()| true).map_err(|e| e.0),
            Cmd::Clients { conn, cmd } => cli::clients(&conn, cmd)
                .await
                .map(|()| true)
                .map_err(|e| e.0),
            Cmd::Hmac { conn, cmd } => cli::hmac(&conn, cmd).await.map(|()| true).map_err(|e| e.0),
            Cmd::SigningKeys { conn, cmd } => cli::signing_keys(&conn, cmd)
                .await
                .map(|()| true)
                .map_err(|e| e.0),
            Cmd::Upstreams { conn, cmd } => cli::upstreams(&conn, cmd)
                .await
                .map(|()| true)
                .map_err(|e| e.0),
            Cmd::Routes { conn, cmd } => cli::routes(&conn, cmd)
                .await
                .map(|()| true)
                .map_err(|e| e.0),
            Cmd::Audit { conn, cmd } => cli::audit(&conn, cmd).await.map_err(|e| e.0),
            Cmd::Sign(args) => sign_cli::sign(&args).map_err(|e| e.0),
            Cmd::Request(args) => sign_cli::request(&args).await.map_err(|e| e.0),
            Cmd::Webhook { cmd } => sign_cli::webhook_any(cmd).await.map_err(|e| e.0),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
