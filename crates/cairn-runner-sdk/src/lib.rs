//! Runner plugin handshake and serve/connect helpers.
