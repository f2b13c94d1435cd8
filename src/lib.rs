//! The Keel contract: typed gRPC clients and servers for every Keel service,
//! generated from `proto/`, and the encoded descriptor set that reflection and
//! the gateway load.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use keel::auth::v1::{auth_service_client::AuthServiceClient, GetJwksRequest};
//!
//! let mut auth = AuthServiceClient::connect("http://127.0.0.1:50051").await?;
//! let jwks = auth.get_jwks(GetJwksRequest {}).await?.into_inner();
//! println!("{} signing keys", jwks.keys.len());
//! # Ok(()) }
//! ```

#![allow(missing_docs)]
// The generated code carries the protos' comments as they are written.
#![allow(
    clippy::doc_lazy_continuation,
    rustdoc::invalid_html_tags,
    rustdoc::bare_urls,
    rustdoc::broken_intra_doc_links
)]

/// The encoded `FileDescriptorSet` of every Keel proto and its imports.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/keel_descriptor.bin"));

/// The `keel.*` packages, nested as their names are (so generated code that
/// names `google.api` types finds them); re-exported at the crate root.
pub mod keel {
    /// `keel.auth.v1`: credentials, tokens, sessions.
    pub mod auth {
        pub mod v1 {
            tonic::include_proto!("keel.auth.v1");
        }
    }

    /// `keel.accounts.v1`: profiles and the balance ledger.
    pub mod accounts {
        pub mod v1 {
            tonic::include_proto!("keel.accounts.v1");
        }
    }

    /// `keel.orders.v1`: catalog, stock, orders.
    pub mod orders {
        pub mod v1 {
            tonic::include_proto!("keel.orders.v1");
        }
    }

    /// `keel.notifications.v1`: email, webhooks, the in-app inbox.
    pub mod notifications {
        pub mod v1 {
            tonic::include_proto!("keel.notifications.v1");
        }
    }

    /// `keel.events.v1`: the event envelope and the EventSink.
    pub mod events {
        pub mod v1 {
            tonic::include_proto!("keel.events.v1");
        }
    }

    /// `keel.common.v1`: types shared by every package.
    pub mod common {
        pub mod v1 {
            tonic::include_proto!("keel.common.v1");
        }
    }
}

pub use self::keel::{accounts, auth, common, events, notifications, orders};

/// `google.api`: the HTTP annotations the gateway routes by.
pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
}
