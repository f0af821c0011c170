//! Store on SQLite (embedded default).
