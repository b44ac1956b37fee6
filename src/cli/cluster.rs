//! `estafette cluster status` and `estafette cluster layout apply`.

use clap::Subcommand;

use super::node::ask;
use super::NodeSelector;
use crate::server::admin::{Request, Response};
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
        "layout version {} (reads from {}{}), replication factor {}, {} ({}/{} partitions with quorum)",
        s.layout_version,
        s.read_version,
        if s.read_version < s.layout_version { ", syncing" } else { "" },
        s.replication_factor,
        s.health,
        s.partitions_with_quorum,
        s.partitions
    );
    let _ = writeln!(
        out,
        "{:<12} {:<12} {:>10} {:<22} {:<5} {:<9} {:>9}  {}",
        "NAME", "REGION", "CAPACITY", "ADDRESS", "STATE", "SERVING", "RTT", "ID"
    );
    for n in &s.nodes {
        let rtt = match (n.this_node, n.rtt_ms) {
            (true, _) => "(this)".to_string(),
            (false, Some(ms)) => format!("{ms:.2} ms"),
            (false, None) => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<12} {:<12} {:>10} {:<22} {:<5} {:<9} {:>9}  {}",
            n.name.as_deref().unwrap_or("?"),
            n.region.as_deref().unwrap_or("(none)"),
            n.capacity.map(|c| bytesize::ByteSize(c).to_string()).unwrap_or_else(|| "-".into()),
            n.addr.as_deref().unwrap_or("-"),
            if n.up { "up" } else { "DOWN" },
            match n.ready {
                Some(true) => "ready",
                Some(false) => "starting",
                None => "-",
            },
            rtt,
            &n.id[..16],
        );
    }
    out
}
