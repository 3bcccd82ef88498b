//! # wasm-cache-testkit
//!
//! Test support shared by the workspace's tests, the demo and the benchmarks:
//! sample modules and archives ([`modules`]), a real HTTP(S) server on loopback
//! (`http`), and a real `docker-registry` (the CNCF distribution server) on
//! 127.0.0.1 with images pushed in every supported layout (`registry`, `images`).
//! Not published: it starts processes and servers, which no library should.

mod certs;
pub mod http;
pub mod images;
pub mod modules;
pub mod netns;
pub mod registry;
pub mod token;
