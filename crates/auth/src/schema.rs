// @generated in the shape of `diesel print-schema`; keep in step with migrations/.

diesel::table! {
    login_challenges (token_hash) {
        token_hash -> Bytea,
        user_id -> Uuid,
        credentials_hash -> Bytea,
        client_address -> Text,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    one_time_tokens (token_hash) {
        token_hash -> Bytea,
        user_id -> Uuid,
        purpose -> Text,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    refresh_tokens (token_hash) {
        token_hash -> Bytea,
        session_id -> Uuid,
        created_at -> Timestamptz,
        expires_at -> Timestamptz,
        spent_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    revocations (sequence) {
        sequence -> Int8,
        session_id -> Nullable<Uuid>,
        user_id -> Nullable<Uuid>,
        not_before -> Timestamptz,
    }
}

diesel::table! {
    sessions (id) {
        id -> Uuid,
        user_id -> Uuid,
        created_at -> Timestamptz,
        last_used_at -> Timestamptz,
        expires_at -> Timestamptz,
        revoked_at -> Nullable<Timestamptz>,
        revoke_reason -> Nullable<Text>,
        user_agent -> Text,
        client_address -> Text,
    }
}

diesel::table! {
    signing_keys (kid) {
        kid -> Text,
        private_key -> Nullable<Bytea>,
        public_key -> Bytea,
        created_at -> Timestamptz,
        sealed_with -> Nullable<Text>,
    }
}

diesel::table! {
    throttle_counters (subject) {
        subject -> Text,
        account -> Nullable<Text>,
        hits -> Int4,
        window_start -> Timestamptz,
        not_before -> Nullable<Timestamptz>,
        expires_at -> Timestamptz,
    }
}

diesel::table! {
    totp_factors (user_id) {
        user_id -> Uuid,
        secret -> Bytea,
        sealed_with -> Nullable<Text>,
        last_used_step -> Nullable<Int8>,
        created_at -> Timestamptz,
        confirmed_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    totp_recovery_codes (user_id, code_hash) {
        user_id -> Uuid,
        code_hash -> Bytea,
        used_at -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    users (id) {
        id -> Uuid,
        email -> Text,
        password_hash -> Text,
        roles -> Array<Text>,
        email_verified -> Bool,
        disabled -> Bool,
        register_request_id -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        email_skeleton -> Nullable<Text>,
    }
}

diesel::table! {
    external_identities (id) {
        id -> Uuid,
        user_id -> Uuid,
        provider -> Text,
        issuer -> Text,
        subject -> Text,
        email -> Nullable<Text>,
        created_at -> Timestamptz,
        last_sign_in_at -> Timestamptz,
    }
}

diesel::table! {
    provider_sign_ins (state_hash) {
        state_hash -> Bytea,
        provider -> Text,
        browser_hash -> Bytea,
        nonce -> Text,
        pkce_verifier -> Text,
        return_url -> Text,
        app_code_challenge -> Text,
        link_user_id -> Nullable<Uuid>,
        expires_at -> Timestamptz,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    sign_in_codes (code_hash) {
        code_hash -> Bytea,
        user_id -> Uuid,
        provider -> Text,
        app_code_challenge -> Text,
        expires_at -> Timestamptz,
        created_at -> Timestamptz,
    }
}

diesel::joinable!(login_challenges -> users (user_id));
diesel::joinable!(one_time_tokens -> users (user_id));
diesel::joinable!(refresh_tokens -> sessions (session_id));
diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(totp_factors -> users (user_id));
diesel::joinable!(totp_recovery_codes -> totp_factors (user_id));

diesel::allow_tables_to_appear_in_same_query!(
    login_challenges,
    one_time_tokens,
    refresh_tokens,
    revocations,
    sessions,
    signing_keys,
    throttle_counters,
    totp_factors,
    totp_recovery_codes,
    users,
);
