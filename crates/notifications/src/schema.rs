// @generated in the shape of `diesel print-schema`; keep in step with migrations/.

pub mod sql_types {
    #[derive(diesel::query_builder::QueryId, Clone, Debug, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "channel"))]
    pub struct Channel;

    #[derive(diesel::query_builder::QueryId, Clone, Debug, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "delivery_state"))]
    pub struct DeliveryState;
}

diesel::table! {
    recipients (user_id) {
        user_id -> Uuid,
        email -> Text,
        update_time -> Timestamptz,
    }
}

diesel::table! {
    inboxes (user_id) {
        user_id -> Uuid,
        last_seq -> Int8,
    }
}

diesel::table! {
    notifications (id) {
        id -> Uuid,
        user_id -> Uuid,
        seq -> Int8,
        event_type -> Text,
        event_id -> Uuid,
        title -> Text,
        body -> Text,
        read_time -> Nullable<Timestamptz>,
        create_time -> Timestamptz,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::Channel;

    preferences (user_id) {
        user_id -> Uuid,
        default_channels -> Array<Channel>,
        event_types -> Jsonb,
        version -> Int8,
        update_time -> Timestamptz,
    }
}

diesel::table! {
    webhook_endpoints (id) {
        id -> Uuid,
        user_id -> Uuid,
        url -> Text,
        event_types -> Array<Text>,
        description -> Text,
        secret -> Bytea,
        previous_secret -> Nullable<Bytea>,
        previous_secret_expire_time -> Nullable<Timestamptz>,
        sealed_with -> Nullable<Text>,
        failing_since -> Nullable<Timestamptz>,
        disable_time -> Nullable<Timestamptz>,
        disable_reason -> Text,
        create_time -> Timestamptz,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::{Channel, DeliveryState};

    deliveries (id) {
        id -> Uuid,
        event_id -> Uuid,
        channel -> Channel,
        target -> Text,
        user_id -> Uuid,
        event_type -> Text,
        event -> Nullable<Bytea>,
        state -> DeliveryState,
        attempt_count -> Int4,
        next_attempt_time -> Timestamptz,
        lease_until -> Nullable<Timestamptz>,
        last_status -> Nullable<Int4>,
        last_error -> Text,
        create_time -> Timestamptz,
        finish_time -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::Channel;

    dead_letters (id) {
        id -> Uuid,
        delivery_id -> Uuid,
        channel -> Channel,
        target -> Text,
        user_id -> Uuid,
        event_id -> Uuid,
        event_type -> Text,
        payload -> Text,
        attempt_count -> Int4,
        last_status -> Nullable<Int4>,
        last_error -> Text,
        create_time -> Timestamptz,
        redeliver_time -> Nullable<Timestamptz>,
    }
}

diesel::table! {
    link_keys (id) {
        id -> Int4,
        key -> Bytea,
    }
}

diesel::joinable!(notifications -> inboxes (user_id));
diesel::joinable!(dead_letters -> deliveries (delivery_id));

diesel::allow_tables_to_appear_in_same_query!(
    recipients,
    inboxes,
    notifications,
    preferences,
    webhook_endpoints,
    deliveries,
    dead_letters,
    link_keys,
);
