//! `estafette user add|passwd|delete|list`. Passwords come from the
//! terminal (asked twice) or from standard input (`--password-stdin`),
//! never from the command line, where other users could read them.

use std::io::{BufRead, IsTerminal};

use clap::Subcommand;

use super::node::ask;
use super::NodeSelector;
use crate::server::admin::{Request, Response};

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user and their keys.
    Add {
        login: String,
        /// An address delivering to this user (repeat for aliases).
        #[arg(long = "address", required = true)]
        addresses: Vec<String>,
        /// The user's home region (their mailboxes are sequenced there).
        #[arg(long = "home")]
        home_region: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        node: NodeSelector,
    },
    /// Change a user's password (needs the current one); `--rotate` also
    /// replaces the master key and re-encrypts what it protects.
    Passwd {
        login: String,
        #[arg(long)]
        rotate: bool,
        /// Read the current and the new password from the first two lines of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        node: NodeSelector,
    },
    /// Delete a user and all their mail.
    Delete {
        login: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        node: NodeSelector,
    },
    /// Set a user's storage quota (e.g. 10G), or remove it with `none`.
    Quota {
        login: String,
        size: String,
        #[command(flatten)]
        node: NodeSelector,
    },
    /// List users, their addresses, quotas and usage (as a quorum of the
    /// cluster holds them), and any conflict the directory resolved.
    List {
        /// Show the node's own copy instead, without asking the cluster
        /// (to see whether a change made elsewhere has reached it).
        #[arg(long)]
        cached: bool,
        #[command(flatten)]
        node: NodeSelector,
    },
}

fn stdin_lines(n: usize) -> Result<Vec<String>, String> {
    let mut lines = vec![];
    for line in std::io::stdin().lock().lines().take(n) {
        lines.push(line.map_err(|e| format!("reading standard input: {e}"))?.trim_end_matches('\r').to_string());
    }
    if lines.len() < n {
        return Err(format!("expected {n} line(s) on standard input"));
    }
    Ok(lines)
}

/// Asks for a new password twice on the terminal.
fn prompt_new(what: &str) -> Result<String, String> {
    if !std::io::stdin().is_terminal() {
        return Err("no terminal to ask for the password: use --password-stdin".into());
    }
    let a = rpassword::prompt_password(format!("{what}: ")).map_err(|e| e.to_string())?;
    let b = rpassword::prompt_password(format!("{what} (again): ")).map_err(|e| e.to_string())?;
    if a != b {
        return Err("the two passwords differ".into());
    }
    Ok(a)
}

fn done(r: Response) -> Result<(), String> {
    match r {
        Response::Done => Ok(()),
        other => Err(format!("unexpected answer: {other:?}")),
    }
}

pub async fn run(cmd: UserCommand) -> Result<(), String> {
    match cmd {
        UserCommand::Add { login, addresses, home_region, password_stdin, node } => {
            let password = if password_stdin { stdin_lines(1)?.remove(0) } else { prompt_new("Password")? };
            done(ask(&node, Request::UserAdd { login: login.clone(), password, addresses, home_region }).await?)?;
            println!("user `{login}` created");
            Ok(())
        }
        UserCommand::Passwd { login, rotate, password_stdin, node } => {
            let (current, new) = if password_stdin {
                let mut l = stdin_lines(2)?;
                let new = l.remove(1);
                (l.remove(0), new)
            } else {
                if !std::io::stdin().is_terminal() {
                    return Err("no terminal to ask for the passwords: use --password-stdin".into());
                }
                let current = rpassword::prompt_password("Current password: ").map_err(|e| e.to_string())?;
                (current, prompt_new("New password")?)
            };
            done(ask(&node, Request::UserPasswd { login: login.clone(), current, new, rotate }).await?)?;
            println!("password of `{login}` changed{}", if rotate { ", master key rotated" } else { "" });
            Ok(())
        }
        UserCommand::Delete { login, yes, node } => {
            if !yes {
                if !std::io::stdin().is_terminal() {
                    return Err("refusing to delete without confirmation: add --yes".into());
                }
                eprint!("This deletes `{login}` and all their mail. Type the login to confirm: ");
                let typed = stdin_lines(1)?.remove(0);
                if typed.trim() != login {
                    return Err("not confirmed; nothing deleted".into());
                }
            }
            done(ask(&node, Request::UserDelete { login: login.clone() }).await?)?;
            println!("user `{login}` deleted");
            Ok(())
        }
        UserCommand::Quota { login, size, node } => {
            let quota = (!size.eq_ignore_ascii_case("none")).then(|| size.clone());
            done(ask(&node, Request::UserQuota { login: login.clone(), quota }).await?)?;
            println!("quota of `{login}`: {size}");
            Ok(())
        }
        UserCommand::List { cached, node } => match ask(&node, Request::UserList { cached }).await? {
            Response::Users { users, notes } => {
                println!("{:<24} {:<12} {:>10} {:>10}  ADDRESSES", "LOGIN", "HOME", "USED", "QUOTA");
                for u in users {
                    let used = u.used.map(|b| bytesize::ByteSize(b).to_string()).unwrap_or_else(|| "?".into());
                    println!(
                        "{:<24} {:<12} {:>10} {:>10}  {}",
                        u.login,
                        u.home_region.as_deref().unwrap_or("-"),
                        used,
                        u.quota.as_deref().unwrap_or("-"),
                        u.addresses.join(", ")
                    );
                }
                for n in notes {
                    println!("note: {n}");
                }
                Ok(())
            }
            other => Err(format!("unexpected answer: {other:?}")),
        },
    }
}
