//! Who is calling and may they: access tokens and their verification,
//! revocations as auth publishes them, the tokens services present to each
//! other, and the scopes those carry.

pub mod auth_service;
pub mod lifetime;
pub mod principal;
pub mod revocations;
pub mod scopes;
pub mod service_token;
pub mod verifier;
