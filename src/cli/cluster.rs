//! `estafette cluster status` and `estafette cluster layout apply`.

use std::path::PathBuf;

use clap::Subcommand;

use super::NodeSelector;
use crate::config::Config;
use crate::server::admin::{self, Request, Response};
use crate::storage::ClusterStatus;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Nodes, regions, capacities, who is up, round-trip times, layout version.
    Status {
        #[command(flatten)]
        node: NodeSelector,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Cluster layout commands.
    Layout {
        #[command(subcommand)]
        command: LayoutCommand,
    },
}

#[derive(Subcommand)]
pub enum LayoutCommand {
    /// Make the cluster layout match the configuration's `cluster.nodes`.
    Apply {
        #[command(flatten)]
        node: NodeSelector,
    },
}

/// The admin sockets to try, in order, for a selector.
fn sockets(sel: &NodeSelector) -> Result<Vec<PathBuf>, String> {
    if let Some(c) = &sel.config {
        let config = Config::load(c).map_err(|e| e.to_string())?;
        return Ok(vec![config.admin_socket()]);
    }
    let dir = match &sel.data_dir {
        Some(d) => d.clone(),
        None => super::dev::default_data_dir()?,
    };
    let mut found: Vec<PathBuf> = (1..=16)
        .map(|i| super::dev::node_dir(&dir, i).join("meta").join("admin.sock"))
        .filter(|p| p.exists())
        .collect();
    if found.is_empty() {
        found.push(super::dev::node_dir(&dir, 1).join("meta").join("admin.sock"));
    }
    Ok(found)
}

/// Sends `req` to the first node that answers.
async fn ask(sel: &NodeSelector, req: Request) -> Result<Response, String> {
    let mut last = String::from("no node found");
    for path in sockets(sel)? {
        match admin::call(&path, &req).await {
            Ok(r) => return Ok(r),
            Err(e @ admin::AdminError::Remote(_)) => return Err(e.to_string()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

pub async fn run(cmd: ClusterCommand) -> Result<(), String> {
    match cmd {
        ClusterCommand::Status { node, json } => match ask(&node, Request::Status).await? {
            Response::Status(s) if json => {
                println!("{}", serde_json::to_string_pretty(&s).map_err(|e| e.to_string())?);
                Ok(())
            }
            Response::Status(s) => {
                print!("{}", render_status(&s));
                Ok(())
            }
            other => Err(format!("unexpected answer: {other:?}")),
        },
        ClusterCommand::Layout { command: LayoutCommand::Apply { node } } => {
            match ask(&node, Request::LayoutApply).await? {
                Response::LayoutApplied { version: Some(v) } => {
                    println!("layout version {v} applied");
                    Ok(())
                }
                Response::LayoutApplied { version: None } => {
                    println!("the layout already matches the configuration");
                    Ok(())
                }
                other => Err(format!("unexpected answer: {other:?}")),
            }
        }
    }
}

/// The human form of `cluster status`.
pub fn render_status(s: &ClusterStatus) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "layout version {}, replication factor {}, {} ({}/{} partitions with quorum)",
        s.layout_version, s.replication_factor, s.health, s.partitions_with_quorum, s.partitions
    );
    let _ = writeln!(
        out,
        "{:<12} {:<12} {:>10} {:<22} {:<5} {:>9}  {}",
        "NAME", "REGION", "CAPACITY", "ADDRESS", "STATE", "RTT", "ID"
    );
    for n in &s.nodes {
        let rtt = match (n.this_node, n.rtt_ms) {
            (true, _) => "(this)".to_string(),
            (false, Some(ms)) => format!("{ms:.2} ms"),
            (false, None) => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<12} {:<12} {:>10} {:<22} {:<5} {:>9}  {}",
            n.name.as_deref().unwrap_or("?"),
            n.region.as_deref().unwrap_or("(none)"),
            n.capacity.map(|c| bytesize::ByteSize(c).to_string()).unwrap_or_else(|| "-".into()),
            n.addr.as_deref().unwrap_or("-"),
            if n.up { "up" } else { "DOWN" },
            rtt,
            &n.id[..16],
        );
    }
    out
}
