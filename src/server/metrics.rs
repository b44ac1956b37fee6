//! The Prometheus endpoint: `GET /metrics` in the text exposition format.
//!
//! A deliberately tiny HTTP/1.1 responder (one request per connection,
//! bounded request size, a few gauges) rather than an HTTP framework: the
//! endpoint is scraped by one Prometheus and serves nothing else. It must
//! not grow into a general web server; an admin API would use a real one.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::storage::Node;

pub async fn serve(addr: SocketAddr, node: Arc<Node>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let node = node.clone();
            tokio::spawn(async move {
                let mut req = [0u8; 2048];
                let n = match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut req)).await {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
                let head = String::from_utf8_lossy(&req[..n]);
                let (status, body) = if head.starts_with("GET /metrics ") {
                    ("200 OK", render(&node).await)
                } else {
                    ("404 Not Found", "only GET /metrics is served here\n".to_string())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(resp.as_bytes()).await;
            });
        }
    }))
}

async fn render(node: &Node) -> String {
    let s = node.status().await;
    let mut out = String::new();
    let up = s.nodes.iter().filter(|n| n.up).count();
    let _ = writeln!(out, "# HELP estafette_layout_version Cluster layout version seen by this node.");
    let _ = writeln!(out, "# TYPE estafette_layout_version gauge");
    let _ = writeln!(out, "estafette_layout_version {}", s.layout_version);
    let _ = writeln!(out, "# HELP estafette_nodes_up Nodes this node is connected to (itself included).");
    let _ = writeln!(out, "# TYPE estafette_nodes_up gauge");
    let _ = writeln!(out, "estafette_nodes_up {up}");
    let _ = writeln!(out, "# HELP estafette_nodes_known Nodes in the layout or ever seen.");
    let _ = writeln!(out, "# TYPE estafette_nodes_known gauge");
    let _ = writeln!(out, "estafette_nodes_known {}", s.nodes.len());
    let _ = writeln!(out, "# HELP estafette_partitions_quorum Partitions for which a quorum of replicas is reachable.");
    let _ = writeln!(out, "# TYPE estafette_partitions_quorum gauge");
    let _ = writeln!(out, "estafette_partitions_quorum {}", s.partitions_with_quorum);
    let _ = writeln!(out, "# TYPE estafette_partitions gauge");
    let _ = writeln!(out, "estafette_partitions {}", s.partitions);
    let _ = writeln!(out, "# HELP estafette_peer_rtt_seconds Round-trip time to a peer over Estafette's RPC.");
    let _ = writeln!(out, "# TYPE estafette_peer_rtt_seconds gauge");
    for n in &s.nodes {
        if let Some(rtt) = n.rtt_ms {
            let name = n.name.as_deref().unwrap_or("?").replace(['"', '\\', '\n'], "_");
            let _ = writeln!(out, "estafette_peer_rtt_seconds{{peer=\"{name}\"}} {}", rtt / 1000.0);
        }
    }
    out
}
