//! Items: a K2V table (partition key, sort key, concurrent sibling values,
//! causality token), scoped by user, on Garage's replicated `k2v` table.
//!
//! Costs (RF 3, consistent mode; see docs/storage.md): an insert, delete or
//! batch is one quorum write (1 RTT to the nearest other replica); a get or
//! a range page is one quorum read (1 RTT). Long-polls hold one request per
//! replica open until something changes.
//!
//! This module must not interpret values.

use std::collections::BTreeMap;
use std::time::Duration;

use garage_model::k2v::causality::CausalContext;
use garage_model::k2v::item_table::{DvvsValue, ItemFilter, K2VItem, K2VItemPartition};
use garage_model::k2v::rpc::K2VMonotonicRead;
use garage_model::k2v::sub::PollRange;
use garage_table::EnumerationOrder;

use super::{Store, StorageError, UserId};

/// An opaque token naming the versions a reader has seen. Writing with it
/// replaces exactly those versions; writing without it adds a sibling.
#[derive(Debug, PartialEq, Eq, Clone, serde::Serialize, serde::Deserialize)]
pub struct CausalityToken(String);

impl CausalityToken {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Re-reads a token kept by a caller (e.g. across a restart).
    pub fn parse(s: &str) -> Result<Self, StorageError> {
        CausalContext::parse(s).ok_or(StorageError::BadToken)?;
        Ok(CausalityToken(s.to_string()))
    }

    fn context(&self) -> Result<CausalContext, StorageError> {
        CausalContext::parse(&self.0).ok_or(StorageError::BadToken)
    }
}

/// One item as read: its live sibling values and the token covering them.
#[derive(Debug, Clone)]
pub struct Item {
    pub sort_key: String,
    /// Concurrent values (more than one after concurrent writes without a
    /// common token). Empty when the item is deleted.
    pub values: Vec<Vec<u8>>,
    pub token: CausalityToken,
}

impl Item {
    pub fn is_deleted(&self) -> bool {
        self.values.is_empty()
    }

    fn from_k2v(item: &K2VItem) -> Self {
        let values = item
            .values()
            .into_iter()
            .filter_map(|v| match v {
                DvvsValue::Value(b) => Some(b.clone()),
                DvvsValue::Deleted => None,
            })
            .collect();
        Item {
            sort_key: item.sort_key.clone(),
            values,
            token: CausalityToken(item.causal_context().serialize()),
        }
    }
}

/// One write of a batch.
#[derive(Debug, Clone)]
pub struct ItemWrite {
    pub partition: String,
    pub sort_key: String,
    /// None deletes the item (the token then says which versions).
    pub value: Option<Vec<u8>>,
    pub token: Option<CausalityToken>,
}

/// Which sort keys of a partition a range read covers.
#[derive(Debug, Clone, Default)]
pub struct Range {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// First key (inclusive).
    pub start: Option<String>,
    /// Last key (exclusive).
    pub end: Option<String>,
    /// At most this many items (default: all).
    pub limit: Option<usize>,
}

/// Where a range long-poll left off; pass it back to wait for what is newer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeMarker(String);

/// Items per quorum read when paging through a range.
const PAGE: usize = 1000;
/// Longest single long-poll round (see `poll_item`).
const POLL_ROUND: Duration = Duration::from_secs(2);

impl Store {
    pub(super) fn partition(&self, user: &UserId, partition: &str) -> K2VItemPartition {
        K2VItemPartition {
            bucket_id: self.bucket,
            partition_key: user.scoped(partition),
        }
    }

    /// Writes `value` under (partition, sort key). With the token of a read,
    /// it replaces what that read saw; without, it adds a concurrent sibling.
    pub async fn insert(
        &self,
        user: &UserId,
        partition: &str,
        sort_key: &str,
        value: Vec<u8>,
        token: Option<&CausalityToken>,
    ) -> Result<(), StorageError> {
        let ctx = token.map(CausalityToken::context).transpose()?;
        self.garage
            .k2v
            .rpc
            .insert(self.bucket, user.scoped(partition), sort_key.to_string(), ctx, DvvsValue::Value(value))
            .await?;
        Ok(())
    }

    /// Deletes the versions of an item that `token` covers.
    pub async fn delete(
        &self,
        user: &UserId,
        partition: &str,
        sort_key: &str,
        token: &CausalityToken,
    ) -> Result<(), StorageError> {
        self.garage
            .k2v
            .rpc
            .insert(
                self.bucket,
                user.scoped(partition),
                sort_key.to_string(),
                Some(token.context()?),
                DvvsValue::Deleted,
            )
            .await?;
        Ok(())
    }

    /// Several writes (and deletes) in one round: one quorum write per
    /// group of partitions that share replicas, sent concurrently.
    pub async fn insert_batch(&self, user: &UserId, writes: Vec<ItemWrite>) -> Result<(), StorageError> {
        let mut batch = Vec::with_capacity(writes.len());
        for w in writes {
            let ctx = w.token.as_ref().map(CausalityToken::context).transpose()?;
            let v = match w.value {
                Some(v) => DvvsValue::Value(v),
                None => DvvsValue::Deleted,
            };
            batch.push((user.scoped(&w.partition), w.sort_key, ctx, v));
        }
        self.garage.k2v.rpc.insert_batch(self.bucket, batch).await?;
        Ok(())
    }

    /// Deletes items as read (their tokens say which versions), in batches.
    pub async fn delete_items(&self, user: &UserId, partition: &str, items: &[Item]) -> Result<(), StorageError> {
        for chunk in items.chunks(500) {
            let writes = chunk
                .iter()
                .map(|it| ItemWrite {
                    partition: partition.to_string(),
                    sort_key: it.sort_key.clone(),
                    value: None,
                    token: Some(it.token.clone()),
                })
                .collect();
            self.insert_batch(user, writes).await?;
        }
        Ok(())
    }

    /// Reads one item with all its concurrent siblings (quorum read).
    /// None if it was never written; a deleted item has no values.
    pub async fn get(&self, user: &UserId, partition: &str, sort_key: &str) -> Result<Option<Item>, StorageError> {
        let p = self.partition(user, partition);
        let item = self.garage.k2v.item_table.get(&p, &sort_key.to_string()).await?;
        Ok(item.as_ref().map(Item::from_k2v))
    }

    /// Reads the live (not deleted) items of a partition in sort-key order.
    pub async fn range(&self, user: &UserId, partition: &str, range: &Range) -> Result<Vec<Item>, StorageError> {
        self.range_inner(user, partition, range, false).await
    }

    /// Like `range`, but every item returned is on a quorum of replicas
    /// before this returns (read repair): once seen by anyone, an item is
    /// seen by every later quorum read. Costs an extra write round only
    /// when replicas disagreed (and, with a replica down, when Garage's own
    /// repair, which insists on every replica, gives up).
    pub async fn range_monotonic(&self, user: &UserId, partition: &str, range: &Range) -> Result<Vec<Item>, StorageError> {
        self.range_inner(user, partition, range, true).await
    }

    async fn range_inner(
        &self,
        user: &UserId,
        partition: &str,
        range: &Range,
        monotonic: bool,
    ) -> Result<Vec<Item>, StorageError> {
        if let (Some(p), Some(s)) = (&range.prefix, &range.start) {
            if !s.starts_with(p.as_str()) {
                return Err(StorageError::Invalid(format!("range start `{s}` is outside prefix `{p}`")));
            }
        }
        let limit = range.limit.unwrap_or(usize::MAX);
        let part = self.partition(user, partition);
        let filter = Some(ItemFilter {
            exclude_only_tombstones: true,
            conflicts_only: false,
        });
        let mut cursor = range.start.clone().or_else(|| range.prefix.clone());
        let mut skip = None::<String>;
        let mut out = Vec::new();
        while out.len() < limit {
            let want = PAGE.min((limit - out.len()).saturating_add(1));
            let table = &self.garage.k2v.item_table;
            let page = if monotonic {
                match table.get_range_monotonic(&part, cursor.clone(), filter, want, EnumerationOrder::Forward).await {
                    Ok(page) => page,
                    // Garage repairs on every replica it read from, so with one
                    // replica down and the other two disagreeing the read
                    // fails. What we promise is weaker: on a quorum. Read
                    // again and write what was read back with a quorum write
                    // (a merge: writing an item back is a no-op where it is).
                    Err(first) => {
                        let page = table.get_range(&part, cursor.clone(), filter, want, EnumerationOrder::Forward).await?;
                        if table.insert_many(&page).await.is_err() {
                            return Err(first.into());
                        }
                        page
                    }
                }
            } else {
                table.get_range(&part, cursor.clone(), filter, want, EnumerationOrder::Forward).await?
            };
            let full = page.len() >= want;
            for it in &page {
                if skip.as_deref() == Some(it.sort_key.as_str()) {
                    continue;
                }
                if range.prefix.as_ref().is_some_and(|p| !it.sort_key.starts_with(p.as_str()))
                    || range.end.as_ref().is_some_and(|e| it.sort_key >= *e)
                {
                    return Ok(out);
                }
                out.push(Item::from_k2v(it));
                if out.len() >= limit {
                    return Ok(out);
                }
            }
            match page.last() {
                Some(last) if full => {
                    cursor = Some(last.sort_key.clone());
                    skip = Some(last.sort_key.clone());
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// Waits until the item differs from what `token` saw (or, without a
    /// token, until it exists), at most `timeout`. None on timeout.
    pub async fn poll_item(
        &self,
        user: &UserId,
        partition: &str,
        sort_key: &str,
        token: Option<&CausalityToken>,
        timeout: Duration,
    ) -> Result<Option<Item>, StorageError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ctx = match token {
                Some(t) => t.context()?,
                None => CausalContext::new(),
            };
            // Garage checks the item, then subscribes to changes: a write
            // landing in between is only noticed by the next poll. Polling
            // in short rounds bounds that miss to one round.
            let round = deadline.saturating_duration_since(tokio::time::Instant::now()).min(POLL_ROUND);
            let item = self
                .garage
                .k2v
                .rpc
                .poll_item(
                    self.bucket,
                    user.scoped(partition),
                    sort_key.to_string(),
                    ctx,
                    round.as_millis() as u64,
                    K2VMonotonicRead::NonMonotonic,
                )
                .await?;
            if let Some(item) = item {
                return Ok(Some(Item::from_k2v(&item)));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Watches the items of a partition (optionally under a prefix).
    /// Without a marker it returns the current items at once (deleted ones
    /// included, with no values) and a marker; with a marker it waits up to
    /// `timeout` for items changed since, returning None on timeout.
    pub async fn poll_range(
        &self,
        user: &UserId,
        partition: &str,
        prefix: Option<&str>,
        marker: Option<&RangeMarker>,
        timeout: Duration,
    ) -> Result<Option<(Vec<Item>, RangeMarker)>, StorageError> {
        let range = PollRange {
            partition: self.partition(user, partition),
            prefix: prefix.map(str::to_string),
            // Garage's first scan stops at the first key outside the range;
            // starting at the prefix keeps earlier keys from ending it early.
            start: prefix.map(str::to_string),
            end: None,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Short rounds, for the same reason as in `poll_item`.
            let round = deadline.saturating_duration_since(tokio::time::Instant::now()).min(POLL_ROUND);
            let res = self
                .garage
                .k2v
                .rpc
                .poll_range(
                    range.clone(),
                    marker.map(|m| m.0.clone()),
                    round.as_millis() as u64,
                    K2VMonotonicRead::NonMonotonic,
                )
                .await
                .map_err(|e| match e {
                    garage_model::helper::error::Error::BadRequest(m) => StorageError::Invalid(m),
                    other => StorageError::Unavailable(other.to_string()),
                })?;
            if let Some((items, m)) = res {
                let items: BTreeMap<String, K2VItem> = items;
                return Ok(Some((items.values().map(Item::from_k2v).collect(), RangeMarker(m))));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }
}
