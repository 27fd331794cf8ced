//! Database proxies: protocol-aware relays to database targets.

pub mod postgres;
