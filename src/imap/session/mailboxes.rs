//! Mailbox commands (RFC 9051 §6.3): SELECT/EXAMINE with CONDSTORE and
//! QRESYNC (RFC 7162), CREATE (with CREATE-SPECIAL-USE, RFC 6154), DELETE,
//! RENAME of INBOX, LIST/LSUB with LIST-EXTENDED, LIST-STATUS and
//! SPECIAL-USE (RFC 5258, 5819, 6154), STATUS (with SIZE, RFC 8438). They
//! must not change messages.

use super::*;

impl Session {
    pub(super) async fn select(&mut self, mailbox: &ImapMailbox<'_>, params: Vec<SelectParameter>, read_only: bool) -> Result<Done, ConnError> {
        self.settle_incoming().await;
        if self.selected.take().is_some() {
            self.conn.write(b"* OK [CLOSED] Previous mailbox closed\r\n").await?;
        }
        let name = self.name_in(mailbox);
        let info = match self.find(&name).await {
            Ok(Some(i)) => i,
            Ok(None) => return Ok(Done::No(format!("[NONEXISTENT] no mailbox {name}"))),
            Err(d) => return Ok(d),
        };
        // Watch before reading the log: a change announced in between is
        // then either in the read or still marked.
        let keys = self.user().keys.clone();
        let changes = self.imap.mail.watch(&keys, &info.id);
        let seen_stale = changes.borrow().stale;
        let mb = match self.open(&info.id, true).await {
            Ok(mb) => mb,
            Err(d) => return Ok(d),
        };
        let mut qresync = None;
        for p in &params {
            match p {
                SelectParameter::CondStore => self.enabled.condstore = true,
                SelectParameter::QResync { uid_validity, mod_sequence_value, known_uids, .. } => {
                    if !self.enabled.qresync {
                        return Ok(Done::Bad("QRESYNC must be enabled first".into()));
                    }
                    qresync = Some((uid_validity.get(), mod_sequence_value.get(), known_uids.clone()));
                }
            }
        }
        let rev2 = self.enabled.rev2;
        // \Recent (IMAP4rev1): what no session has been told about yet. A
        // read-write SELECT takes it (atomically on this node: two SELECTs
        // never both get a message); EXAMINE only looks.
        let keys = self.user().keys.clone();
        let recent_range = if rev2 {
            Uid::MAX..Uid::MAX
        } else if read_only {
            self.imap.mail.recent.floor(&keys, &info.id).await..Uid::MAX
        } else {
            let uidnext = mb.with_view(|v| v.map_or(1, |i| i.uidnext)).await;
            self.imap.mail.recent.claim(&keys, &info.id, uidnext).await
        };
        let (out, uids, highest, flags_told) = mb
            .with_view(|v| {
                let Some(idx) = v else { return (vec![], vec![], 0, 0) };
                let (mut out, flags_told) = flags_responses(idx, read_only);
                out.extend_from_slice(format!("* {} EXISTS\r\n", idx.len()).as_bytes());
                if !rev2 {
                    let recent = idx.messages().iter().filter(|m| recent_range.contains(&m.uid)).count();
                    out.extend_from_slice(format!("* {recent} RECENT\r\n").as_bytes());
                    if let Some(pos) = idx.messages().iter().position(|m| m.flags & 1 == 0) {
                        out.extend_from_slice(format!("* OK [UNSEEN {}] First unseen\r\n", pos + 1).as_bytes());
                    }
                }
                out.extend_from_slice(format!("* OK [UIDVALIDITY {}] UIDs valid\r\n", idx.uidvalidity).as_bytes());
                out.extend_from_slice(format!("* OK [UIDNEXT {}] Predicted next UID\r\n", idx.uidnext).as_bytes());
                out.extend_from_slice(format!("* OK [HIGHESTMODSEQ {}] Highest\r\n", idx.highestmodseq).as_bytes());
                if let Some((uv, since, known)) = &qresync {
                    if *uv == idx.uidvalidity {
                        let max = idx.uidnext.saturating_sub(1);
                        let known = known.as_ref().map(|k| search::Intervals::new(k, max));
                        let vanished: Vec<Uid> = idx
                            .vanished_since(*since)
                            .filter(|u| known.as_ref().is_none_or(|k| k.contains(*u)))
                            .collect();
                        if !vanished.is_empty() {
                            out.extend_from_slice(format!("* VANISHED (EARLIER) {}\r\n", uid_set(&vanished)).as_bytes());
                        }
                        for m in idx.changed_since(*since) {
                            let seq = idx.seq_of(m.uid).unwrap_or(0);
                            let mut names = idx.flag_names(m.flags);
                            if recent_range.contains(&m.uid) {
                                names.push("\\Recent".into());
                            }
                            out.extend_from_slice(format!("* {seq} FETCH (UID {} FLAGS (", m.uid).as_bytes());
                            out.extend_from_slice(names.join(" ").as_bytes());
                            out.extend_from_slice(format!(") MODSEQ ({}))\r\n", m.modseq).as_bytes());
                        }
                    }
                }
                (out, idx.messages().iter().map(|m| m.uid).collect(), idx.highestmodseq, flags_told)
            })
            .await;
        self.conn.write(&out).await?;
        let recent: std::collections::BTreeSet<Uid> = uids.iter().copied().filter(|u| recent_range.contains(u)).collect();
        self.selected = Some(Selected {
            info,
            read_only,
            mb,
            changes,
            seen_stale,
            uids,
            told_modseq: highest,
            flags_told,
            recent,
        });
        Ok(Done::Ok(if read_only { "[READ-ONLY] EXAMINE completed" } else { "[READ-WRITE] SELECT completed" }.into()))
    }

    pub(super) async fn create(&mut self, mailbox: &ImapMailbox<'_>, extras: &Extras) -> Result<Done, ConnError> {
        let name = self.name_in(mailbox);
        let special = extras.create_use.first().cloned();
        if let Some(s) = &special {
            const KNOWN: [&str; 7] = ["\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash"];
            if !KNOWN.iter().any(|k| k.eq_ignore_ascii_case(s)) {
                return Ok(Done::No(format!("[USEATTR] {s} is not a special-use attribute")));
            }
        }
        Ok(match self.user().mailboxes.create(&name, special).await {
            Ok(_) => Done::Ok("CREATE completed".into()),
            Err(e) => e.into(),
        })
    }

    /// RENAME INBOX (RFC 9051 §6.3.6): every message moves to a new
    /// mailbox of that name; INBOX stays, empty (its inferiors stay too).
    pub(super) async fn rename_inbox(&mut self, to: &str) -> Result<Done, ConnError> {
        let dest = match self.user().mailboxes.create(to, None).await {
            Ok(d) => d,
            Err(e) => return Ok(e.into()),
        };
        let keys = self.user().keys.clone();
        let inbox = match self.open(crate::mail::mailboxes::INBOX_ID, true).await {
            Ok(mb) => mb,
            Err(d) => return Ok(d),
        };
        let msgs: Vec<(Uid, u64, Vec<String>)> = inbox
            .with_view(|v| v.map(|i| i.messages().iter().map(|m| (m.uid, m.id, i.flag_names(m.flags))).collect()).unwrap_or_default())
            .await;
        if let Err(d) = self.open(&dest.id, true).await {
            return Ok(d);
        }
        // In slices, so a huge INBOX is neither one giant log entry nor
        // left half-moved by a failure: each slice is copied, then removed.
        for chunk in msgs.chunks(500) {
            let mut ops = vec![];
            for (_, id, flags) in chunk {
                match message::copy_message(&self.imap.store, &keys, crate::mail::mailboxes::INBOX_ID, &dest.id, *id).await {
                    Ok(Some(_)) => ops.push((rand::random(), Op::Append { message: *id, flags: flags.clone() })),
                    Ok(None) => {}
                    Err(e) => return Ok(e.into()),
                }
            }
            if let Err(e) = self.imap.mail.submit(&keys, &dest.id, ops).await {
                return Ok(e.into());
            }
            let op = Op::Expunge { uids: chunk.iter().map(|m| m.0).collect() };
            if let Err(e) = self.imap.mail.submit(&keys, crate::mail::mailboxes::INBOX_ID, vec![(rand::random(), op)]).await {
                return Ok(e.into());
            }
        }
        let _ = inbox.refresh().await;
        self.sync(true, None).await?;
        Ok(Done::Ok("RENAME completed; INBOX's messages moved".into()))
    }

    pub(super) async fn delete(&mut self, mailbox: &ImapMailbox<'_>) -> Result<Done, ConnError> {
        let name = self.name_in(mailbox);
        if self.selected.as_ref().is_some_and(|s| s.info.name == name) {
            self.selected = None;
        }
        match self.user().mailboxes.delete(&name).await {
            Ok(info) => {
                let (store, keys, mail) = (self.imap.store.clone(), self.user().keys.clone(), self.imap.mail.clone());
                mail.close(&keys.user, &info.id);
                // The name is gone at once; the messages are reclaimed in
                // the background (a crash leaves garbage, never a mailbox).
                tokio::spawn(async move {
                    match message::mailbox_size(&store, &keys, &info.id).await {
                        Ok(size) => mail.usage.remove(&keys.user, size),
                        Err(e) => log::warn!("sizing a deleted mailbox: {e}"),
                    }
                    if let Err(e) = cleanup::delete_mailbox_data(&store, &keys, &info.id).await {
                        log::warn!("reclaiming a deleted mailbox: {e}");
                    }
                });
                Ok(Done::Ok("DELETE completed".into()))
            }
            Err(e) => Ok(e.into()),
        }
    }

    pub(super) async fn list(&mut self, reference: &ImapMailbox<'_>, pattern: &ListMailbox<'_>, extras: &Extras, lsub: bool) -> Result<Done, ConnError> {
        self.settle_incoming().await;
        let reference = match reference {
            ImapMailbox::Inbox => "INBOX".to_string(),
            ImapMailbox::Other(o) => String::from_utf8_lossy(o.as_ref()).to_string(),
        };
        let pattern = match pattern {
            ListMailbox::Token(t) => String::from_utf8_lossy(t.as_ref()).to_string(),
            ListMailbox::String(s) => String::from_utf8_lossy(s.as_ref()).to_string(),
        };
        let decode = |s: String| if self.enabled.rev2 { s.clone() } else { utf7::decode(&s).unwrap_or(s) };
        let (reference, pattern) = (decode(reference), decode(pattern));
        let word = if lsub { "LSUB" } else { "LIST" };
        // RFC 5258 §3: options the server does not know are BAD, and so is
        // RECURSIVEMATCH without another selection option (REMOTE does not
        // count), whatever the pattern.
        if let Some(o) = extras.list_select.iter().find(|o| !["SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"].contains(&o.as_str())) {
            return Ok(Done::Bad(format!("unknown LIST selection option {o}")));
        }
        if let Some(o) = extras.list_return.iter().find(|o| !["SUBSCRIBED", "CHILDREN", "STATUS", "SPECIAL-USE"].contains(&o.as_str())) {
            return Ok(Done::Bad(format!("unknown LIST return option {o}")));
        }
        let select = |o: &str| extras.list_select.iter().any(|s| s == o);
        if select("RECURSIVEMATCH") && !select("SUBSCRIBED") && !select("SPECIAL-USE") {
            return Ok(Done::Bad("RECURSIVEMATCH needs another selection option".into()));
        }
        if pattern.is_empty() && !lsub {
            self.conn.write(b"* LIST (\\Noselect) \"/\" \"\"\r\n").await?;
            return Ok(Done::Ok("LIST completed".into()));
        }
        // LIST-EXTENDED may give several patterns; a name matching any is listed.
        let patterns: Vec<String> = if extras.list_patterns.is_empty() {
            vec![pattern]
        } else {
            extras.list_patterns.iter().map(|p| decode(p.clone())).collect()
        };
        let fulls: Vec<Vec<char>> = patterns.iter().map(|p| format!("{reference}{p}").chars().collect()).collect();
        let matches_any = |name: &str| {
            let chars: Vec<char> = name.chars().collect();
            fulls.iter().any(|full| {
                pattern_match(full, &chars)
                    || (name == "INBOX" && pattern_match(&full.iter().map(|c| c.to_ascii_uppercase()).collect::<Vec<_>>(), &chars))
            })
        };
        let list = match self.user().mailboxes.list().await {
            Ok(l) => l,
            Err(e) => return Ok(e.into()),
        };
        let subs = match self.user().mailboxes.subscriptions().await {
            Ok(s) => s,
            Err(e) => return Ok(e.into()),
        };
        let subscribed_only = lsub || select("SUBSCRIBED");
        let special_only = select("SPECIAL-USE");
        let show_subscribed = subscribed_only || extras.list_return.iter().any(|s| s == "SUBSCRIBED");
        let mut out = vec![];
        let mut status_for = vec![];
        let names: Vec<&MailboxInfo> = list.iter().collect();
        let is_sub = |name: &str| subs.iter().any(|s| s == name);
        let selected = |m: &MailboxInfo| (!subscribed_only || is_sub(&m.name)) && (!special_only || m.special_use.is_some());
        for m in &names {
            if !matches_any(&m.name) {
                continue;
            }
            let prefix = format!("{}{SEPARATOR}", m.name);
            // RECURSIVEMATCH: a parent with a selected descendant that the
            // patterns do not match is listed with CHILDINFO even when it is
            // not selected itself (RFC 5258 §3, condition b).
            let child_selected = select("RECURSIVEMATCH")
                && names.iter().any(|o| o.name.starts_with(&prefix) && selected(o) && !matches_any(&o.name));
            if !selected(m) && !child_selected {
                continue;
            }
            let children = names.iter().any(|o| o.name.starts_with(&prefix));
            let mut attrs: Vec<String> = vec![];
            if !lsub {
                attrs.push(if children { "\\HasChildren" } else { "\\HasNoChildren" }.into());
                if let Some(s) = &m.special_use {
                    attrs.push(s.clone());
                }
            }
            if show_subscribed && is_sub(&m.name) && !lsub {
                attrs.push("\\Subscribed".into());
            }
            out.extend_from_slice(format!("* {word} ({}) \"/\" ", attrs.join(" ")).as_bytes());
            out.extend_from_slice(&self.name_out(&m.name));
            if child_selected {
                let why: Vec<&str> = [("SUBSCRIBED", subscribed_only), ("SPECIAL-USE", special_only)]
                    .iter()
                    .filter(|(_, on)| *on)
                    .map(|(w, _)| *w)
                    .collect();
                out.extend_from_slice(format!(" (\"CHILDINFO\" (\"{}\"))", why.join("\" \"")).as_bytes());
            }
            out.extend_from_slice(b"\r\n");
            if !lsub && extras.list_return.iter().any(|s| s == "STATUS") && selected(m) {
                status_for.push((*m).clone());
            }
        }
        // Superior names that are not mailboxes (a hierarchy made by hand
        // or by another client) still show, so `%` can walk down to them.
        if !lsub {
            let mut implied: Vec<String> = vec![];
            for m in &names {
                let parts: Vec<&str> = m.name.split(SEPARATOR).collect();
                for i in 1..parts.len() {
                    let parent = parts[..i].join("/");
                    if !names.iter().any(|o| o.name == parent) && !implied.contains(&parent) {
                        implied.push(parent);
                    }
                }
            }
            implied.sort();
            for p in implied {
                if !matches_any(&p) {
                    continue;
                }
                let prefix = format!("{p}{SEPARATOR}");
                let child_selected = names.iter().any(|o| o.name.starts_with(&prefix) && selected(o));
                if (subscribed_only || special_only) && !(select("RECURSIVEMATCH") && child_selected) {
                    continue;
                }
                out.extend_from_slice(b"* LIST (\\Noselect \\HasChildren) \"/\" ");
                out.extend_from_slice(&self.name_out(&p));
                if select("RECURSIVEMATCH") && child_selected {
                    out.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))");
                }
                out.extend_from_slice(b"\r\n");
            }
        }
        // LSUB with `%`: a subscribed name below the level the pattern
        // reaches shows its unsubscribed superior, as \Noselect (RFC 3501
        // §6.3.9).
        if lsub {
            let mut parents: Vec<String> = vec![];
            for s in subs.iter().filter(|s| !matches_any(s)) {
                let parts: Vec<&str> = s.split(SEPARATOR).collect();
                for i in 1..parts.len() {
                    let parent = parts[..i].join("/");
                    if matches_any(&parent) && !is_sub(&parent) && !parents.contains(&parent) {
                        parents.push(parent);
                    }
                }
            }
            parents.sort();
            for p in parents {
                out.extend_from_slice(b"* LSUB (\\Noselect) \"/\" ");
                out.extend_from_slice(&self.name_out(&p));
                out.extend_from_slice(b"\r\n");
            }
        }
        // Subscriptions to mailboxes that no longer exist still show.
        if subscribed_only {
            for s in &subs {
                if names.iter().any(|m| &m.name == s) {
                    continue;
                }
                if matches_any(s) {
                    let attrs = if lsub { "\\Noselect" } else { "\\Subscribed \\NonExistent" };
                    out.extend_from_slice(format!("* {word} ({attrs}) \"/\" ").as_bytes());
                    out.extend_from_slice(&self.name_out(s));
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        self.conn.write(&out).await?;
        let items: Vec<StatusDataItemName> = extras
            .list_status
            .iter()
            .filter_map(|s| match s.as_str() {
                "MESSAGES" => Some(StatusDataItemName::Messages),
                "UIDNEXT" => Some(StatusDataItemName::UidNext),
                "UIDVALIDITY" => Some(StatusDataItemName::UidValidity),
                "UNSEEN" => Some(StatusDataItemName::Unseen),
                "RECENT" => Some(StatusDataItemName::Recent),
                "SIZE" => Some(StatusDataItemName::Size),
                "DELETED" => Some(StatusDataItemName::Deleted),
                "HIGHESTMODSEQ" => Some(StatusDataItemName::HighestModSeq),
                _ => None,
            })
            .collect();
        for m in status_for {
            if let Ok(line) = self.status_line(&m, &items).await {
                self.conn.write(&line).await?;
            }
        }
        Ok(Done::Ok(format!("{word} completed")))
    }

    pub(super) async fn status_line(&mut self, info: &MailboxInfo, items: &[StatusDataItemName]) -> Result<Vec<u8>, Done> {
        let mb = self.open(&info.id, true).await?;
        let want_size = items.iter().any(|i| matches!(i, StatusDataItemName::Size));
        // RECENT: what no session has been told about (STATUS only looks).
        let floor = if items.iter().any(|i| matches!(i, StatusDataItemName::Recent)) {
            let keys = self.user().keys.clone();
            self.imap.mail.recent.floor(&keys, &info.id).await
        } else {
            Uid::MAX
        };
        let (parts, ids) = mb
            .with_view(|v| {
                let Some(idx) = v else { return (vec![], vec![]) };
                let mut parts = vec![];
                for i in items {
                    let s = match i {
                        StatusDataItemName::Messages => format!("MESSAGES {}", idx.len()),
                        StatusDataItemName::Recent => format!("RECENT {}", idx.messages().iter().filter(|m| m.uid >= floor).count()),
                        StatusDataItemName::UidNext => format!("UIDNEXT {}", idx.uidnext),
                        StatusDataItemName::UidValidity => format!("UIDVALIDITY {}", idx.uidvalidity),
                        StatusDataItemName::Unseen => format!("UNSEEN {}", idx.messages().iter().filter(|m| m.flags & 1 == 0).count()),
                        StatusDataItemName::Deleted => format!("DELETED {}", idx.messages().iter().filter(|m| m.flags & 8 != 0).count()),
                        StatusDataItemName::HighestModSeq => format!("HIGHESTMODSEQ {}", idx.highestmodseq),
                        _ => continue,
                    };
                    parts.push(s);
                }
                let ids = if want_size { idx.messages().iter().map(|m| m.id).collect() } else { vec![] };
                (parts, ids)
            })
            .await;
        let mut parts = parts;
        if want_size {
            let keys = self.user().keys.clone();
            let mut size = 0u64;
            let mut metas = std::pin::pin!(fetch::metas(self.imap.store.clone(), keys, info.id.clone(), ids, true));
            while let Some(m) = metas.next().await {
                if let Some(m) = m.map_err(Done::from)? {
                    size += m.size;
                }
            }
            parts.push(format!("SIZE {size}"));
        }
        let mut line = b"* STATUS ".to_vec();
        line.extend_from_slice(&self.name_out(&info.name));
        line.extend_from_slice(format!(" ({})\r\n", parts.join(" ")).as_bytes());
        Ok(line)
    }
}
