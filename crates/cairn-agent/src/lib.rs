//! The worker: lease jobs, check out code, run plugins, stream logs.
