//! Signed webhooks (Standard Webhooks): the signing secret and its sealing at
//! rest, the signature header, the JSON body, the retry schedule, the SSRF
//! guard and the sender that POSTs one delivery.

pub mod payload;
pub mod schedule;
pub mod secret;
pub mod send;
pub mod sign;
pub mod ssrf;

pub use payload::body;
pub use schedule::Schedule;
pub use secret::SigningSecret;
pub use send::Sender;
pub use sign::signature_header;
pub use ssrf::{Guard, Refusal};
