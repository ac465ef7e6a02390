//! The security suite: master-key handling, and the attacks a security team would try.

mod at_rest;
mod brute;
mod canary;
mod crypto;
mod exhaustion;
mod restrictions;
mod smuggling;
mod ssrf;
