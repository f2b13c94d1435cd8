// @generated in the shape of `diesel print-schema`; keep in step with migrations/.

pub mod sql_types {
    #[derive(diesel::query_builder::QueryId, Clone, Debug, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "debit_key_state"))]
    pub struct DebitKeyState;
}

diesel::table! {
    accounts (id) {
        id -> Uuid,
        email -> Text,
        display_name -> Text,
        currency -> Text,
        balance_minor -> Int8,
        ledger_seq -> Int8,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::DebitKeyState;

    closed_debit_keys (account_id, request_id) {
        account_id -> Uuid,
        request_id -> Text,
        state -> DebitKeyState,
        reason -> Text,
        amount_minor -> Nullable<Int8>,
        currency -> Nullable<Text>,
        reference -> Nullable<Text>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    ledger_entries (id) {
        id -> Uuid,
        account_id -> Uuid,
        seq -> Int8,
        kind -> Text,
        amount_minor -> Int8,
        delta_minor -> Int8,
        currency -> Text,
        balance_after_minor -> Int8,
        request_id -> Text,
        reference -> Text,
        reason -> Text,
        created_at -> Timestamptz,
        refund_of -> Nullable<Uuid>,
    }
}

diesel::joinable!(ledger_entries -> accounts (account_id));

diesel::allow_tables_to_appear_in_same_query!(accounts, closed_debit_keys, ledger_entries,);
