//! Cairn's domain: stacks, runs, the run state machine, delta. No I/O.
