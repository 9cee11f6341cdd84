//! The request budget: one token bucket per (account, region, service), which every AWS
//! call waits on before it is sent.
//!
//! AWS throttles per account and region, and the operator shares that allowance with
//! everything else the account runs (consoles, Terraform, other operators). Waiting for a
//! token here keeps the operator under a configured share instead of spending AWS's limit
//! and then backing off on `Throttling` errors. Time spent waiting is exported as
//! `openemr_aws_budget_wait_seconds_total{service}` and `openemr_aws_budget_waits_total{service}`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::metrics::{AwsServiceLabel, Metrics};

/// An AWS service the operator calls; each has a bucket of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    Rds,
    CloudFormation,
    S3,
    Sts,
    SecretsManager,
    Kms,
    Efs,
    CloudTrail,
}

impl Service {
    pub const ALL: [Service; 8] = [
        Service::Rds,
        Service::CloudFormation,
        Service::S3,
        Service::Sts,
        Service::SecretsManager,
        Service::Kms,
        Service::Efs,
        Service::CloudTrail,
    ];

    /// The service label of `openemr_aws_api_calls_total` (the SDK's service name, lowercase,
    /// without spaces).
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Rds => "rds",
            Service::CloudFormation => "cloudformation",
            Service::S3 => "s3",
            Service::Sts => "sts",
            Service::SecretsManager => "secretsmanager",
            Service::Kms => "kms",
            Service::Efs => "efs",
            Service::CloudTrail => "cloudtrail",
        }
    }
}

/// A sustained rate and how many requests may go at once after a quiet period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    fn quota(self) -> Quota {
        let per_second = NonZeroU32::new(self.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(self.burst).unwrap_or(NonZeroU32::MIN);
        Quota::per_second(per_second).allow_burst(burst)
    }
}

/// The rate of each service, per account and region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetConfig {
    pub rds: Rate,
    pub cloudformation: Rate,
    pub s3: Rate,
    pub sts: Rate,
    pub secrets_manager: Rate,
    pub kms: Rate,
    pub efs: Rate,
    pub cloudtrail: Rate,
}

impl BudgetConfig {
    pub fn rate(&self, service: Service) -> Rate {
        match service {
            Service::Rds => self.rds,
            Service::CloudFormation => self.cloudformation,
            Service::S3 => self.s3,
            Service::Sts => self.sts,
            Service::SecretsManager => self.secrets_manager,
            Service::Kms => self.kms,
            Service::Efs => self.efs,
            Service::CloudTrail => self.cloudtrail,
        }
    }
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            // RDS allows about 12 requests/s per account and region for everything the
            // account does; this leaves the rest for people and other tools.
            rds: Rate {
                per_second: 10,
                burst: 5,
            },
            // CloudFormation's describe/list APIs throttle at a few requests per second per
            // account and region, and the operator polls stacks while they change.
            cloudformation: Rate {
                per_second: 2,
                burst: 5,
            },
            // S3 serves thousands of requests/s per prefix; this only stops a runaway loop.
            s3: Rate {
                per_second: 50,
                burst: 50,
            },
            // Credentials are cached for most of an hour: one AssumeRole per clinic and hour.
            sts: Rate {
                per_second: 5,
                burst: 5,
            },
            // The database's managed master password is read on setup and rotation only.
            secrets_manager: Rate {
                per_second: 20,
                burst: 10,
            },
            // KMS and EFS are called only to delete a clinic's key and file system.
            kms: Rate {
                per_second: 5,
                burst: 5,
            },
            efs: Rate {
                per_second: 5,
                burst: 5,
            },
            // The shared audit trail's status is read a few times an hour per account.
            cloudtrail: Rate {
                per_second: 5,
                burst: 5,
            },
        }
    }
}

/// The command-line flags of the budget (flattened into the operator's arguments).
#[derive(clap::Args, Debug, Clone)]
pub struct BudgetFlags {
    /// RDS requests per second, per account and region.
    #[arg(long, env = "RDS_REQUESTS_PER_SECOND", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub rds_requests_per_second: u32,
    /// RDS requests that may go at once after a quiet period.
    #[arg(long, env = "RDS_BURST", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rds_burst: u32,
    /// CloudFormation requests per second, per account and region.
    #[arg(long, env = "CLOUDFORMATION_REQUESTS_PER_SECOND", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub cloudformation_requests_per_second: u32,
    /// CloudFormation requests that may go at once after a quiet period.
    #[arg(long, env = "CLOUDFORMATION_BURST", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub cloudformation_burst: u32,
    /// S3 requests per second, per account and region.
    #[arg(long, env = "S3_REQUESTS_PER_SECOND", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub s3_requests_per_second: u32,
    /// S3 requests that may go at once after a quiet period.
    #[arg(long, env = "S3_BURST", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub s3_burst: u32,
    /// STS (AssumeRole) requests per second, per region.
    #[arg(long, env = "STS_REQUESTS_PER_SECOND", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub sts_requests_per_second: u32,
    /// STS requests that may go at once after a quiet period.
    #[arg(long, env = "STS_BURST", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub sts_burst: u32,
    /// Secrets Manager requests per second, per account and region.
    #[arg(long, env = "SECRETSMANAGER_REQUESTS_PER_SECOND", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub secretsmanager_requests_per_second: u32,
    /// Secrets Manager requests that may go at once after a quiet period.
    #[arg(long, env = "SECRETSMANAGER_BURST", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub secretsmanager_burst: u32,
    /// KMS requests per second, per account and region.
    #[arg(long, env = "KMS_REQUESTS_PER_SECOND", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub kms_requests_per_second: u32,
    /// KMS requests that may go at once after a quiet period.
    #[arg(long, env = "KMS_BURST", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub kms_burst: u32,
    /// EFS requests per second, per account and region.
    #[arg(long, env = "EFS_REQUESTS_PER_SECOND", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub efs_requests_per_second: u32,
    /// EFS requests that may go at once after a quiet period.
    #[arg(long, env = "EFS_BURST", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub efs_burst: u32,
    /// CloudTrail requests per second, per account and region.
    #[arg(long, env = "CLOUDTRAIL_REQUESTS_PER_SECOND", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub cloudtrail_requests_per_second: u32,
    /// CloudTrail requests that may go at once after a quiet period.
    #[arg(long, env = "CLOUDTRAIL_BURST", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub cloudtrail_burst: u32,
}

impl BudgetFlags {
    pub fn config(&self) -> BudgetConfig {
        BudgetConfig {
            rds: Rate {
                per_second: self.rds_requests_per_second,
                burst: self.rds_burst,
            },
            cloudformation: Rate {
                per_second: self.cloudformation_requests_per_second,
                burst: self.cloudformation_burst,
            },
            s3: Rate {
                per_second: self.s3_requests_per_second,
                burst: self.s3_burst,
            },
            sts: Rate {
                per_second: self.sts_requests_per_second,
                burst: self.sts_burst,
            },
            secrets_manager: Rate {
                per_second: self.secretsmanager_requests_per_second,
                burst: self.secretsmanager_burst,
            },
            kms: Rate {
                per_second: self.kms_requests_per_second,
                burst: self.kms_burst,
            },
            efs: Rate {
                per_second: self.efs_requests_per_second,
                burst: self.efs_burst,
            },
            cloudtrail: Rate {
                per_second: self.cloudtrail_requests_per_second,
                burst: self.cloudtrail_burst,
            },
        }
    }
}

/// Tokio's clock, so that waiting and refilling follow paused time in tests.
#[derive(Clone, Copy, Debug, Default)]
struct TokioClock;

/// An instant of [`TokioClock`]; governor wants its own arithmetic on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TokioInstant(tokio::time::Instant);

impl std::ops::Add<Nanos> for TokioInstant {
    type Output = TokioInstant;

    fn add(self, other: Nanos) -> TokioInstant {
        TokioInstant(self.0 + Duration::from(other))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        TokioInstant(
            self.0
                .checked_sub(Duration::from(duration))
                .unwrap_or(self.0),
        )
    }
}

impl Clock for TokioClock {
    type Instant = TokioInstant;

    fn now(&self) -> TokioInstant {
        TokioInstant(tokio::time::Instant::now())
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>;

/// One bucket, and the queue of callers waiting on it.
struct Lane {
    limiter: Limiter,
    /// Waiters take turns in arrival order (tokio's mutex is fair), so one caller cannot
    /// starve while others keep winning the race for each new token.
    turn: tokio::sync::Mutex<()>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LaneKey {
    account: String,
    region: String,
    service: Service,
}

/// The buckets of every (account, region, service) seen so far.
pub struct Budgets {
    config: BudgetConfig,
    metrics: Arc<Metrics>,
    lanes: Mutex<HashMap<LaneKey, Arc<Lane>>>,
}

impl std::fmt::Debug for Budgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budgets")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Budgets {
    pub fn new(cfg: BudgetConfig, metrics: Arc<Metrics>) -> Budgets {
        Budgets {
            config: cfg,
            metrics,
            lanes: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// Waits until this account, region and service may send one request. Never fails:
    /// a caller that gives up drops the future and leaves the queue.
    pub async fn acquire(&self, account: &str, region: &str, service: Service) {
        let lane = self.lane(account, region, service);
        let started = tokio::time::Instant::now();
        let mut waited = false;
        let _turn = match lane.turn.try_lock() {
            Ok(turn) => turn,
            Err(_) => {
                waited = true;
                lane.turn.lock().await
            }
        };
        while let Err(not_until) = lane.limiter.check() {
            waited = true;
            let wait = not_until.wait_time_from(TokioClock.now());
            // Never a zero sleep: that would spin if the clock reads a hair early.
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
        if waited {
            let label = AwsServiceLabel {
                service: service.as_str().to_string(),
            };
            self.metrics.aws_budget_waits.get_or_create(&label).inc();
            self.metrics
                .aws_budget_wait_seconds
                .get_or_create(&label)
                .inc_by(started.elapsed().as_secs_f64());
        }
    }

    fn lane(&self, account: &str, region: &str, service: Service) -> Arc<Lane> {
        let key = LaneKey {
            account: account.to_string(),
            region: region.to_string(),
            service,
        };
        // A panic elsewhere while holding the lock leaves the map itself intact.
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        lanes
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Lane {
                    limiter: RateLimiter::direct_with_clock(
                        self.config.rate(service).quota(),
                        TokioClock,
                    ),
                    turn: tokio::sync::Mutex::new(()),
                })
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use tokio::time::Instant;

    fn budgets(rds: Rate) -> (Budgets, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let cfg = BudgetConfig {
            rds,
            ..BudgetConfig::default()
        };
        (Budgets::new(cfg, metrics.clone()), metrics)
    }

    const TEN_BURST_FIVE: Rate = Rate {
        per_second: 10,
        burst: 5,
    };

    /// When each of `n` sequential acquisitions completed, relative to the start.
    async fn times(b: &Budgets, n: usize, account: &str, region: &str, s: Service) -> Vec<f64> {
        let start = Instant::now();
        let mut out = Vec::new();
        for _ in 0..n {
            b.acquire(account, region, s).await;
            out.push((Instant::now() - start).as_secs_f64());
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_goes_at_once_then_the_rate_paces() {
        let (b, _) = budgets(TEN_BURST_FIVE);
        let t = times(&b, 15, "111122223333", "us-east-1", Service::Rds).await;
        for (i, at) in t.iter().enumerate().take(5) {
            assert_eq!(*at, 0.0, "request {i} of the burst waited: {t:?}");
        }
        // Then one every 100 ms.
        for i in 5..15 {
            let expected = (i - 4) as f64 * 0.1;
            assert!(
                (t[i] - expected).abs() < 0.005,
                "request {i} at {} s, expected {expected} s: {t:?}",
                t[i]
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn accounts_regions_and_services_do_not_share() {
        let (b, _) = budgets(TEN_BURST_FIVE);
        // Exhaust one bucket.
        times(&b, 5, "111122223333", "us-east-1", Service::Rds).await;
        // Every other key still has its whole burst.
        for (account, region, service) in [
            ("444455556666", "us-east-1", Service::Rds),
            ("111122223333", "eu-west-1", Service::Rds),
            ("111122223333", "us-east-1", Service::SecretsManager),
        ] {
            let t = times(&b, 5, account, region, service).await;
            assert!(
                t.iter().all(|at| *at == 0.0),
                "{account} {region} {service:?}: {t:?}"
            );
        }
        // And the exhausted one does not.
        let t = times(&b, 1, "111122223333", "us-east-1", Service::Rds).await;
        assert!(t[0] > 0.0, "{t:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_waiters_are_served_at_the_rate() {
        let (b, _) = budgets(TEN_BURST_FIVE);
        let b = Arc::new(b);
        let start = Instant::now();
        let tasks: Vec<_> = (0..25)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move {
                    b.acquire("default", "us-east-1", Service::Rds).await;
                    (Instant::now() - start).as_secs_f64()
                })
            })
            .collect();
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await.unwrap());
        }
        done.sort_by(f64::total_cmp);
        assert_eq!(done.iter().filter(|at| **at == 0.0).count(), 5, "{done:?}");
        // 20 more at 10/s: the last after two seconds, none sooner than the rate allows.
        for (i, at) in done.iter().enumerate().skip(5) {
            assert!(*at >= (i - 4) as f64 * 0.1 - 0.005, "{i}: {done:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_is_recorded_by_service() {
        let (b, metrics) = budgets(TEN_BURST_FIVE);
        times(&b, 5, "default", "us-east-1", Service::Rds).await;
        assert!(
            !metrics.encode().contains("openemr_aws_budget_waits_total{"),
            "the burst does not wait"
        );
        times(&b, 10, "default", "us-east-1", Service::Rds).await;
        let text = metrics.encode();
        assert!(
            text.contains(r#"openemr_aws_budget_waits_total{service="rds"} 10"#),
            "{text}"
        );
        let waited: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(r#"openemr_aws_budget_wait_seconds_total{service="rds"} "#)
            })
            .expect("the wait counter")
            .parse()
            .unwrap();
        // Ten waits of 100 ms each.
        assert!((waited - 1.0).abs() < 0.02, "{waited}\n{text}");
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        budget: BudgetFlags,
    }

    #[test]
    fn flags_default_to_the_default_config_and_refuse_zero() {
        let cli = Cli::try_parse_from(["op"]).unwrap();
        assert_eq!(cli.budget.config(), BudgetConfig::default());
        let cli = Cli::try_parse_from([
            "op",
            "--rds-requests-per-second=4",
            "--rds-burst=2",
            "--secretsmanager-burst=3",
        ])
        .unwrap();
        let cfg = cli.budget.config();
        assert_eq!(
            cfg.rds,
            Rate {
                per_second: 4,
                burst: 2
            }
        );
        assert_eq!(cfg.secrets_manager.burst, 3);
        assert!(Cli::try_parse_from(["op", "--cloudformation-burst=0"]).is_err());
    }

    #[test]
    fn service_names_match_the_call_metric() {
        let names: Vec<_> = Service::ALL.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            names,
            [
                "rds",
                "cloudformation",
                "s3",
                "sts",
                "secretsmanager",
                "kms",
                "efs",
                "cloudtrail"
            ]
        );
    }
}
