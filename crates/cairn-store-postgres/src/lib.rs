//! Store on PostgreSQL.
