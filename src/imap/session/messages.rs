//! Message commands (RFC 9051 §6.4): APPEND (with APPENDLIMIT, quotas),
//! FETCH (with CHANGEDSINCE/VANISHED, RFC 7162), STORE (with UNCHANGEDSINCE),
//! EXPUNGE and UID EXPUNGE (RFC 4315), COPY and MOVE (RFC 6851). Rendering
//! lives in `fetch.rs`/`render.rs`; this file sequences and answers.

use super::*;

impl Session {
    pub(super) async fn append(&mut self, mailbox: &ImapMailbox<'_>, flags: Vec<String>, date: Option<i64>, raw: Vec<u8>) -> Result<Done, ConnError> {
        let name = self.name_in(mailbox);
        let info = match self.find(&name).await {
            Ok(Some(i)) => i,
            Ok(None) => return Ok(Done::No(format!("[TRYCREATE] no mailbox {name}"))),
            Err(d) => return Ok(d),
        };
        if raw.is_empty() {
            return Ok(Done::No("An empty message cannot be appended".into()));
        }
        if flags.iter().any(|f| f.eq_ignore_ascii_case("\\Recent")) {
            return Ok(Done::Bad("\\Recent cannot be set".into()));
        }
        if let Some(refused) = self.check_quota(raw.len() as u64).await {
            return Ok(refused);
        }
        let keys = self.user().keys.clone();
        let mb = match self.open(&info.id, false).await {
            Ok(mb) => mb,
            Err(d) => return Ok(d),
        };
        let date = date.unwrap_or_else(|| chrono::Utc::now().timestamp());
        // Mail is CRLF on the wire: bare LFs become CRLF, as in LMTP (and
        // as Dovecot stores them).
        let raw = crlf(raw);
        let (id, _) = match message::store_message(&self.imap.store, &keys, &info.id, &raw, date).await {
            Ok(x) => x,
            Err(e) => return Ok(e.into()),
        };
        self.imap.mail.usage.add(&keys.user, raw.len() as u64);
        drop(raw);
        let op = (rand::random(), Op::Append { message: id, flags });
        let (outcome, shown) = match self.imap.mail.submit_shown(&keys, &info.id, vec![op]).await {
            Ok(o) => o,
            Err(e) => return Ok(e.into()),
        };
        let uidvalidity = mb.with_view(|v| v.map_or(0, |i| i.uidvalidity)).await;
        if self.selected.as_ref().is_some_and(|s| s.info.id == info.id) {
            self.catch_up(shown).await;
            self.sync(true, None).await?;
        }
        Ok(match outcome.first().and_then(|o| o.uid) {
            Some(uid) => Done::Ok(format!("[APPENDUID {uidvalidity} {uid}] APPEND completed")),
            None => Done::Ok("APPEND completed".into()),
        })
    }

    /// (seq, uid) of the client's view that `set` names.
    pub(super) fn resolve(&self, set: &SequenceSet, uid: bool) -> Vec<(u32, Uid)> {
        let Some(sel) = &self.selected else { return vec![] };
        let max_uid = sel.uids.last().copied().unwrap_or(0);
        let max_seq = sel.uids.len() as u32;
        let ivs = search::Intervals::new(set, if uid { max_uid } else { max_seq });
        sel.uids
            .iter()
            .enumerate()
            .filter(|(i, u)| if uid { ivs.contains(**u) } else { ivs.contains(*i as u32 + 1) })
            .map(|(i, u)| (i as u32 + 1, *u))
            .collect()
    }

    pub(super) async fn fetch(
        &mut self,
        set: SequenceSet,
        items: MacroOrMessageDataItemNames<'_>,
        uid: bool,
        modifiers: Vec<FetchModifier>,
    ) -> Result<Done, ConnError> {
        let items: Vec<MessageDataItemName<'_>> = match items {
            MacroOrMessageDataItemNames::Macro(m) => m.expand().into_iter().map(|i| i.into_static()).collect(),
            MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
        };
        if items.iter().any(|i| matches!(i, MessageDataItemName::Binary { .. } | MessageDataItemName::BinarySize { .. })) {
            return Ok(Done::Bad("BINARY is not supported".into()));
        }
        let mut changed_since = None;
        let mut vanished = false;
        for m in &modifiers {
            match m {
                FetchModifier::ChangedSince(n) => changed_since = Some(n.get()),
                FetchModifier::Vanished => vanished = true,
            }
        }
        if vanished && !(uid && self.enabled.qresync && changed_since.is_some()) {
            return Ok(Done::Bad("VANISHED needs UID FETCH, QRESYNC enabled and CHANGEDSINCE".into()));
        }
        if changed_since.is_some() || items.iter().any(|i| matches!(i, MessageDataItemName::ModSeq)) {
            self.enable_condstore().await?;
        }
        let targets = self.resolve(&set, uid);
        let Some(sel) = self.selected.as_ref() else { return Ok(Done::Bad("No mailbox selected".into())) };
        let (mb, mailbox, read_only) = (sel.mb.clone(), sel.info.id.clone(), sel.read_only);
        let keys = self.user().keys.clone();
        if vanished {
            let since = changed_since.unwrap_or(0);
            let max = sel.uids.last().copied().unwrap_or(0);
            let gone: Vec<Uid> = mb
                .with_view(|v| {
                    let ivs = search::Intervals::new(&set, max);
                    v.map(|i| i.vanished_since(since).filter(|u| ivs.contains(*u)).collect()).unwrap_or_default()
                })
                .await;
            if !gone.is_empty() {
                self.conn.write(format!("* VANISHED (EARLIER) {}\r\n", uid_set(&gone)).as_bytes()).await?;
            }
        }
        // Implicit \Seen first, so the FLAGS shown include it.
        let mut show_flags = false;
        if fetch::sets_seen(&items) && !read_only {
            let unseen: Vec<Uid> = mb
                .with_view(|v| {
                    v.map(|i| targets.iter().filter(|(_, u)| i.get(*u).is_some_and(|m| m.flags & 1 == 0)).map(|(_, u)| *u).collect())
                        .unwrap_or_default()
                })
                .await;
            if !unseen.is_empty() {
                let op = Op::Store { uids: unseen, mode: FlagMode::Add, flags: vec!["\\Seen".into()], unchanged_since: None };
                match self.imap.mail.submit_shown(&keys, &mailbox, vec![(rand::random(), op)]).await {
                    Ok((_, shown)) => self.catch_up(shown).await,
                    Err(e) => return Ok(e.into()),
                }
                show_flags = true;
            }
        }
        let recent = self.selected.as_ref().map(|s| s.recent.clone()).unwrap_or_default();
        let rows: Vec<Row> = mb
            .with_view(|v| {
                let Some(idx) = v else { return vec![] };
                targets
                    .iter()
                    .filter_map(|(seq, u)| {
                        let m = idx.get(*u)?;
                        if changed_since.is_some_and(|c| m.modseq <= c) {
                            return None;
                        }
                        Some(Row { seq: *seq, uid: *u, id: m.id, flags: shown_flags(&recent, *u, idx.flag_names(m.flags)), modseq: m.modseq })
                    })
                    .collect()
            })
            .await;
        self.announce_flags().await?;
        let mut items = items;
        if show_flags && !items.iter().any(|i| matches!(i, MessageDataItemName::Flags)) {
            items.push(MessageDataItemName::Flags);
        }
        // Once CONDSTORE is on, every untagged FETCH carries MODSEQ.
        let opts = fetch::Options { uid, modseq: self.enabled.condstore };
        let mut failed = 0;
        let ids: Vec<u64> = rows.iter().map(|r| r.id).collect();
        let mut metas = std::pin::pin!(fetch::metas(self.imap.store.clone(), keys.clone(), mailbox.clone(), ids, fetch::needs_meta(&items)));
        for row in &rows {
            let meta = match metas.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    log::warn!("FETCH of UID {}: {e}", row.uid);
                    failed += 1;
                    continue;
                }
                None => None,
            };
            match fetch::write_row(&mut self.conn, &self.imap.store, &keys, &mailbox, row, &items, &opts, meta).await {
                Ok(()) => {}
                Err(fetch::FetchError::Storage(e)) => {
                    log::warn!("FETCH of UID {}: {e}", row.uid);
                    failed += 1;
                }
                Err(fetch::FetchError::Conn(e)) => return Err(e),
            }
        }
        if show_flags {
            // The \Seen change was shown in the rows.
            if let Some(sel) = self.selected.as_mut() {
                sel.told_modseq = sel.mb.with_view(|v| v.map_or(0, |i| i.highestmodseq)).await.max(sel.told_modseq);
            }
        }
        self.sync(false, None).await?;
        if failed > 0 {
            return Ok(Done::No(format!("[UNAVAILABLE] {failed} message(s) could not be read; try again")));
        }
        Ok(Done::Ok(if uid { "UID FETCH completed" } else { "FETCH completed" }.into()))
    }

    pub(super) async fn store(
        &mut self,
        set: SequenceSet,
        kind: StoreType,
        response: StoreResponse,
        flags: Vec<Flag<'_>>,
        uid: bool,
        modifiers: Vec<StoreModifier>,
    ) -> Result<Done, ConnError> {
        let Some(sel) = self.selected.as_ref() else { return Ok(Done::Bad("No mailbox selected".into())) };
        if sel.read_only {
            return Ok(Done::No("[READ-ONLY] Mailbox is read-only".into()));
        }
        let flags: Vec<String> = flags.iter().map(flag_name).collect();
        if flags.iter().any(|f| f.eq_ignore_ascii_case("\\Recent")) {
            return Ok(Done::Bad("\\Recent cannot be changed".into()));
        }
        let unchanged_since = modifiers.iter().map(|StoreModifier::UnchangedSince(n)| *n).next();
        if unchanged_since.is_some() {
            self.enable_condstore().await?;
        }
        let targets = self.resolve(&set, uid);
        let Some(sel) = self.selected.as_ref() else { return Ok(Done::Bad("No mailbox selected".into())) };
        let (mb, mailbox) = (sel.mb.clone(), sel.info.id.clone());
        let keys = self.user().keys.clone();
        let mode = match kind {
            StoreType::Add => FlagMode::Add,
            StoreType::Remove => FlagMode::Remove,
            StoreType::Replace => FlagMode::Replace,
        };
        let uids: Vec<Uid> = targets.iter().map(|(_, u)| *u).collect();
        if uids.is_empty() {
            self.sync(false, None).await?;
            return Ok(Done::Ok("STORE completed".into()));
        }
        let op = Op::Store { uids: uids.clone(), mode, flags, unchanged_since };
        let outcome = match self.imap.mail.submit_shown(&keys, &mailbox, vec![(rand::random(), op)]).await {
            Ok((mut o, shown)) => {
                self.catch_up(shown).await;
                o.pop()
            }
            Err(e) => return Ok(e.into()),
        };
        let silent = matches!(response, StoreResponse::Silent);
        let modified = outcome.as_ref().map(|o| o.modified.clone()).unwrap_or_default();
        let told: std::collections::HashSet<Uid> =
            self.sync(false, if silent { outcome.as_ref().map(|o| o.modseq) } else { None }).await?.into_iter().collect();
        let modified_set: std::collections::HashSet<Uid> = modified.iter().copied().collect();
        if !silent {
            // Messages the STORE targeted but did not change still get
            // their FLAGS (RFC 3501 §6.4.6).
            self.announce_flags().await?;
            let condstore = self.enabled.condstore;
            let recent = self.selected.as_ref().map(|s| s.recent.clone()).unwrap_or_default();
            let rest: Vec<u8> = mb
                .with_view(|v| {
                    let mut out = vec![];
                    let Some(idx) = v else { return out };
                    for (seq, u) in &targets {
                        if told.contains(u) || modified_set.contains(u) {
                            continue;
                        }
                        if let Some(m) = idx.get(*u) {
                            out.extend_from_slice(format!("* {seq} FETCH (UID {u} FLAGS (").as_bytes());
                            out.extend_from_slice(shown_flags(&recent, *u, idx.flag_names(m.flags)).join(" ").as_bytes());
                            out.push(b')');
                            if condstore {
                                out.extend_from_slice(format!(" MODSEQ ({})", m.modseq).as_bytes());
                            }
                            out.extend_from_slice(b")\r\n");
                        }
                    }
                    out
                })
                .await;
            self.conn.write(&rest).await?;
        }
        if !modified.is_empty() {
            let shown: Vec<String> = if uid {
                vec![uid_set(&modified)]
            } else {
                let seqs: Vec<u32> = targets.iter().filter(|(_, u)| modified_set.contains(u)).map(|(s, _)| *s).collect();
                vec![uid_set(&seqs)]
            };
            return Ok(Done::Ok(format!("[MODIFIED {}] Conditional STORE failed for some messages", shown[0])));
        }
        Ok(Done::Ok(if uid { "UID STORE completed" } else { "STORE completed" }.into()))
    }

    pub(super) async fn expunge_deleted(&mut self, set: Option<SequenceSet>, respond: bool) -> Result<Done, ConnError> {
        let Some(sel) = self.selected.as_ref() else { return Ok(Done::Bad("No mailbox selected".into())) };
        if sel.read_only {
            return Ok(Done::No("[READ-ONLY] Mailbox is read-only".into()));
        }
        let within: Option<std::collections::HashSet<Uid>> =
            set.as_ref().map(|s| self.resolve(s, true).into_iter().map(|(_, u)| u).collect());
        let Some(sel) = self.selected.as_ref() else { return Ok(Done::Bad("No mailbox selected".into())) };
        let (mb, mailbox) = (sel.mb.clone(), sel.info.id.clone());
        let known = sel.uids.clone();
        let keys = self.user().keys.clone();
        let doomed: Vec<Uid> = mb
            .with_view(|v| {
                let Some(idx) = v else { return vec![] };
                known
                    .iter()
                    .filter(|u| within.as_ref().is_none_or(|w| w.contains(u)))
                    .filter(|u| idx.get(**u).is_some_and(|m| m.flags & 8 != 0))
                    .copied()
                    .collect()
            })
            .await;
        if !doomed.is_empty() {
            let ids: Vec<u64> = mb.with_view(|v| v.map(|i| doomed.iter().filter_map(|u| i.get(*u).map(|m| m.id)).collect()).unwrap_or_default()).await;
            let op = Op::Expunge { uids: doomed };
            match self.imap.mail.submit_shown(&keys, &mailbox, vec![(rand::random(), op)]).await {
                Ok((_, shown)) => self.catch_up(shown).await,
                Err(e) => return Ok(e.into()),
            }
            // What they occupied no longer counts against the quota.
            let mut freed = 0u64;
            let mut metas = std::pin::pin!(fetch::metas(self.imap.store.clone(), keys.clone(), mailbox.clone(), ids, true));
            while let Some(m) = metas.next().await {
                freed += m.ok().flatten().map_or(0, |m| m.size);
            }
            self.imap.mail.usage.remove(&keys.user, freed);
        }
        if respond {
            self.sync(true, None).await?;
        }
        Ok(Done::Ok("EXPUNGE completed".into()))
    }

    pub(super) async fn copy(&mut self, set: SequenceSet, target: &ImapMailbox<'_>, uid: bool, mv: bool) -> Result<Done, ConnError> {
        let word = if mv { "MOVE" } else { "COPY" };
        let name = self.name_in(target);
        let dest = match self.find(&name).await {
            Ok(Some(i)) => i,
            Ok(None) => return Ok(Done::No(format!("[TRYCREATE] no mailbox {name}"))),
            Err(d) => return Ok(d),
        };
        let targets = self.resolve(&set, uid);
        let Some(sel) = self.selected.as_ref() else { return Ok(Done::Bad("No mailbox selected".into())) };
        if mv && sel.read_only {
            return Ok(Done::No("[READ-ONLY] Mailbox is read-only".into()));
        }
        let (mb, source) = (sel.mb.clone(), sel.info.id.clone());
        let keys = self.user().keys.clone();
        let msgs: Vec<(Uid, u64, Vec<String>)> = mb
            .with_view(|v| {
                let Some(idx) = v else { return vec![] };
                targets.iter().filter_map(|(_, u)| idx.get(*u).map(|m| (*u, m.id, idx.flag_names(m.flags)))).collect()
            })
            .await;
        if msgs.is_empty() {
            return Ok(Done::Ok(format!("{word} completed (nothing to do)")));
        }
        let dest_mb = match self.open(&dest.id, false).await {
            Ok(m) => m,
            Err(d) => return Ok(d),
        };
        if !mv && self.quota().is_some() {
            // A copy counts against the quota like the original (as in
            // Dovecot); a move changes nothing. The sizes are known once
            // the metadata is copied, so the check is before, on the sum
            // (read only when there is a quota to check).
            let ids: Vec<u64> = msgs.iter().map(|m| m.1).collect();
            let mut total = 0u64;
            let mut metas = std::pin::pin!(fetch::metas(self.imap.store.clone(), keys.clone(), source.clone(), ids, true));
            while let Some(m) = metas.next().await {
                match m {
                    Ok(m) => total += m.map_or(0, |m| m.size),
                    Err(e) => return Ok(e.into()),
                }
            }
            if let Some(refused) = self.check_quota(total).await {
                return Ok(refused);
            }
        }
        let mut ops = vec![];
        let mut copied = 0u64;
        for (_, id, flags) in &msgs {
            match message::copy_message(&self.imap.store, &keys, &source, &dest.id, *id).await {
                Ok(Some(size)) => {
                    copied += size;
                    ops.push((rand::random(), Op::Append { message: *id, flags: flags.clone() }))
                }
                Ok(None) => {}
                Err(e) => return Ok(e.into()),
            }
        }
        let (outcomes, shown) = match self.imap.mail.submit_shown(&keys, &dest.id, ops).await {
            Ok(o) => o,
            Err(e) => return Ok(e.into()),
        };
        if !mv {
            self.imap.mail.usage.add(&keys.user, copied);
        }
        let uidvalidity = dest_mb.with_view(|v| v.map_or(0, |i| i.uidvalidity)).await;
        let src: Vec<Uid> = msgs.iter().map(|m| m.0).collect();
        let dst: Vec<Uid> = outcomes.iter().filter_map(|o| o.uid).collect();
        // COPYUID lists pairs in order: keep both lists as they came.
        let list = |v: &[Uid]| v.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(",");
        let code = format!("[COPYUID {uidvalidity} {} {}]", list(&src), list(&dst));
        if self.selected.as_ref().is_some_and(|s| s.info.id == dest.id) {
            self.catch_up(shown).await;
        }
        if mv {
            self.conn.write(format!("* OK {code} Moved\r\n").as_bytes()).await?;
            let op = Op::Expunge { uids: src };
            match self.imap.mail.submit_shown(&keys, &source, vec![(rand::random(), op)]).await {
                Ok((_, shown)) => self.catch_up(shown).await,
                Err(e) => {
                    // The copy stands (the client will see it twice, not lose it).
                    self.imap.mail.usage.add(&keys.user, copied);
                    return Ok(e.into());
                }
            }
            self.sync(true, None).await?;
            return Ok(Done::Ok(format!("{word} completed")));
        }
        self.sync(false, None).await?;
        Ok(Done::Ok(format!("{code} {word} completed")))
    }
}
