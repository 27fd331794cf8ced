//! MySQL and MariaDB access (issue 12). This first slice is the upstream
//! side only: [`packet`] framing and [`upstream`] (greeting probe, login
//! over verified TLS with the held password, `KILL QUERY`). The proxy that
//! greets clients, relays and records builds on it.

pub mod packet;
pub mod upstream;
