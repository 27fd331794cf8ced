//! Unusual activity (`[anomaly]`): rules over logins and sessions that emit
//! `anomaly.*` audit events, count in metrics and post to a webhook.
//!
//! STUB: the anomaly helper fills this in.
