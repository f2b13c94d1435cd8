//! The `webhook-signature` header: HMAC-SHA256 over
//! `<webhook-id>.<webhook-timestamp>.<body>`, once per signing secret.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

use super::secret::SigningSecret;

/// The version tag of symmetric (HMAC-SHA256) signatures.
pub const VERSION: &str = "v1";

/// The `webhook-signature` value: `v1,<base64 signature>` for each secret,
/// space-separated, so a receiver keeps verifying while a rotated secret
/// overlaps with the one it replaces. `timestamp` is the attempt's time in
/// unix seconds, as sent in `webhook-timestamp`.
pub fn signature_header(secrets: &[&SigningSecret], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    secrets
        .iter()
        .map(|secret| format!("{VERSION},{}", STANDARD.encode(sign(secret, msg_id, timestamp, body))))
        .collect::<Vec<_>>()
        .join(" ")
}

fn sign(secret: &SigningSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length (longer ones are hashed first), so this
    // cannot fail; the fallback keeps the code free of panics all the same.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return [0; 32];
    };
    mac.update(msg_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference libraries' signing test (the Rust library's `test_sign`).
    const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    const MSG_ID: &str = "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk";
    const TIMESTAMP: i64 = 1_649_367_553;
    const PAYLOAD: &[u8] = br#"{"email":"test@example.com","username":"test_user"}"#;
    const SIGNATURE: &str = "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=";

    #[test]
    fn signs_the_reference_test_vectors() -> anyhow::Result<()> {
        let secret = SigningSecret::parse_whsec(SECRET)?;
        assert_eq!(signature_header(&[&secret], MSG_ID, TIMESTAMP, PAYLOAD), SIGNATURE);

        // The Go, JavaScript, Java, PHP and C# libraries' signing test.
        let secret = SigningSecret::parse_whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
        assert_eq!(
            signature_header(
                &[&secret],
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        Ok(())
    }

    /// Verifies the way a receiver does: recomputes each `v1` signature and
    /// compares in constant time.
    fn verifies(header: &str, secret: &SigningSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> bool {
        header.split(' ').any(|entry| {
            let Some((VERSION, signature)) = entry.split_once(',') else {
                return false;
            };
            let Ok(signature) = STANDARD.decode(signature) else {
                return false;
            };
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
                return false;
            };
            mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
            mac.update(body);
            mac.verify_slice(&signature).is_ok()
        })
    }

    #[test]
    fn each_secret_signs_and_each_signature_verifies() -> anyhow::Result<()> {
        let (old, new) = (SigningSecret::generate()?, SigningSecret::generate()?);
        let body = br#"{"type":"order.paid"}"#;
        let header = signature_header(&[&new, &old], "msg_1", 1_700_000_000, body);
        assert_eq!(header.split(' ').count(), 2, "{header}");
        assert!(header.split(' ').all(|s| s.starts_with("v1,")), "{header}");
        assert!(verifies(&header, &new, "msg_1", 1_700_000_000, body));
        assert!(verifies(&header, &old, "msg_1", 1_700_000_000, body));

        let stranger = SigningSecret::generate()?;
        assert!(
            !verifies(&header, &stranger, "msg_1", 1_700_000_000, body),
            "another secret"
        );
        assert!(!verifies(&header, &new, "msg_2", 1_700_000_000, body), "another id");
        assert!(!verifies(&header, &new, "msg_1", 1_700_000_001, body), "another time");
        assert!(!verifies(&header, &new, "msg_1", 1_700_000_000, b"{}"), "another body");
        Ok(())
    }

    #[test]
    fn no_secrets_give_an_empty_header() {
        assert_eq!(signature_header(&[], "msg_1", 0, b""), "");
    }
}
