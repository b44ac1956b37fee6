//! Connection state commands: STARTTLS, LOGIN and AUTHENTICATE's login
//! (RFC 9051 §6.2), ENABLE (RFC 5161). They change what the session may
//! do; they must not touch a mailbox.

use super::*;

impl Session {
    pub(super) async fn starttls(&mut self, tag: &str) -> Result<Done, ConnError> {
        let Some(cfg) = self.imap.tls.clone() else {
            return Ok(Done::Bad("STARTTLS is not available here".into()));
        };
        if self.conn.tls {
            return Ok(Done::Bad("TLS is already active".into()));
        }
        self.conn.write(format!("{tag} OK Begin TLS negotiation now\r\n").as_bytes()).await?;
        self.conn.start_tls(cfg).await?;
        // The tagged response went out before the handshake; nothing more
        // until the client speaks over TLS.
        Ok(Done::Silent)
    }

    pub(super) async fn login(&mut self, login: &str, password: &str) -> Done {
        if !self.conn.tls && !self.imap.plaintext_auth {
            return Done::No("[PRIVACYREQUIRED] Use TLS (STARTTLS or port 993) to log in".into());
        }
        match self.imap.accounts.login(login, password, self.peer.ip()).await {
            Ok(s) => {
                let keys = s.keys().clone();
                self.user = Some(User {
                    login: s.login().to_string(),
                    keys: keys.clone(),
                    mailboxes: Mailboxes::new(self.imap.store.clone(), keys.clone()),
                    _session: s,
                });
                // Mail delivered while the user was away goes into INBOX
                // now; the mailbox commands that follow wait for it.
                self.filing = Some(self.imap.mail.file_queued_now(keys));
                log::info!("IMAP login of {} from {}", self.user().login, self.peer);
                Done::Ok(format!("[CAPABILITY {}] Logged in", self.capabilities()))
            }
            Err(AccountsError::AuthFailed) => Done::No("[AUTHENTICATIONFAILED] Authentication failed".into()),
            Err(e) if e.is_transient() => Done::No(format!("[UNAVAILABLE] {e}; try again")),
            Err(e) => {
                log::error!("login of {login}: {e}");
                Done::No("[SERVERBUG] Login failed on the server side".into())
            }
        }
    }

    pub(super) async fn enable(&mut self, caps: Vec1<CapabilityEnable<'_>>) -> Result<Done, ConnError> {
        let mut on = vec![];
        for c in caps.as_ref() {
            let name = c.to_string().to_ascii_uppercase();
            match name.as_str() {
                "CONDSTORE" => {
                    self.enabled.condstore = true;
                    on.push("CONDSTORE");
                }
                "QRESYNC" => {
                    self.enabled.condstore = true;
                    self.enabled.qresync = true;
                    on.push("QRESYNC");
                }
                "IMAP4REV2" => {
                    self.enabled.rev2 = true;
                    on.push("IMAP4rev2");
                }
                _ => {}
            }
        }
        let line = if on.is_empty() { "* ENABLED\r\n".to_string() } else { format!("* ENABLED {}\r\n", on.join(" ")) };
        self.conn.write(line.as_bytes()).await?;
        Ok(Done::Ok("ENABLE completed".into()))
    }
}
