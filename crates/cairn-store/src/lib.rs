//! The Store trait and the conformance suite every backend must pass.
