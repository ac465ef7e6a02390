//! The security suite: master-key handling, and the attacks a security team would try.

mod admission;
mod at_rest;
mod brute;
mod canary;
mod crypto;
mod exhaustion;
mod metrics_injection;
mod restrictions;
mod smuggling;
mod ssrf;
mod token_totals;
mod way_out;
