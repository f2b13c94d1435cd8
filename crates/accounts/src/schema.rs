// @generated in the shape of `diesel print-schema`; keep in step with migrations/.

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

diesel::allow_tables_to_appear_in_same_query!(accounts, ledger_entries,);
