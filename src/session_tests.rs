//! Session state-machine tests (simulated clock).
