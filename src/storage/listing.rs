//! Enumerating what a user owns: their item partitions and their blobs.
//! Used for rare, whole-user operations (deleting a user, rotating their
//! master key), never on a request path.
//!
//! Partition listing reads Garage's K2V index counters, which are updated
//! asynchronously: a partition created in the last moments may be missing.
//! Callers that need completeness repeat until a pass finds nothing new.

use garage_model::s3::object_table::ObjectFilter;
use garage_table::{DeletedFilter, EnumerationOrder};

use super::{Store, StorageError, UserId};

const PAGE: usize = 1000;

impl Store {
    /// The names of the user's item partitions that hold live items.
    pub async fn list_partitions(&self, user: &UserId) -> Result<Vec<String>, StorageError> {
        let prefix = user.scoped("");
        let nodes = self
            .garage
            .system
            .cluster_layout()
            .all_nongateway_nodes()
            .map_err(StorageError::from)?
            .to_vec();
        let mut out = Vec::new();
        let mut start = Some(prefix.clone());
        loop {
            let page = self
                .garage
                .k2v
                .counter_table
                .table
                .get_range(
                    &self.bucket,
                    start.clone(),
                    Some((DeletedFilter::NotDeleted, nodes.clone())),
                    PAGE,
                    EnumerationOrder::Forward,
                )
                .await?;
            let full = page.len() == PAGE;
            for e in &page {
                if Some(&e.sk) == start.as_ref() && !out.is_empty() {
                    continue; // the page's first entry is the previous page's last
                }
                match e.sk.strip_prefix(&prefix) {
                    Some(name) => out.push(name.to_string()),
                    None => return Ok(out),
                }
            }
            match page.last() {
                Some(last) if full => start = Some(last.sk.clone()),
                _ => return Ok(out),
            }
        }
    }

    /// The keys of the user's blobs under `prefix` ("" for all).
    pub async fn list_blobs(&self, user: &UserId, prefix: &str) -> Result<Vec<String>, StorageError> {
        let user_prefix = user.scoped("");
        let full_prefix = user.scoped(prefix);
        let mut out: Vec<String> = Vec::new();
        let mut start = Some(full_prefix.clone());
        loop {
            let page = self
                .garage
                .object_table
                .get_range(&self.bucket, start.clone(), Some(ObjectFilter::IsData), PAGE, EnumerationOrder::Forward)
                .await?;
            let full = page.len() == PAGE;
            for o in &page {
                if !o.key.starts_with(&full_prefix) {
                    return Ok(out);
                }
                let name = o.key[user_prefix.len()..].to_string();
                if out.last() != Some(&name) {
                    out.push(name);
                }
            }
            match page.last() {
                Some(last) if full => start = Some(last.key.clone()),
                _ => return Ok(out),
            }
        }
    }
}
