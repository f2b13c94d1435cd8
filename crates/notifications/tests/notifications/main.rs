//! Notifications' integration tests, one binary: a real suite with a real
//! SMTP server and webhook receivers in-process.

mod common;
mod dead_letter_crash;
mod email;
mod fair_delivery;
mod fair_streams;
mod flow;
mod gateway;
mod inbox;
mod mail;
mod preferences;
mod rules;
mod silent;
mod webhook_sender;
mod webhooks;
