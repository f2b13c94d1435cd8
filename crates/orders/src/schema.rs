// @generated in the shape of `diesel print-schema`; keep in step with migrations/.

pub mod sql_types {
    #[derive(diesel::query_builder::QueryId, Clone, Debug, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "order_status"))]
    pub struct OrderStatus;

    #[derive(diesel::query_builder::QueryId, Clone, Debug, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "payment_method"))]
    pub struct PaymentMethod;

    #[derive(diesel::query_builder::QueryId, Clone, Debug, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "refund_state"))]
    pub struct RefundState;

    #[derive(diesel::query_builder::QueryId, Clone, Debug, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "payment_state"))]
    pub struct PaymentState;
}

diesel::table! {
    products (id) {
        id -> Uuid,
        name -> Text,
        description -> Text,
        price_minor -> Int8,
        currency -> Text,
        stock_quantity -> Int8,
        initial_stock -> Int8,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    stock_adjustments (id) {
        id -> Uuid,
        product_id -> Uuid,
        request_id -> Text,
        delta -> Int8,
        reason -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::{OrderStatus, PaymentMethod, PaymentState, RefundState};

    orders (id) {
        id -> Uuid,
        user_id -> Uuid,
        request_id -> Text,
        status -> OrderStatus,
        payment_method -> PaymentMethod,
        total_minor -> Int8,
        currency -> Text,
        charge_reference -> Nullable<Text>,
        refund_state -> RefundState,
        cancel_reason -> Nullable<Text>,
        cancel_request_id -> Nullable<Text>,
        payment_deadline -> Timestamptz,
        lease_until -> Nullable<Timestamptz>,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        payment_method_id -> Nullable<Text>,
        traceparent -> Nullable<Text>,
        claim -> Int8,
        payment_state -> PaymentState,
    }
}

diesel::table! {
    order_state_moves (machine, from_state, to_state) {
        machine -> Text,
        from_state -> Text,
        to_state -> Text,
    }
}

diesel::table! {
    card_gateway_events (id) {
        id -> Text,
        event_type -> Text,
        object_id -> Text,
        received_at -> Timestamptz,
    }
}

diesel::table! {
    order_items (order_id, position) {
        order_id -> Uuid,
        position -> Int4,
        product_id -> Uuid,
        product_name -> Text,
        quantity -> Int4,
        unit_price_minor -> Int8,
        currency -> Text,
    }
}

diesel::joinable!(order_items -> orders (order_id));
diesel::joinable!(order_items -> products (product_id));
diesel::joinable!(stock_adjustments -> products (product_id));

diesel::allow_tables_to_appear_in_same_query!(
    card_gateway_events,
    order_items,
    order_state_moves,
    orders,
    products,
    stock_adjustments,
);
