//! PostgreSQL: the upstream login gatehouse makes with a held credential.

pub mod upstream;
