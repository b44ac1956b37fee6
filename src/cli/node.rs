//! Finding a running node and sending it an admin request.

use std::path::PathBuf;

use super::NodeSelector;
use crate::config::Config;
use crate::server::admin::{self, Request, Response};

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
pub async fn ask(sel: &NodeSelector, req: Request) -> Result<Response, String> {
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

