//! The local control API, served on `<run-dir>/overlay.sock` (mode 0600) as HTTP/1.1 with
//! JSON bodies, so `curl --unix-socket` works for debugging too.
//!
//! [`types`] holds the wire types shared by the server (in the daemon) and the client (in
//! `overlayctl`); [`server`] maps routes to [`crate::agent::Agent`] calls; [`client`] is the
//! small client `overlayctl` uses.

pub mod client;
pub mod server;
pub mod types;
