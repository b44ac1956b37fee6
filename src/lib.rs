//! Estafette: a multi-region, encrypted-at-rest IMAP + LMTP mail server
//! whose every node is also a replica of an embedded Garage cluster.
//!
//! Layers, each depending only on those below it (DESIGN.md §1):
//!
//! ```text
//! cli      clap commands (server, dev, wan, config, cluster, bench)
//! server   wiring: config -> storage -> accounts -> ...; admin socket, metrics, signals
//! lmtp     LMTP front end (delivery from the MTA)
//! mail     the mailbox engine: logs, sequencer, UID/MODSEQ index
//! accounts user directory, authentication, key unlock and cache, throttling
//! crypto   key hierarchy and sealing, nothing else
//! storage  the embedded Garage node and the Store API (items, blobs, peer RPC)
//! config   the TOML configuration, typed and validated
//! wan      dev/test only: the emulated WAN between `dev` regions (no deps)
//! ```
//!
//! The binary is a thin `main` over [`cli::main`]; the library exists so
//! that integration tests and benchmarks drive the same code in-process.

pub mod accounts;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod imap;
pub mod lmtp;
pub mod logging;
pub mod mail;
pub mod server;
pub mod storage;
pub mod wan;
