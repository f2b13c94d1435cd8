//! System tests of the whole suite, black box, one binary.
//!
//! `secrets` installs a global subscriber that captures every log line at
//! TRACE level, so the tests beside it in this binary stay few and small.

mod secrets;
mod sign_in_flow;
