//! End-to-end tests: real server, agents, plugins and vendor binaries.
