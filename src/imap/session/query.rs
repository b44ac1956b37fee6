//! The query commands: SEARCH (RFC 9051 §6.4.4, with ESEARCH RFC 4731,
//! SEARCHRES RFC 5182, WITHIN RFC 5032, MODSEQ RFC 7162) and SORT (RFC 5256,
//! SORT=DISPLAY RFC 5957). Matching is in `search.rs`, ordering in
//! `sort.rs`; this file loads what they need and answers. Read-only.

use super::*;

impl Session {
    /// The selected mailbox's messages that match `key`, in mailbox order:
    /// (sequence number, UID, MODSEQ, message id). SEARCH and SORT share it.
    pub(super) async fn matching(&mut self, key: &SearchKey<'_>) -> Result<Vec<(u32, Uid, ModSeq, u64)>, Done> {
        let needs = search::needs(key);
        let Some(sel) = self.selected.as_ref() else { return Err(Done::Bad("No mailbox selected".into())) };
        let (mb, mailbox) = (sel.mb.clone(), sel.info.id.clone());
        let known = sel.uids.clone();
        let recent = sel.recent.clone();
        let keys = self.user().keys.clone();
        let rows: Vec<(u32, Uid, u64, Vec<String>, ModSeq)> = mb
            .with_view(|v| {
                let Some(idx) = v else { return vec![] };
                known
                    .iter()
                    .enumerate()
                    .filter_map(|(i, u)| idx.get(*u).map(|m| (i as u32 + 1, *u, m.id, shown_flags(&recent, *u, idx.flag_names(m.flags)), m.modseq)))
                    .collect()
            })
            .await;
        let scope = Scope::new(known.len() as u32, known.last().copied().unwrap_or(0), chrono::Utc::now().timestamp());
        let mut hits: Vec<(u32, Uid, ModSeq, u64)> = vec![];
        // Reads (metadata, and bodies for BODY/TEXT) run ahead of the
        // matching, several at a time; decoding happens on the way.
        let loads = {
            let (store, keys, mailbox) = (self.imap.store.clone(), keys.clone(), mailbox.clone());
            futures::stream::iter(rows.iter().map(|r| r.2).collect::<Vec<_>>())
                .map(move |id| {
                    let (store, keys, mailbox) = (store.clone(), keys.clone(), mailbox.clone());
                    async move {
                        let meta = if needs.meta { message::message_meta(&store, &keys, &mailbox, id).await? } else { None };
                        let header = meta.as_ref().filter(|_| !needs.text).map(|m| search::decode_header(&m.header));
                        let text = if needs.text {
                            fetch::read_all(&store, &keys, &mailbox, id)
                                .await?
                                .map(|raw| search::decode_message(&raw, needs.headers || needs.meta))
                        } else {
                            None
                        };
                        Ok::<_, StorageError>((meta, header, text))
                    }
                })
                .buffered(if needs.text { 8 } else { fetch::PREFETCH })
        };
        let mut loads = std::pin::pin!(loads);
        for (seq, u, id, flags, modseq) in &rows {
            let (meta, header, text) = match loads.next().await {
                Some(Ok(x)) => x,
                Some(Err(e)) => return Err(e.into()),
                None => (None, None, None),
            };
            let c = Candidate {
                seq: *seq,
                uid: *u,
                flags,
                modseq: *modseq,
                meta: meta.as_ref(),
                header: header.as_ref().or(text.as_ref()),
                text: text.as_ref(),
            };
            if search::matches(key, &c, &scope) {
                hits.push((*seq, *u, *modseq, *id));
            }
        }
        Ok(hits)
    }

    /// SORT and UID SORT (RFC 5256, RFC 5957 DISPLAY): the messages SEARCH
    /// would find, ordered by the criteria from their stored metadata.
    pub(super) async fn sort(
        &mut self,
        criteria: Vec1<imap_codec::imap_types::extensions::sort::SortCriterion>,
        charset: imap_codec::imap_types::core::Charset<'_>,
        search_criteria: Vec1<SearchKey<'_>>,
        uid: bool,
    ) -> Result<Done, ConnError> {
        let mut rows = match self.sort_rows(charset, search_criteria, uid).await {
            Ok(r) => r,
            Err(d) => return Ok(d),
        };
        sort::sort(&mut rows, criteria.as_ref());
        let mut line = String::from("* SORT");
        for (n, _) in &rows {
            line.push_str(&format!(" {n}"));
        }
        line.push_str("\r\n");
        self.conn.write(line.as_bytes()).await?;
        self.sync(uid, None).await?;
        Ok(Done::Ok(if uid { "UID SORT completed" } else { "SORT completed" }.into()))
    }

    /// THREAD (RFC 5256): ORDEREDSUBJECT; REFERENCES is not offered yet.
    pub(super) async fn thread(
        &mut self,
        algorithm: imap_codec::imap_types::extensions::thread::ThreadingAlgorithm<'_>,
        charset: imap_codec::imap_types::core::Charset<'_>,
        search_criteria: Vec1<SearchKey<'_>>,
        uid: bool,
    ) -> Result<Done, ConnError> {
        use imap_codec::imap_types::extensions::thread::ThreadingAlgorithm;
        if !matches!(algorithm, ThreadingAlgorithm::OrderedSubject) {
            return Ok(Done::Bad(format!("threading algorithm {algorithm} is not supported (THREAD=ORDEREDSUBJECT is)")));
        }
        let rows = match self.sort_rows(charset, search_criteria, uid).await {
            Ok(r) => r,
            Err(d) => return Ok(d),
        };
        let threads = thread::render(&thread::ordered_subject(&rows));
        let line = if threads.is_empty() { "* THREAD\r\n".to_string() } else { format!("* THREAD {threads}\r\n") };
        self.conn.write(line.as_bytes()).await?;
        self.sync(uid, None).await?;
        Ok(Done::Ok(if uid { "UID THREAD completed" } else { "THREAD completed" }.into()))
    }

    /// The messages the search part of SORT or THREAD finds, numbered (UIDs
    /// for the UID form), with their sort keys from the stored metadata.
    async fn sort_rows(
        &mut self,
        charset: imap_codec::imap_types::core::Charset<'_>,
        search_criteria: Vec1<SearchKey<'_>>,
        uid: bool,
    ) -> Result<Vec<(u32, sort::Keys)>, Done> {
        if let Some(no) = unsupported_charset(Some(&charset)) {
            return Err(no);
        }
        let key = SearchKey::And(search_criteria);
        let hits = self.matching(&key).await?;
        let Some(sel) = self.selected.as_ref() else { return Err(Done::Bad("No mailbox selected".into())) };
        let mailbox = sel.info.id.clone();
        let keys = self.user().keys.clone();
        let ids: Vec<u64> = hits.iter().map(|h| h.3).collect();
        let mut metas = std::pin::pin!(fetch::metas(self.imap.store.clone(), keys, mailbox, ids, true));
        let mut rows = Vec::with_capacity(hits.len());
        for h in &hits {
            let k = match metas.next().await {
                Some(Ok(Some(m))) => sort::keys(&m),
                Some(Ok(None)) | None => sort::Keys::default(),
                Some(Err(e)) => return Err(e.into()),
            };
            rows.push((if uid { h.1 } else { h.0 }, k));
        }
        Ok(rows)
    }

    pub(super) async fn search(
        &mut self,
        tag: &str,
        charset: Option<imap_codec::imap_types::core::Charset<'_>>,
        criteria: Vec1<SearchKey<'_>>,
        uid: bool,
        extras: &Extras,
    ) -> Result<Done, ConnError> {
        if let Some(no) = unsupported_charset(charset.as_ref()) {
            return Ok(no);
        }
        let key = SearchKey::And(criteria);
        let hits = match self.matching(&key).await {
            Ok(h) => h,
            Err(d) => return Ok(d),
        };
        let uses_modseq = format!("{key:?}").contains("ModSequence");
        if uses_modseq {
            self.enable_condstore().await?;
        }
        let numbers: Vec<u32> = hits.iter().map(|(s, u, _, _)| if uid { *u } else { *s }).collect();
        let max_modseq = hits.iter().map(|h| h.2).max();
        let modseq_of = |n: u32| hits.iter().find(|h| (if uid { h.1 } else { h.0 }) == n).map(|h| h.2);
        // IMAP4rev2 answers SEARCH with ESEARCH (RFC 9051 §6.4.4), ALL
        // when no RETURN options were given.
        let search_return = match &extras.search_return {
            None if self.enabled.rev2 => Some(vec![]),
            other => other.clone(),
        };
        match &search_return {
            Some(opts) => {
                let opts: Vec<&str> = if opts.is_empty() { vec!["ALL"] } else { opts.iter().map(String::as_str).collect() };
                if opts.contains(&"SAVE") {
                    self.saved = hits.iter().map(|h| h.1).collect();
                }
                let mut line = format!("* ESEARCH (TAG \"{tag}\")");
                if uid {
                    line.push_str(" UID");
                }
                if !numbers.is_empty() {
                    for o in &opts {
                        match *o {
                            "MIN" => line.push_str(&format!(" MIN {}", numbers.iter().min().copied().unwrap_or(0))),
                            "MAX" => line.push_str(&format!(" MAX {}", numbers.iter().max().copied().unwrap_or(0))),
                            "ALL" => line.push_str(&format!(" ALL {}", uid_set(&numbers))),
                            _ => {}
                        }
                    }
                }
                if opts.contains(&"COUNT") {
                    line.push_str(&format!(" COUNT {}", numbers.len()));
                }
                if uses_modseq {
                    // RFC 4731 §3.2: with only MIN and/or MAX, the MODSEQ of
                    // the message(s) returned; otherwise the highest of all.
                    let only_ends = !opts.iter().any(|o| matches!(*o, "ALL" | "COUNT"))
                        && opts.iter().any(|o| matches!(*o, "MIN" | "MAX"));
                    let m = if only_ends {
                        let mut ends = vec![];
                        if opts.contains(&"MIN") {
                            ends.extend(numbers.iter().min().and_then(|n| modseq_of(*n)));
                        }
                        if opts.contains(&"MAX") {
                            ends.extend(numbers.iter().max().and_then(|n| modseq_of(*n)));
                        }
                        ends.into_iter().max()
                    } else {
                        max_modseq
                    };
                    if let Some(m) = m {
                        line.push_str(&format!(" MODSEQ {m}"));
                    }
                }
                // SAVE alone gives no ESEARCH response (RFC 5182 §2.4).
                if !(opts.len() == 1 && opts[0] == "SAVE") {
                    line.push_str("\r\n");
                    self.conn.write(line.as_bytes()).await?;
                }
            }
            None => {
                let mut line = "* SEARCH".to_string();
                for n in &numbers {
                    line.push_str(&format!(" {n}"));
                }
                if uses_modseq {
                    if let Some(m) = max_modseq {
                        line.push_str(&format!(" (MODSEQ {m})"));
                    }
                }
                line.push_str("\r\n");
                self.conn.write(line.as_bytes()).await?;
            }
        }
        self.sync(uid, None).await?;
        Ok(Done::Ok(if uid { "UID SEARCH completed" } else { "SEARCH completed" }.into()))
    }
}
