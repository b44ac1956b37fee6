//! QUOTA (RFC 9208, STORAGE only): GETQUOTA/GETQUOTAROOT answers and the
//! check APPEND and COPY make. SETQUOTA is refused elsewhere (quotas are
//! the operator's).

use super::*;

impl Session {
    /// The user's quota in bytes, as the users file has it now.
    pub(super) fn quota(&self) -> Option<u64> {
        self.imap.accounts.directory().user(&self.user().login).and_then(|u| u.quota_bytes())
    }

    /// `* QUOTA "" (STORAGE used limit)` in KiB, when the user has a quota.
    pub(super) async fn quota_line(&mut self) -> Result<Done, ConnError> {
        let user = self.user();
        let quota = self.quota();
        if let Some(q) = quota {
            let used = match self.imap.mail.usage.current(&user.keys.user).await {
                Ok(u) => u,
                Err(e) => return Ok(e.into()),
            };
            let line = format!("* QUOTA \"\" (STORAGE {} {})\r\n", used.div_ceil(1024), q / 1024);
            self.conn.write(line.as_bytes()).await?;
        } else {
            self.conn.write(b"* QUOTA \"\" ()\r\n").await?;
        }
        Ok(Done::Ok("GETQUOTA completed".into()))
    }

    /// Refuses `bytes` more if they would take the user over quota.
    pub(super) async fn check_quota(&self, bytes: u64) -> Option<Done> {
        let user = self.user();
        let quota = self.quota()?;
        match self.imap.mail.usage.current(&user.keys.user).await {
            Ok(used) if used.saturating_add(bytes) > quota => Some(Done::No(format!(
                "[OVERQUOTA] Quota exceeded ({used} of {quota} bytes used)"
            ))),
            Ok(_) => None,
            Err(e) => Some(e.into()),
        }
    }
}
