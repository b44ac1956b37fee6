//! Keeping the client in step (RFC 9051 §7.5.1): the untagged EXISTS,
//! EXPUNGE/VANISHED, RECENT, FLAGS and FETCH FLAGS after commands, on NOOP
//! and in IDLE (RFC 2177); CONDSTORE enabled by use (RFC 7162 §3.1); the
//! wait for mail filed at login. It must not change the mailbox.

use super::*;

impl Session {
    /// A CONDSTORE enabling command (RFC 7162 §3.1: FETCH or SEARCH with
    /// MODSEQ, STORE UNCHANGEDSINCE, STATUS HIGHESTMODSEQ, ...): from now
    /// on every untagged FETCH carries MODSEQ, and the first one with a
    /// mailbox selected reports its HIGHESTMODSEQ.
    pub(super) async fn enable_condstore(&mut self) -> Result<(), ConnError> {
        if self.enabled.condstore {
            return Ok(());
        }
        self.enabled.condstore = true;
        if let Some(sel) = &self.selected {
            let line = format!("* OK [HIGHESTMODSEQ {}] Highest\r\n", sel.told_modseq);
            self.conn.write(line.as_bytes()).await?;
        }
        Ok(())
    }

    /// Tells the client about keywords new to the selected mailbox (FLAGS,
    /// PERMANENTFLAGS) before a response that may show them: the view a
    /// command renders from may be newer than the last sync.
    pub(super) async fn announce_flags(&mut self) -> Result<(), ConnError> {
        let Some(sel) = self.selected.as_mut() else { return Ok(()) };
        let (told, read_only) = (sel.flags_told, sel.read_only);
        let update = sel
            .mb
            .with_view(|v| v.filter(|idx| idx.flag_count() != told).map(|idx| flags_responses(idx, read_only)))
            .await;
        if let Some((lines, n)) = update {
            sel.flags_told = n;
            self.conn.write(&lines).await?;
        }
        Ok(())
    }

    /// Waits for the filing started at login (once; bounded, in case
    /// storage stalls: the mail then arrives as EXISTS later).
    pub(super) async fn settle_incoming(&mut self) {
        if let Some(rx) = self.filing.take() {
            let _ = tokio::time::timeout(FILING_WAIT, rx).await;
        }
    }

    /// After this session's own change to the selected mailbox: make the
    /// view show it. Sequenced on this node (`shown`), it does already, and
    /// only a change from elsewhere (a stale mark) calls for a log read.
    /// Marks are taken before the read, so one arriving during it is not lost.
    pub(super) async fn catch_up(&mut self, shown: bool) {
        let Some(sel) = self.selected.as_mut() else { return };
        let c = *sel.changes.borrow_and_update();
        if shown && c.stale == sel.seen_stale {
            return;
        }
        sel.seen_stale = c.stale;
        if let Err(e) = sel.mb.refresh().await {
            log::debug!("refresh after an operation: {e}");
        }
    }

    /// Tells the client what changed in the selected mailbox. Returns the
    /// UIDs whose flags were told. `skip_modseq`: changes with this MODSEQ
    /// are the client's own STORE .SILENT and are not echoed.
    pub(super) async fn sync(&mut self, expunges: bool, skip_modseq: Option<ModSeq>) -> Result<Vec<Uid>, ConnError> {
        let rev2 = self.enabled.rev2;
        let condstore = self.enabled.condstore;
        let qresync = self.enabled.qresync;
        let Some(sel) = self.selected.as_mut() else { return Ok(vec![]) };
        // Compared, not `has_changed`: IDLE's wait has consumed the wake-up.
        let c = *sel.changes.borrow_and_update();
        if c.stale != sel.seen_stale {
            sel.seen_stale = c.stale;
            if let Err(e) = sel.mb.refresh().await {
                log::debug!("refresh of a selected mailbox: {e}");
            }
        }
        let told = sel.told_modseq;
        let (flags_told, read_only) = (sel.flags_told, sel.read_only);
        let uids = &mut sel.uids;
        let recent = &sel.recent;
        let (mut out, flagged, highest, flags_now, new) = sel
            .mb
            .with_view(|v| {
                let Some(idx) = v else { return (vec![], vec![], told, flags_told, vec![]) };
                let mut out = vec![];
                // A keyword new to the mailbox: FLAGS first, then the
                // FETCHes that use it.
                let mut flags_now = flags_told;
                if idx.flag_count() != flags_told {
                    let (lines, n) = flags_responses(idx, read_only);
                    out.extend_from_slice(&lines);
                    flags_now = n;
                }
                if expunges {
                    // Reported from the highest sequence number down, so each
                    // number is still right when the client applies it.
                    let mut gone = vec![];
                    for i in (0..uids.len()).rev() {
                        if idx.get(uids[i]).is_none() {
                            if !qresync {
                                out.extend_from_slice(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
                            }
                            gone.push(uids[i]);
                        }
                    }
                    if !gone.is_empty() {
                        uids.retain(|u| idx.get(*u).is_some());
                    }
                    if qresync && !gone.is_empty() {
                        out.extend_from_slice(format!("* VANISHED {}\r\n", uid_set(&gone)).as_bytes());
                    }
                }
                let mut flagged = vec![];
                for m in idx.changed_since(told) {
                    if Some(m.modseq) == skip_modseq {
                        continue;
                    }
                    if let Ok(pos) = uids.binary_search(&m.uid) {
                        out.extend_from_slice(format!("* {} FETCH (UID {} FLAGS (", pos + 1, m.uid).as_bytes());
                        out.extend_from_slice(shown_flags(recent, m.uid, idx.flag_names(m.flags)).join(" ").as_bytes());
                        out.push(b')');
                        if condstore {
                            out.extend_from_slice(format!(" MODSEQ ({})", m.modseq).as_bytes());
                        }
                        out.extend_from_slice(b")\r\n");
                        flagged.push(m.uid);
                    }
                }
                let last = uids.last().copied().unwrap_or(0);
                let before = uids.len();
                uids.extend(idx.messages().iter().filter(|m| m.uid > last).map(|m| m.uid));
                if uids.len() != before {
                    out.extend_from_slice(format!("* {} EXISTS\r\n", uids.len()).as_bytes());
                }
                (out, flagged, idx.highestmodseq, flags_now, uids[before..].to_vec())
            })
            .await;
        sel.told_modseq = highest;
        sel.flags_told = flags_now;
        // IMAP4rev1: new mail this session is first told about is recent
        // here (a read-write session claims it), and RECENT follows EXISTS.
        if !rev2 && !new.is_empty() {
            let (keys, id) = (self.user.as_ref().map(|u| u.keys.clone()), sel.info.id.clone());
            if let Some(keys) = keys {
                let upto = new.last().map_or(1, |u| u + 1);
                let mine = if read_only {
                    let floor = self.imap.mail.recent.floor(&keys, &id).await;
                    floor..upto
                } else {
                    self.imap.mail.recent.claim(&keys, &id, upto).await
                };
                sel.recent.extend(new.iter().copied().filter(|u| mine.contains(u)));
            }
            let uids = &sel.uids;
            sel.recent.retain(|u| uids.binary_search(u).is_ok());
            out.extend_from_slice(format!("* {} RECENT\r\n", sel.recent.len()).as_bytes());
        }
        self.conn.write(&out).await?;
        Ok(flagged)
    }

    pub(super) async fn idle(&mut self, tag: &str) -> Result<Done, ConnError> {
        let _ = tag;
        self.sync(true, None).await?;
        self.conn.write(b"+ idling\r\n").await?;
        self.conn.flush().await?;
        let timeout = self.imap.limits.idle_timeout;
        loop {
            enum Event {
                Client(Result<Frame, ConnError>),
                Changed,
            }
            let event = {
                let conn = &mut self.conn;
                match self.selected.as_mut() {
                    Some(sel) => tokio::select! {
                        f = conn.next(timeout) => Event::Client(f),
                        r = sel.changes.changed() => match r {
                            Ok(()) => Event::Changed,
                            // The engine went away; keep idling on the client.
                            Err(_) => Event::Client(conn.next(timeout).await),
                        },
                    },
                    None => Event::Client(conn.next(timeout).await),
                }
            };
            match event {
                Event::Changed => {
                    // sync reads the log if the change came from elsewhere.
                    self.sync(true, None).await?;
                    self.conn.flush().await?;
                }
                Event::Client(Ok(Frame::Message(m))) => {
                    if String::from_utf8_lossy(&m).trim().eq_ignore_ascii_case("DONE") {
                        return Ok(Done::Ok("IDLE terminated".into()));
                    }
                    return Ok(Done::Bad("Expected DONE to end IDLE".into()));
                }
                Event::Client(Ok(Frame::Refused { .. })) => return Ok(Done::Bad("Expected DONE to end IDLE".into())),
                Event::Client(Err(ConnError::Timeout)) => {
                    self.conn.write(b"* BYE Autologout; idle for too long\r\n").await?;
                    self.logout = true;
                    return Ok(Done::No("IDLE timed out".into()));
                }
                Event::Client(Err(e)) => return Err(e),
            }
        }
    }
}
