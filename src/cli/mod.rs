//! The command line: parsing (clap) and the admin commands. Each command
//! runs the layers below; none holds logic of its own beyond presentation.

mod bench;
mod bench_imap;
mod cluster;
mod dev;
mod node;
mod user;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::Config;

#[derive(Parser)]
#[command(name = "estafette", version, about = "Multi-region encrypted IMAP + LMTP mail server on embedded Garage")]
struct Cli {
    /// Log debug messages too.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node from a configuration file.
    Server {
        #[arg(short, long, default_value = "/etc/estafette/estafette.toml")]
        config: PathBuf,
    },
    /// Run a local appliance with no configuration: one node, or one node
    /// per region as separate processes on 127.0.0.1, 127.0.0.2, ...
    Dev(dev::DevArgs),
    /// Drive the WAN emulator of `estafette dev --regions N`: cut a link
    /// (`cut 1 3`, one direction: `cut 1>3`), `heal [A B]`, `rtt MS`,
    /// `delay A>B MS`, `show`.
    Wan {
        /// The dev appliance's data directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(required = true, num_args = 1.., value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Configuration file tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Cluster administration (talks to a running node).
    Cluster {
        #[command(subcommand)]
        command: cluster::ClusterCommand,
    },
    /// User administration (talks to a running node).
    User {
        #[command(subcommand)]
        command: user::UserCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a configuration file and report the first problem.
    Check { file: PathBuf },
}

/// How admin commands find the node to talk to.
#[derive(Args, Clone)]
pub struct NodeSelector {
    /// The node's configuration file.
    #[arg(long, conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// A dev appliance's data directory (DIR/node-<i> for each node).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("estafette: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Server { config } => {
                let config = Config::load(&config).map_err(|e| e.to_string())?;
                crate::server::run(config).await.map_err(|e| e.to_string())
            }
            Command::Dev(args) => dev::run(args).await,
            Command::Wan { data_dir, command } => {
                let dir = match data_dir {
                    Some(d) => d,
                    None => dev::default_data_dir()?,
                };
                let state = crate::wan::control::call(&dir.join("wan.sock"), &command.join(" ")).await?;
                println!("{state}");
                Ok(())
            }
            Command::Config { command: ConfigCommand::Check { file } } => {
                let c = Config::load(&file).map_err(|e| e.to_string())?;
                c.rpc_secret().map_err(|e| e.to_string())?;
                println!(
                    "{}: ok (node `{}` in `{}`, {} node(s) in the layout, replication factor {})",
                    file.display(),
                    c.node.name,
                    c.node.region,
                    c.cluster.nodes.len(),
                    c.cluster.replication_factor
                );
                Ok(())
            }
            Command::Cluster { command } => cluster::run(command).await,
            Command::User { command } => user::run(command).await,
            Command::Bench { command } => bench::run(command).await,
        }
    });
    // Garage's workers may still be winding down; do not wait for them.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("estafette: {e}");
            ExitCode::FAILURE
        }
    }
}
