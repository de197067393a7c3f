//! Names for overlay-agent: who is called what, and how containers find out.
//!
//! * [`records`]: the pure record store. The agent turns the endpoints of the cluster into a
//!   `Vec<NameRecord>`, builds an immutable [`Zone`] from it and publishes it with
//!   [`arc_swap::ArcSwap`]; every reader (DNS listeners, `/etc/hosts` rendering, `overlayctl dns
//!   lookup`) sees one consistent zone.
//! * [`hosts`]: the `/etc/hosts` managed block: render it, merge it into an existing file, and
//!   rewrite the file in place (Docker bind-mounts it, so its inode must never change).
//! * [`dns`]: one embedded DNS server for every container on the host, listening on
//!   `127.0.0.11:53` inside each container's network namespace, answering cluster names from the
//!   zone and forwarding everything else upstream.

pub mod dns;
mod error;
pub mod hosts;
pub mod records;

pub use arc_swap::ArcSwap;
pub use error::NamesError;
pub use records::{Answer, NameRecord, Zone};
