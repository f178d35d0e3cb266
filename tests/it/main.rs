//! One integration-test binary (each extra one would link the whole AWS SDK again).
//! Run through `scripts/test`, which starts the emulators these tests talk to.

mod adoption;
mod cli;
mod common;
mod corpus;
mod faults;
mod fuzz;
mod proxy;
mod serve;
mod tour;
