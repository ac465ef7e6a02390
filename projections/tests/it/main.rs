//! Given / when / then tests of the projections: a log is built from typed events, sealed
//! into a hash chain, and folded. No I/O.

// `cfg(test)` tells clippy that these modules are test code, where unwraps are allowed.
#[cfg(test)]
mod keys;
#[cfg(test)]
mod providers;
#[cfg(test)]
mod replay;
#[cfg(test)]
mod snapshot;
#[cfg(test)]
mod state;
#[cfg(test)]
mod support;
#[cfg(test)]
mod usage;
#[cfg(test)]
mod users;
