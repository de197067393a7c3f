//! Developer tasks of overlay-agent, as a library so the end-to-end tests drive the same lab
//! the `cargo xtask lab` command builds.
//!
//! - [`lab`]: N hosts as network namespaces on an underlay bridge, the KV, one agent per host;
//! - [`bench`]: the benchmarks, side by side in one run;
//! - [`pki`]: certificates for the lab's etcd over TLS;
//! - [`package`]: the Debian package (`cargo xtask package`);
//! - [`chaos`]: faults with invariants (`cargo xtask chaos`);
//! - [`sh`]: small helpers to run commands and enter namespaces;
//! - [`vagrant`]: the lab on real VMs (`vagrant/`): box, up, end-to-end test, down.

pub mod bench;
pub mod chaos;
pub mod lab;
pub mod package;
pub mod pki;
pub mod scale;
pub mod sh;
pub mod vagrant;
