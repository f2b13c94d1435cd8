//! `keel bench orders`: placing an order end to end (stock reserved, the
//! balance charged through accounts, both services' outbox events) against
//! pgbench's tpcb-like transaction on the same Postgres, at the same
//! concurrency.

use anyhow::Context as _;
use clap::Args;
use keel::orders::v1::{
    CreateOrderRequest, CreateProductRequest, OrderStatus, PaymentMethod, Product, create_order_request::LineItem,
    orders_service_client::OrdersServiceClient,
};
use tonic::transport::Channel;

use super::{
    Phases,
    cpu::Medians,
    harness::{median, tally},
    suite::{Pgbench, Services, against_pgbench, bearer, drop_scratch_databases, usd},
};
use crate::database::{Database, DatabaseArgs};

/// `keel bench orders`.
#[derive(Debug, Args)]
pub struct OrdersBench {
    #[command(flatten)]
    phases: Phases,

    #[command(flatten)]
    database: DatabaseArgs,
}

/// The target: CreateOrder's rate over pgbench tpcb-like's.
const TARGET: f64 = 0.35;

/// A buyer placing orders over a connection of its own.
#[derive(Clone)]
struct Buyer {
    orders: OrdersServiceClient<Channel>,
    token: String,
    product_id: String,
}

impl OrdersBench {
    /// Runs the bench.
    pub async fn run(self) -> anyhow::Result<()> {
        let database = self.database.open().await?;
        let result = self.run_on(&database).await;
        drop_scratch_databases(&database).await;
        database.close();
        result
    }

    async fn run_on(&self, database: &Database) -> anyhow::Result<()> {
        against_pgbench(database, "orders", &self.phases, async |suite, pgbench| {
            self.measure(suite, pgbench).await
        })
        .await
    }

    async fn measure(&self, suite: &Services, pgbench: &Pgbench) -> anyhow::Result<()> {
        let buyers = buyers(suite, self.phases.concurrency).await?;
        let phase = self.phases.phase();
        let (mut ratios, mut failed) = (Vec::new(), 0);
        let (mut keel_cpu, mut pgbench_cpu) = (Medians::default(), Medians::default());
        for round in self.phases.rounds() {
            let tpcb = pgbench.run(&[], self.phases.seconds)?;
            println!("  round {round}: pgbench tpcb-like {:.0} tps; {}", tpcb.tps, tpcb.cpu);
            let (orders, cpu) = suite
                .meter
                .measure("CreateOrder", tally(&buyers, phase, place_order))
                .await;
            let orders = orders?;
            let cpu = cpu.per_request(orders.calls);
            println!(
                "  round {round}: CreateOrder {:.0}/s -> {:.2}, {} failed; {cpu}",
                orders.per_second,
                orders.per_second / tpcb.tps,
                orders.failed
            );
            if let Some(why) = orders.first_failure {
                println!("    first failure: {why}");
            }
            ratios.push(orders.per_second / tpcb.tps);
            failed += orders.failed;
            keel_cpu.push_request(&cpu);
            pgbench_cpu.push_transaction(&tpcb.cpu);
        }
        println!(
            "CreateOrder (balance payment: orders, accounts, both outboxes) / pgbench tpcb-like: \
             median {:.2} (target >= {TARGET:.2}); {failed} failed calls; median CPU: {} vs pgbench's {}",
            median(&mut ratios),
            keel_cpu.requests(),
            pgbench_cpu.transactions()
        );
        let (checked, mismatches) = keel_accounts::verify_ledger(&suite.accounts_url).await?;
        println!(
            "ledger check after the run: {checked} accounts, {} differences",
            mismatches.len()
        );
        Ok(())
    }
}

/// One buyer per client, each with a funded account (as the accounts bench
/// has them) and a product of their own: pgbench's tpcb-like spreads its
/// writes over one branch per client, and so does this, rather than
/// measuring every client queueing on one product's row lock.
async fn buyers(suite: &Services, count: usize) -> anyhow::Result<Vec<Buyer>> {
    let orders_url = suite
        .addrs
        .get(keel_orders::SERVICE.name)
        .map(|addr| format!("http://{addr}"))
        .context("orders is not registered")?;
    let admin = suite.admin_token().await?;
    let catalog = Channel::from_shared(orders_url.clone())?.connect_lazy();
    let mut buyers = Vec::new();
    for client in suite.clients(count).await? {
        let product_id = create_product(catalog.clone(), &admin).await?;
        // One connection per client, as pgbench has.
        let connection = Channel::from_shared(orders_url.clone())?.connect().await?;
        buyers.push(Buyer {
            orders: OrdersServiceClient::new(connection),
            token: client.user_token,
            product_id,
        });
    }
    Ok(buyers)
}

/// A product that never runs out during the bench, at one cent, so stock and
/// balances are never what stops an order.
async fn create_product(orders: Channel, admin: &str) -> anyhow::Result<String> {
    let request = CreateProductRequest {
        product: Some(Product {
            name: "Bench widget".into(),
            description: "Ordered by keel bench orders".into(),
            price: Some(usd(1)),
            stock_quantity: keel_orders::domain::MAX_STOCK,
            ..Default::default()
        }),
    };
    let product = OrdersServiceClient::new(orders)
        .create_product(bearer(request, admin)?)
        .await
        .context("creating the bench's product")?
        .into_inner()
        .product
        .context("no product")?;
    Ok(product.id)
}

/// One CreateOrder of one unit paid from the balance; it counts only if the
/// order comes back PAID.
async fn place_order(mut buyer: Buyer) -> anyhow::Result<Result<(), String>> {
    let request = CreateOrderRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        items: vec![LineItem {
            product_id: buyer.product_id.clone(),
            quantity: 1,
        }],
        payment_method: PaymentMethod::AccountBalance as i32,
        external_payment_method_id: String::new(),
    };
    let order = match buyer.orders.create_order(bearer(request, &buyer.token)?).await {
        Ok(response) => response.into_inner().order,
        Err(status) => return Ok(Err(format!("{:?}: {}", status.code(), status.message()))),
    };
    Ok(match order.map(|order| order.status()) {
        Some(OrderStatus::Paid) => Ok(()),
        Some(status) => Err(format!("the order came back {}", status.as_str_name())),
        None => Err("no order in the answer".to_owned()),
    })
}
