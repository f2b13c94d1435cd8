//! `keel admin ...`: tasks for operators.

use clap::{Subcommand, ValueEnum};
use keel_auth::{AuthConfig, domain};
use keel_platform::Role;

use crate::database::DatabaseArgs;

/// Administrative commands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Create a user directly in auth's database, e.g. the first
    /// administrator. Prints a generated password unless one is given.
    CreateUser {
        /// The user's email address.
        #[arg(long)]
        email: String,
        /// A role to grant (repeat for several); `user` is always granted.
        #[arg(long = "role", value_enum)]
        roles: Vec<RoleArg>,
        /// The password (default: a generated one, printed once).
        #[arg(long, env = "KEEL_ADMIN_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Check that every account's balance equals the sum of its ledger
    /// entries; exits non-zero and lists the accounts that differ.
    VerifyLedger {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Compare every order with the money its payment provider holds for it
    /// (accounts' ledger; the card gateway when one is configured) and list
    /// every difference: a charge without a paid order, a cancelled order
    /// with an unrefunded charge, two charges for one order, a paid order
    /// without its charge, a refund refused for good. Exits non-zero on any.
    ReconcilePayments {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        card_gateway: keel_orders::CardGatewayConfig,
    },
    /// Generate a new token signing key. Running auth replicas start signing
    /// with it after a minute of being published; the previous key stays published.
    RotateSigningKey {
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// A role on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RoleArg {
    /// An end user.
    User,
    /// An administrator.
    Admin,
}

impl AdminCommand {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<()> {
        match self {
            AdminCommand::CreateUser {
                email,
                roles,
                password,
                database,
            } => {
                let database = database.open().await?;
                let result = create_user(&database, &email, &roles, password).await;
                database.close();
                result
            }
            AdminCommand::VerifyLedger { database } => {
                let database = database.open().await?;
                let result = verify_ledger(&database).await;
                database.close();
                result
            }
            AdminCommand::ReconcilePayments { database, card_gateway } => {
                let database = database.open().await?;
                let result = reconcile_payments(&database, &card_gateway).await;
                database.close();
                result
            }
            AdminCommand::RotateSigningKey { database } => {
                let database = database.open().await?;
                let result = rotate(&database).await;
                database.close();
                result
            }
        }
    }
}

async fn create_user(
    database: &crate::database::Database,
    email: &str,
    roles: &[RoleArg],
    password: Option<String>,
) -> anyhow::Result<()> {
    database.prepare(keel_auth::DATABASE, keel_auth::MIGRATIONS).await?;
    let generated = password.is_none();
    let password = match password {
        Some(password) => password,
        None => domain::OpaqueToken::generate()?.expose().to_owned(),
    };
    let roles: Vec<Role> = roles
        .iter()
        .map(|r| match r {
            RoleArg::User => Role::User,
            RoleArg::Admin => Role::Admin,
        })
        .collect();
    let user = insert_user(&database.url(keel_auth::DATABASE)?, email, &password, &roles).await?;
    println!(
        "created user {} <{}> with roles {}",
        user.id,
        user.email,
        user.roles.join(", ")
    );
    if generated {
        println!("password: {password}");
    }
    Ok(())
}

/// Creates a user straight in auth's database at `url`, with `roles` and
/// always `user`: how the first administrator comes to exist.
pub(crate) async fn insert_user(
    url: &str,
    email: &str,
    password: &str,
    roles: &[Role],
) -> anyhow::Result<keel_auth::store::users::UserRow> {
    let config = AuthConfig::from_args(["keel"])?;
    let pool = keel_platform::db::pool(url, &config.service.pool)?;
    let auth = keel_auth::Auth::build(&config, pool, &[]).await?;
    let email = domain::Email::parse(email).map_err(|v| anyhow::anyhow!("email {}", v.description))?;
    let password = domain::Password::parse("password", password.to_owned())
        .map_err(|v| anyhow::anyhow!("password {}", v.description))?;
    let roles = std::iter::once(Role::User).chain(roles.iter().copied()).collect();
    let roles = domain::Roles::new(roles).map_err(|v| anyhow::anyhow!("roles {}", v.description))?;
    auth.create_user(&email, &password, &roles, None)
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))
}

async fn verify_ledger(database: &crate::database::Database) -> anyhow::Result<()> {
    database
        .prepare(keel_accounts::DATABASE, keel_accounts::MIGRATIONS)
        .await?;
    let (checked, mismatches) = keel_accounts::verify_ledger(&database.url(keel_accounts::DATABASE)?).await?;
    for m in &mismatches {
        println!(
            "account {}: balance {} but ledger sums to {} ({} entries, sequence at {})",
            m.account_id, m.balance_minor, m.ledger_sum_minor, m.entry_count, m.ledger_seq
        );
    }
    if mismatches.is_empty() {
        println!("ledger verified: {checked} accounts, every balance equals the sum of its ledger");
        Ok(())
    } else {
        anyhow::bail!("{} of {checked} accounts differ from their ledger", mismatches.len())
    }
}

async fn reconcile_payments(
    database: &crate::database::Database,
    card_gateway: &keel_orders::CardGatewayConfig,
) -> anyhow::Result<()> {
    use keel_orders::{
        app::reconcile::{compare, named_orders, placed_since},
        payment::{PaymentProvider as _, Taken, order_of_charge_key},
        status::PaymentMethod,
    };

    database.prepare(keel_orders::DATABASE, keel_orders::MIGRATIONS).await?;
    database
        .prepare(keel_accounts::DATABASE, keel_accounts::MIGRATIONS)
        .await?;
    // Orders first, then the money (see `compare`).
    let orders_url = database.url(keel_orders::DATABASE)?;
    let orders = keel_orders::all_orders(&orders_url).await?;
    let (by_balance, by_card): (Vec<_>, Vec<_>) = orders
        .into_iter()
        .partition(|order| order.payment_method == PaymentMethod::AccountBalance);
    let debits = keel_accounts::debits_by_key_prefix(&database.url(keel_accounts::DATABASE)?, "order:").await?;
    let ledger: Vec<Taken> = debits
        .into_iter()
        .map(|debit| Taken {
            order_id: order_of_charge_key(&debit.request_id),
            reference: debit.id.to_string(),
            amount_minor: debit.amount_minor,
            refunded_minor: debit.refunded_minor,
        })
        .collect();
    let mut differences = compare(&by_balance, &ledger);
    println!(
        "balance: {} orders against {} debits in accounts' ledger",
        by_balance.len(),
        ledger.len()
    );
    match card_gateway.provider()? {
        Some(card) => {
            let charges = card
                .charges()
                .await
                .map_err(|why| anyhow::anyhow!("listing the card gateway's charges: {why}"))?
                .unwrap_or_default();
            println!(
                "card: {} orders against {} charges at the card gateway",
                by_card.len(),
                charges.len()
            );
            differences.extend(compare(&by_card, &charges));
        }
        None if by_card.is_empty() => {}
        None => println!(
            "card: {} orders not checked: no card gateway configured (KEEL_ORDERS_CARD_GATEWAY_URL)",
            by_card.len()
        ),
    }
    // Charges of orders placed since they were read are no difference.
    let existing = keel_orders::existing_orders(&orders_url, &named_orders(&differences)).await?;
    let differences = placed_since(differences, &existing);
    for difference in &differences {
        println!("{difference}");
    }
    if differences.is_empty() {
        println!("payments reconciled: every order matches the money held for it");
        Ok(())
    } else {
        anyhow::bail!("{} differences between orders and their payments", differences.len())
    }
}

async fn rotate(database: &crate::database::Database) -> anyhow::Result<()> {
    database.prepare(keel_auth::DATABASE, keel_auth::MIGRATIONS).await?;
    let config = AuthConfig::from_args(["keel"])?;
    let kid = keel_auth::keys::rotate(&database.url(keel_auth::DATABASE)?, config.key_encryption_key.as_ref()).await?;
    println!("new signing key {kid}: published now, signing within 90 s; the previous key stays published");
    Ok(())
}
