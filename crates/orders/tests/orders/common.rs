//! What the orders tests share: a suite with a catalog admin, funded buyers,
//! typed helpers, and the invariants checked after every test.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use diesel::{QueryDsl as _, SelectableHelper as _, TextExpressionMethods as _};
use diesel_async::RunQueryDsl as _;
use keel::{
    accounts::v1 as accounts_pb,
    common::v1::Money,
    orders::v1::{self as pb, orders_service_client::OrdersServiceClient},
};
use keel_orders::{
    schema::{order_items, orders, products, stock_adjustments},
    status::{OrderStatus, PaymentMethod, RefundState},
    store::{
        orders::{ItemRow, OrderRow},
        products::ProductRow,
    },
};
use keel_testkit::{Suite, SuiteOptions, authorized, proxy::DelayProxy, spawn_suite_with_options};
use tonic::{Status, transport::Channel};
use uuid::Uuid;

/// Settings that make the resumer quick to pick up unfinished work.
pub const QUICK: &[&str] = &["--payment-lease-ms", "300", "--resume-interval-ms", "100"];

pub fn usd(amount_minor: i64) -> Option<Money> {
    Some(Money {
        amount_minor,
        currency_code: "USD".into(),
    })
}

/// A suite with a signed-in admin.
pub struct Fixture {
    pub suite: Suite,
    pub admin: String,
}

/// A user with a funded account.
#[derive(Debug, Clone)]
pub struct Buyer {
    pub id: String,
    pub token: String,
}

pub async fn fixture() -> anyhow::Result<Fixture> {
    fixture_with(&[]).await
}

/// A fixture whose orders service also gets `orders_args`.
pub async fn fixture_with(orders_args: &[&str]) -> anyhow::Result<Fixture> {
    let suite = spawn_suite_with_options(SuiteOptions::default().args("orders", &orders_flags(orders_args))).await?;
    Fixture::of(suite).await
}

/// A fixture whose orders service reaches accounts through a delaying proxy.
pub async fn fixture_through_proxy(orders_args: &[&str]) -> anyhow::Result<(Fixture, DelayProxy)> {
    let options = SuiteOptions::default()
        .args("orders", &orders_flags(orders_args))
        .withhold("orders");
    let mut suite = spawn_suite_with_options(options).await?;
    let proxy = DelayProxy::start(suite.accounts_addr()).await?;
    suite.set_flag("orders", "--accounts-url", &proxy.url());
    suite.start("orders").await?;
    Ok((Fixture::of(suite).await?, proxy))
}

/// QUICK's pairs, but for the flags the caller sets itself, then the
/// caller's.
fn orders_flags<'a>(orders_args: &[&'a str]) -> Vec<&'a str> {
    let quick = QUICK.chunks(2).filter(|pair| !orders_args.contains(&pair[0])).flatten();
    quick.chain(orders_args).copied().collect()
}

impl Fixture {
    async fn of(suite: Suite) -> anyhow::Result<Self> {
        let (_, tokens) = suite.signed_in_admin().await?;
        Ok(Fixture {
            suite,
            admin: tokens.access_token,
        })
    }

    pub fn orders(&self) -> OrdersServiceClient<Channel> {
        OrdersServiceClient::new(self.suite.channel("orders"))
    }

    /// A product created by the admin.
    pub async fn product(&self, name: &str, price_minor: i64, stock: i64) -> anyhow::Result<pb::Product> {
        self.product_in(name, price_minor, "USD", stock).await
    }

    pub async fn product_in(
        &self,
        name: &str,
        price_minor: i64,
        currency: &str,
        stock: i64,
    ) -> anyhow::Result<pb::Product> {
        let product = self
            .orders()
            .create_product(authorized(
                pb::CreateProductRequest {
                    product: Some(pb::Product {
                        name: name.into(),
                        description: format!("{name}, for tests"),
                        price: Some(Money {
                            amount_minor: price_minor,
                            currency_code: currency.into(),
                        }),
                        stock_quantity: stock,
                        ..Default::default()
                    }),
                },
                &self.admin,
            ))
            .await?
            .into_inner()
            .product
            .context("no product")?;
        Ok(product)
    }

    /// The product as it is now.
    pub async fn get_product(&self, id: &str) -> anyhow::Result<pb::Product> {
        self.orders()
            .get_product(authorized(pb::GetProductRequest { product_id: id.into() }, &self.admin))
            .await?
            .into_inner()
            .product
            .context("no product")
    }

    pub async fn stock(&self, id: &str) -> anyhow::Result<i64> {
        Ok(self.get_product(id).await?.stock_quantity)
    }

    /// A new user with `balance` minor units deposited by the admin.
    pub async fn buyer(&self, balance: i64) -> anyhow::Result<Buyer> {
        let (user, tokens) = self.suite.signed_in_user().await?;
        let mut accounts = self.suite.accounts();
        // First access creates the account even before UserRegistered arrives.
        accounts
            .get_account(authorized(
                accounts_pb::GetAccountRequest {
                    account_id: "me".into(),
                },
                &tokens.access_token,
            ))
            .await?;
        if balance > 0 {
            accounts
                .deposit(authorized(
                    accounts_pb::DepositRequest {
                        account_id: user.id.clone(),
                        amount: usd(balance),
                        request_id: format!("fund-{}", user.id),
                        ..Default::default()
                    },
                    &self.admin,
                ))
                .await?;
        }
        Ok(Buyer {
            id: user.id,
            token: tokens.access_token,
        })
    }

    pub async fn balance(&self, buyer: &Buyer) -> anyhow::Result<i64> {
        let balance = self
            .suite
            .accounts()
            .get_balance(authorized(
                accounts_pb::GetBalanceRequest {
                    account_id: "me".into(),
                },
                &buyer.token,
            ))
            .await?
            .into_inner()
            .balance
            .and_then(|b| b.balance)
            .context("no balance")?;
        Ok(balance.amount_minor)
    }

    /// CreateOrder from the balance.
    pub async fn order(&self, buyer: &Buyer, request_id: &str, lines: &[(&str, i32)]) -> Result<pb::Order, Status> {
        self.orders()
            .create_order(authorized(
                pb::CreateOrderRequest {
                    request_id: request_id.into(),
                    items: lines
                        .iter()
                        .map(|(product_id, quantity)| pb::create_order_request::LineItem {
                            product_id: (*product_id).into(),
                            quantity: *quantity,
                        })
                        .collect(),
                    payment_method: pb::PaymentMethod::AccountBalance as i32,
                    external_payment_method_id: String::new(),
                },
                &buyer.token,
            ))
            .await?
            .into_inner()
            .order
            .ok_or_else(|| Status::internal("no order"))
    }

    /// The buyer's own orders, newest first.
    pub async fn list_own(&self, buyer: &Buyer) -> Result<Vec<pb::Order>, Status> {
        Ok(self
            .orders()
            .list_orders(authorized(pb::ListOrdersRequest::default(), &buyer.token))
            .await?
            .into_inner()
            .orders)
    }

    pub async fn get_order(&self, token: &str, id: &str) -> Result<pb::Order, Status> {
        self.orders()
            .get_order(authorized(pb::GetOrderRequest { order_id: id.into() }, token))
            .await?
            .into_inner()
            .order
            .ok_or_else(|| Status::internal("no order"))
    }

    pub async fn cancel(&self, token: &str, id: &str, request_id: &str) -> Result<pb::Order, Status> {
        self.orders()
            .cancel_order(authorized(
                pb::CancelOrderRequest {
                    order_id: id.into(),
                    request_id: request_id.into(),
                },
                token,
            ))
            .await?
            .into_inner()
            .order
            .ok_or_else(|| Status::internal("no order"))
    }

    pub async fn ship(&self, token: &str, id: &str) -> Result<pb::Order, Status> {
        self.orders()
            .ship_order(authorized(pb::ShipOrderRequest { order_id: id.into() }, token))
            .await?
            .into_inner()
            .order
            .ok_or_else(|| Status::internal("no order"))
    }

    pub async fn deliver(&self, token: &str, id: &str) -> Result<pb::Order, Status> {
        self.orders()
            .deliver_order(authorized(pb::DeliverOrderRequest { order_id: id.into() }, token))
            .await?
            .into_inner()
            .order
            .ok_or_else(|| Status::internal("no order"))
    }

    /// The order as stored (the resumer's view: refund state and all).
    pub async fn stored_order(&self, id: &str) -> anyhow::Result<OrderRow> {
        let mut conn = self.suite.db("orders").await?;
        Ok(orders::table
            .find(Uuid::parse_str(id)?)
            .select(OrderRow::as_select())
            .first(&mut conn)
            .await?)
    }

    /// Waits (bounded) until the stored order satisfies `done`.
    pub async fn settled(&self, id: &str, done: impl Fn(&OrderRow) -> bool) -> anyhow::Result<OrderRow> {
        for _ in 0..600 {
            let order = self.stored_order(id).await?;
            if done(&order) {
                return Ok(order);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let order = self.stored_order(id).await?;
        anyhow::bail!("order {id} never settled: {order:?}")
    }

    /// Accounts' ledger entries made for orders: (request id, kind, amount,
    /// account).
    pub async fn order_entries(&self) -> anyhow::Result<Vec<(String, String, i64, Uuid)>> {
        use keel_accounts::schema::ledger_entries;
        let mut conn = self.suite.accounts_db().await?;
        Ok(ledger_entries::table
            .filter(ledger_entries::request_id.like("order:%"))
            .select((
                ledger_entries::request_id,
                ledger_entries::kind,
                ledger_entries::amount_minor,
                ledger_entries::account_id,
            ))
            .load(&mut conn)
            .await?)
    }

    /// How many debits accounts holds for `order_id`'s charge.
    pub async fn charges_of(&self, order_id: &str) -> anyhow::Result<usize> {
        let key = format!("order:{order_id}:charge");
        Ok(self
            .order_entries()
            .await?
            .iter()
            .filter(|(request_id, kind, _, _)| *request_id == key && kind == "debit")
            .count())
    }

    /// How many refunds accounts holds for `order_id`.
    pub async fn refunds_of(&self, order_id: &str) -> anyhow::Result<usize> {
        let key = format!("order:{order_id}:refund");
        Ok(self
            .order_entries()
            .await?
            .iter()
            .filter(|(request_id, kind, _, _)| *request_id == key && kind == "refund")
            .count())
    }

    /// What must hold after every test:
    /// - for every product, stock + units in live (not cancelled) orders =
    ///   initial stock + adjustments;
    /// - every charge in accounts' ledger has its order, for its buyer and
    ///   total; a paid (shipped, delivered) order has exactly one charge and
    ///   no refund; a cancelled, settled order has either nothing or one
    ///   charge and one refund of it; the ledger sums to every balance.
    pub async fn check_invariants(&self) -> anyhow::Result<()> {
        let mut conn = self.suite.db("orders").await?;
        let all_products: Vec<ProductRow> = products::table.select(ProductRow::as_select()).load(&mut conn).await?;
        let all_orders: Vec<OrderRow> = orders::table.select(OrderRow::as_select()).load(&mut conn).await?;
        let items: Vec<ItemRow> = order_items::table.select(ItemRow::as_select()).load(&mut conn).await?;
        let adjustments: Vec<(Uuid, i64)> = stock_adjustments::table
            .select((stock_adjustments::product_id, stock_adjustments::delta))
            .load(&mut conn)
            .await?;
        let by_id: BTreeMap<Uuid, &OrderRow> = all_orders.iter().map(|o| (o.id, o)).collect();
        for product in &all_products {
            let live: i64 = items
                .iter()
                .filter(|item| item.product_id == product.id)
                .filter(|item| by_id.get(&item.order_id).is_some_and(|o| o.status.holds_stock()))
                .map(|item| i64::from(item.quantity))
                .sum();
            let adjusted: i64 = adjustments
                .iter()
                .filter(|(id, _)| *id == product.id)
                .map(|(_, delta)| delta)
                .sum();
            assert_eq!(
                product.stock_quantity + live,
                product.initial_stock + adjusted,
                "product {} ({}): stock {} + live {live} != initial {} + adjustments {adjusted}",
                product.id,
                product.name,
                product.stock_quantity,
                product.initial_stock
            );
        }

        let entries = self.order_entries().await?;
        let mut charges: BTreeMap<Uuid, Vec<i64>> = BTreeMap::new();
        let mut refunds: BTreeMap<Uuid, Vec<i64>> = BTreeMap::new();
        for (request_id, kind, amount, account) in &entries {
            let mut parts = request_id.split(':');
            let (Some("order"), Some(id), Some(step), None) = (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                panic!("a ledger entry with an order key of another shape: {request_id}");
            };
            let id = Uuid::parse_str(id)?;
            let order = by_id
                .get(&id)
                .unwrap_or_else(|| panic!("ledger entry {request_id} has no order"));
            assert_eq!(*account, order.user_id, "{request_id} moved another account's money");
            assert_eq!(*amount, order.total_minor, "{request_id} is not the order's total");
            match (step, kind.as_str()) {
                ("charge", "debit") => charges.entry(id).or_default().push(*amount),
                ("refund", "refund") => refunds.entry(id).or_default().push(*amount),
                other => panic!("{request_id}: unexpected {other:?}"),
            }
        }
        // Card orders are charged at the card gateway; their tests check it.
        for order in all_orders
            .iter()
            .filter(|o| o.payment_method == PaymentMethod::AccountBalance)
        {
            let charged = charges.get(&order.id).map_or(0, Vec::len);
            let refunded = refunds.get(&order.id).map_or(0, Vec::len);
            assert!(
                charged <= 1 && refunded <= charged,
                "order {}: {charged} charges, {refunded} refunds",
                order.id
            );
            match (order.status, order.refund_state) {
                (OrderStatus::Paid | OrderStatus::Shipped | OrderStatus::Delivered, _) => {
                    assert_eq!((charged, refunded), (1, 0), "paid order {}", order.id);
                }
                (OrderStatus::Cancelled, RefundState::Done) => {
                    assert_eq!((charged, refunded), (1, 1), "refunded order {}", order.id);
                }
                (OrderStatus::Cancelled, RefundState::NotNeeded) => {
                    assert_eq!((charged, refunded), (0, 0), "unpaid cancelled order {}", order.id);
                }
                // Still on its way to a definite end.
                _ => {}
            }
        }
        let (_, mismatches) = keel_accounts::verify_ledger(self.suite.accounts_database_url()).await?;
        assert!(mismatches.is_empty(), "{mismatches:?}");
        Ok(())
    }
}
